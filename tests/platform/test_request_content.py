"""Prompts and outputs are NOT stored by default; an account that opts in keeps them for
its retention, in every dialect, and only it (or an admin) reads them. Over a real
`wharf serve` on SQLite and PostgreSQL, plus the store's own rules."""

from __future__ import annotations

import datetime as dt
import json

import httpx
import pytest

from tests.policy_http.dialects import ALL_DIALECTS, call, provision
from wharf.errors import InvalidParam, NotFound

ADMIN = "/admin/api"
PROMPT = "长城有多长？请简单回答。"


def _admin(srv, method, path, key=None, **kw) -> httpx.Response:
    return httpx.request(method, srv.url + ADMIN + path, headers={"Authorization": f"Bearer {key or srv.ops_key()}"},
                         timeout=30, **kw)


def _stored_rows(srv, account_id: int) -> int:
    from sqlalchemy import func, select

    from wharf.platform.models import RequestContent
    with srv.platform.store.read() as s:
        return s.scalar(select(func.count()).select_from(RequestContent).where(RequestContent.account_id == account_id))


def test_nothing_is_stored_by_default(srv):
    ident = provision(srv, "rc-off")
    assert _admin(srv, "GET", f"/accounts/{ident.account_id}/content-storage",
                  key=ident.api_key).json() == {"account_id": ident.account_id, "retention_days": None}
    for d in ALL_DIALECTS:
        rep = call(d, srv.url, ident, PROMPT, 3)
        assert rep.outcome == "ok", d
        assert _admin(srv, "GET", f"/requests/{rep.headers['x-request-id']}/content").status_code == 404
    assert _stored_rows(srv, ident.account_id) == 0


def test_an_account_that_opts_in_keeps_prompts_and_outputs_in_every_dialect(srv):
    ident, other = provision(srv, "rc-on"), provision(srv, "rc-other")
    r = _admin(srv, "PUT", f"/accounts/{ident.account_id}/content-storage", key=ident.api_key,
               json={"retention_days": 3})                       # the account opts in itself
    assert r.status_code == 200 and r.json()["retention_days"] == 3
    ids = {}
    for d in ALL_DIALECTS:
        rep = call(d, srv.url, ident, PROMPT, 3)
        assert rep.outcome == "ok", d
        ids[d] = rep.headers["x-request-id"]
        got = _admin(srv, "GET", f"/requests/{ids[d]}/content", key=ident.api_key)
        assert got.status_code == 200, (d, got.text)
        kept = got.json()
        assert PROMPT in kept["prompt"] and kept["outputs"] == [rep.text], (d, kept, rep.text)
        if d.endswith("-chat"):
            assert json.loads(kept["prompt"]) == [{"role": "user", "content": PROMPT}]
        created = dt.datetime.fromisoformat(kept["created_at"])
        assert dt.datetime.fromisoformat(kept["expires_at"]) - created == dt.timedelta(days=3)
    # Only its account and admins read it; another account cannot see it, nor the setting.
    rid = ids["openai"]
    assert _admin(srv, "GET", f"/requests/{rid}/content", key=other.api_key).status_code == 404
    assert _admin(srv, "GET", f"/requests/{rid}/content").status_code == 200
    for method, body in (("GET", None), ("PUT", {"retention_days": None})):
        r = _admin(srv, method, f"/accounts/{ident.account_id}/content-storage", key=other.api_key, json=body)
        assert r.status_code == 404
    # Bad input: the admin API's errors.
    for bad in (0, 366, "week", 1.5):
        r = _admin(srv, "PUT", f"/accounts/{ident.account_id}/content-storage", json={"retention_days": bad})
        assert r.status_code == 422 and r.json()["error"]["param"] == "retention_days", r.text
    # The change is audited.
    entries = _admin(srv, "GET", "/audit", params={"object_type": "account", "object_id": ident.account_id}).json()
    assert any("content_retention_days" in json.dumps(e.get("after"), ensure_ascii=False) for e in entries["data"])
    # Opting out: nothing new is kept, and the next prune deletes what was.
    assert _admin(srv, "PUT", f"/accounts/{ident.account_id}/content-storage",
                  json={"retention_days": None}).json()["retention_days"] is None
    rep = call("welm", srv.url, ident, PROMPT, 3)
    assert _admin(srv, "GET", f"/requests/{rep.headers['x-request-id']}/content").status_code == 404
    assert _stored_rows(srv, ident.account_id) == len(ALL_DIALECTS)
    assert srv.platform.request_contents.prune() >= len(ALL_DIALECTS)
    assert _stored_rows(srv, ident.account_id) == 0


def test_retention_and_policy_rules(platform):
    a = platform.accounts.create("keeper")
    rc = platform.request_contents
    with pytest.raises(NotFound):
        rc.policy(4242)
    for bad in (0, -1, 366, True, 2.0, "7"):
        with pytest.raises(InvalidParam):
            rc.set_policy(a.id, bad)
    assert rc.set_policy(a.id, 2) == 2 and rc.policy(a.id) == 2
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)
    fields = dict(account_id=a.id, model="m", dialect="welm", status="ok")
    platform.settle_and_record("old", chars=0, tokens=0, reserved=False, content=(2, "旧的", ["答"]), **fields)
    platform.settle_and_record("new", chars=0, tokens=0, reserved=False, content=(2, "新的", ["答案"]), **fields)
    # Written once per request, as the usage record is.
    platform.settle_and_record("new", chars=0, tokens=0, reserved=False, content=(2, "again", []), **fields)
    assert rc.get("new").prompt == "新的"
    with platform.store.write_conn() as conn:            # make "old" past its two days
        from sqlalchemy import update

        from wharf.platform.models import RequestContent
        conn.execute(update(RequestContent).where(RequestContent.request_id == "old")
                     .values(expires_at=old + dt.timedelta(days=2)))
    with pytest.raises(NotFound):
        rc.get("old")                                    # past retention reads as gone, pruned or not
    assert rc.prune(batch=1) == 1
    assert rc.get("new").outputs == ["答案"]
    rc.set_policy(a.id, None)
    assert rc.prune() == 1
    with pytest.raises(NotFound):
        rc.get("new")

"""Credential lifecycle over a real `wharf serve` on SQLite and PostgreSQL, in every
dialect: expiry, allow-lists of models and services, rotation with a grace period; the
admin API's rules (owners read and rotate, admins set scope, others see 404)."""

from __future__ import annotations

import datetime as dt
import time

import httpx

from tests.conftest import MODEL
from tests.policy_http.dialects import ALL_DIALECTS, Identity, call, provision

ADMIN = "/admin/api"


def _creds(srv, ident: Identity) -> list[int]:
    return [c.id for c in srv.platform.credentials.list(ident.account_id)]


def _admin(srv, method, path, key=None, **kw) -> httpx.Response:
    return httpx.request(method, srv.url + ADMIN + path, headers={"Authorization": f"Bearer {key or srv.ops_key()}"},
                         timeout=30, **kw)


def _refused(dialect: str, rep, kind: str) -> bool:
    """The dialect's own answer for an expired credential ("auth") or a model / service it
    may not use ("permission")."""
    if dialect.startswith("qianfan"):
        return rep.body.get("error_code") == ({"auth": 111, "permission": 336004}[kind])
    return rep.status == {"auth": 401, "permission": 403}[kind]


def test_expiry_in_every_dialect(srv):
    ident = provision(srv, "kl-exp")
    for d in ALL_DIALECTS:                     # works, and fetches the Qianfan token first
        assert call(d, srv.url, ident, "Hi", 2).outcome == "ok", d
    past = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)).isoformat()
    for cid in _creds(srv, ident):
        assert _admin(srv, "PATCH", f"/credentials/{cid}/scope", json={"expires_at": past}).status_code == 200
    for d in ALL_DIALECTS:
        rep = call(d, srv.url, ident, "Hi", 2)
        assert _refused(d, rep, "auth"), (d, rep.status, rep.body)
    # Qianfan: no new OAuth token for an expired app key either.
    r = httpx.post(srv.url + "/oauth/2.0/token", params={"grant_type": "client_credentials", "client_id": ident.qf_ak,
                                                          "client_secret": ident.qf_sk}, timeout=30)
    assert "access_token" not in r.json()
    # Cleared: works again.
    for cid in _creds(srv, ident):
        _admin(srv, "PATCH", f"/credentials/{cid}/scope", json={"expires_at": None})
    assert call("openai", srv.url, ident, "Hi", 2).outcome == "ok"


def test_allowed_models_and_services_in_every_dialect(srv):
    ident = provision(srv, "kl-allow")
    for cid in _creds(srv, ident):
        r = _admin(srv, "PATCH", f"/credentials/{cid}/scope", json={"allowed_models": ["xl"]})
        assert r.status_code == 200 and r.json()["allowed_models"] == ["xl"]
    for d in ALL_DIALECTS:
        rep = call(d, srv.url, ident, "Hi", 2)
        assert _refused(d, rep, "permission"), (d, rep.status, rep.body)
        rid = rep.headers["x-request-id"]
        rec = _admin(srv, "GET", f"/requests/{rid}", key=ident.api_key).json()
        assert rec["status"] == "error:permission", d
    for cid in _creds(srv, ident):
        _admin(srv, "PATCH", f"/credentials/{cid}/scope", json={"allowed_models": [MODEL]})
    assert all(call(d, srv.url, ident, "Hi", 2).outcome == "ok" for d in ALL_DIALECTS)
    # Services: only the chat service; the completions one is refused in Qianfan's words.
    chat = srv.platform.services.get_by_endpoint(ident.qf_chat)
    app_cred = next(c for c in srv.platform.credentials.list(ident.account_id) if c.kind == "qianfan_app")
    _admin(srv, "PATCH", f"/credentials/{app_cred.id}/scope", json={"allowed_services": [chat.id]})
    assert call("qianfan-chat", srv.url, ident, "Hi", 2).outcome == "ok"
    assert call("qianfan", srv.url, ident, "Hi", 2).body["error_code"] == 336004
    # Bad input: the admin API's errors.
    assert _admin(srv, "PATCH", f"/credentials/{app_cred.id}/scope",
                  json={"allowed_services": ["x"]}).status_code == 422
    assert _admin(srv, "PATCH", f"/credentials/{app_cred.id}/scope", json={"nope": 1}).status_code == 422


def test_rotation_with_grace_in_every_dialect(srv):
    ident = provision(srv, "kl-rot")
    old_ids = _creds(srv, ident)
    fresh = Identity(ident.account_id, "", "", "", ident.qf_completions, ident.qf_chat, "", "")
    # Long enough for the 7 calls below on a busy 2-core machine (checked, not assumed).
    grace_s = 30
    grace_ends = time.monotonic() + grace_s
    for cid in old_ids:
        r = _admin(srv, "POST", f"/credentials/{cid}/rotate", key=ident.api_key, json={"grace_s": grace_s})
        assert r.status_code == 201, r.text
        out = r.json()
        assert out["old"]["expires_at"] is not None and out["credential"]["id"] != cid
        kind = out["credential"]["kind"]
        if kind == "api_key":
            fresh.api_key = out["api_key"]
        elif kind == "qianfan_app":
            fresh.qf_ak, fresh.qf_sk = out["api_key"], out["secret_key"]
        elif kind == "sensenova":
            fresh.sn_ak, fresh.sn_sk = out["access_key_id"], out["secret_access_key"]
    ident.qf_token = None
    for d in ALL_DIALECTS:                  # inside the grace period: the old ones still work
        rep = call(d, srv.url, ident, "Hi", 2)
        assert rep.outcome == "ok", (d, rep.status, rep.body)
    assert time.monotonic() < grace_ends, "the calls inside the grace period outlasted it: raise grace_s"
    time.sleep(grace_ends - time.monotonic() + 0.5)
    for d in ALL_DIALECTS:                  # after it: only the new ones (never expiring)
        assert _refused(d, call(d, srv.url, ident, "Hi", 2), "auth"), d
        assert call(d, srv.url, fresh, "Hi", 2).outcome == "ok", d


def test_scope_rules_and_isolation(srv):
    a, b = provision(srv, "kl-a"), provision(srv, "kl-b")
    cid = _creds(srv, a)[0]
    assert _admin(srv, "GET", f"/credentials/{cid}/scope", key=a.api_key).status_code == 200
    # The owner may not lift or set scope; another account sees nothing at all.
    assert _admin(srv, "PATCH", f"/credentials/{cid}/scope", key=a.api_key,
                  json={"allowed_models": None}).status_code == 403
    for method, path, body in (("GET", "/scope", None), ("PATCH", "/scope", {"expires_at": None}),
                               ("POST", "/rotate", {"grace_s": 0})):
        assert _admin(srv, method, f"/credentials/{cid}{path}", key=b.api_key, json=body).status_code == 404
    assert _admin(srv, "POST", f"/credentials/{cid}/rotate", key=a.api_key, json={"grace_s": -1}).status_code == 422

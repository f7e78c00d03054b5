"""A credential's own daily quota over a real `wharf serve` on SQLite and PostgreSQL, in
every dialect: each refuses in its own quota words (OpenAI 429 insufficient_quota,
Qianfan 17, WeLM 429 "quota limit exceed", SenseNova 429 code 8), answers are cut at the
credential's character quota, concurrent requests never overspend it, and the admin API's
rules (admins set it, owners read it, others see 404)."""

from __future__ import annotations

import asyncio

import httpx

from tests.policy_http.dialects import ALL_DIALECTS, Identity, metric, provision, request
from tests.policy_http.dialects import call as dialect_call

ADMIN = "/admin/api"
PROMPT = "请用中文介绍一下长城的历史。"


def _admin(srv, method, path, key=None, **kw) -> httpx.Response:
    return httpx.request(method, srv.url + ADMIN + path, headers={"Authorization": f"Bearer {key or srv.ops_key()}"},
                         timeout=30, **kw)


def _set_quota(srv, ident: Identity, **quota) -> list[int]:
    """The same own quota on each of the identity's credentials (one per scheme)."""
    ids = [c.id for c in srv.platform.credentials.list(ident.account_id)]
    for cid in ids:
        r = _admin(srv, "PATCH", f"/credentials/{cid}/scope", json=quota)
        assert r.status_code == 200, r.text
        assert all(r.json()[k] == v for k, v in quota.items())
    return ids


def _quota_words(dialect: str, rep) -> bool:
    if dialect.startswith("openai"):
        err = rep.body["error"]
        return rep.status == 429 and err["code"] == "insufficient_quota" and "credential" in err["message"]
    if dialect.startswith("qianfan"):
        return rep.body["error_code"] == 17
    if dialect == "welm":
        return rep.status == 429 and rep.body == "quota limit exceed"
    return rep.status == 429 and rep.body["error"]["code"] == 8 and "quota" in rep.body["error"]["message"]


def test_credential_quota_refuses_in_every_dialect(srv):
    ident = provision(srv, "cq-refuse")        # the account itself has no quota
    _set_quota(srv, ident, quota_chars_per_day=3)
    before = metric(srv.url, "wharf_quota_rejections_total")
    for d in ALL_DIALECTS:
        rep = dialect_call(d, srv.url, ident, PROMPT, 4)
        assert rep.outcome == "quota" and _quota_words(d, rep), (d, rep.status, rep.body)
        rec = _admin(srv, "GET", f"/requests/{rep.headers['x-request-id']}", key=ident.api_key).json()
        assert rec["status"] == "error:quota_exceeded", d
    assert metric(srv.url, "wharf_quota_rejections_total") == before + len(ALL_DIALECTS)
    acct = srv.platform.quota.status(ident.account_id)
    assert acct.chars_limit is None and acct.chars_reserved == acct.tokens_reserved == 0
    # Tokens too; and cleared, the account's (none) is all that is left.
    ids = _set_quota(srv, ident, quota_chars_per_day=None, quota_tokens_per_day=5)
    assert dialect_call("welm", srv.url, ident, PROMPT, 4).outcome == "quota"
    _set_quota(srv, ident, quota_tokens_per_day=None)
    assert all(dialect_call(d, srv.url, ident, PROMPT, 2).outcome == "ok" for d in ALL_DIALECTS)
    for cid in ids:
        st = _admin(srv, "GET", f"/credentials/{cid}/quota", key=ident.api_key).json()
        assert st["chars_reserved"] == st["tokens_reserved"] == 0 and st["tokens_limit"] is None


def test_answers_are_cut_at_the_credential_character_quota(srv):
    """WeLM counts generated characters (seed 000): an answer that outgrows its estimate
    grows its reservation, and stops exactly at the credential's characters."""
    for d in ALL_DIALECTS:
        ident = provision(srv, "cq-cut")
        _set_quota(srv, ident, quota_chars_per_day=6)
        rep = dialect_call(d, srv.url, ident, "The capital of France is Paris. The capital of Germany is", 4)
        assert rep.outcome == "ok" and len(rep.text) <= 6, (d, rep.text, rep.body)
        cid = [c.id for c in srv.platform.credentials.list(ident.account_id)]
        used = sum(srv.platform.quota.credential_status(c).chars_used for c in cid)
        assert used == len(rep.text) <= 6, d
        assert dialect_call(d, srv.url, ident, PROMPT, 4).outcome == "quota", d


def test_concurrent_requests_never_overspend_a_credential_quota(srv):
    """24 at once against a key whose own token quota fits 4 (ignore_eos: the worst case is
    what is used); the account has no quota."""
    ident = provision(srv, "cq-race")
    probe = dialect_call("openai", srv.url, ident, PROMPT, 1)
    max_tokens = 3
    per_request = probe.body["usage"]["prompt_tokens"] + max_tokens
    [cid] = [c.id for c in srv.platform.credentials.list(ident.account_id) if c.kind == "api_key"]
    used_before = srv.platform.quota.credential_status(cid).tokens_used
    limit = used_before + 4 * per_request
    assert _admin(srv, "PATCH", f"/credentials/{cid}/scope", json={"quota_tokens_per_day": limit}).status_code == 200

    async def fire():
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=40)) as c:
            async def one():
                target, kw = request("openai", srv.url, ident, PROMPT, max_tokens)
                kw["json"]["ignore_eos"] = True
                return (await c.post(target, **kw)).status_code
            return await asyncio.gather(*(one() for _ in range(24)))
    codes = asyncio.run(fire())
    assert sorted(set(codes)) <= [200, 429] and codes.count(200) == 4, codes
    st = srv.platform.quota.credential_status(cid)
    assert st.tokens_used == limit and st.tokens_reserved == 0
    assert srv.platform.quota.status(ident.account_id).tokens_reserved == 0


def test_credential_quota_rules_and_isolation(srv):
    a, b = provision(srv, "cq-a"), provision(srv, "cq-b")
    cid = next(c.id for c in srv.platform.credentials.list(a.account_id) if c.kind == "api_key")
    assert _admin(srv, "GET", f"/credentials/{cid}/quota", key=a.api_key).status_code == 200
    assert _admin(srv, "PATCH", f"/credentials/{cid}/scope", key=a.api_key,
                  json={"quota_chars_per_day": 10**6}).status_code == 403     # only an admin sets it
    for method, path, body in (("GET", "/quota", None), ("PATCH", "/scope", {"quota_chars_per_day": 1})):
        assert _admin(srv, method, f"/credentials/{cid}{path}", key=b.api_key, json=body).status_code == 404
    for bad in (-1, "many", 1.5):
        r = _admin(srv, "PATCH", f"/credentials/{cid}/scope", json={"quota_tokens_per_day": bad})
        assert r.status_code == 422 and r.json()["error"]["param"] == "quota_tokens_per_day", r.text
    # The change is audited with its before and after.
    _admin(srv, "PATCH", f"/credentials/{cid}/scope", json={"quota_chars_per_day": 1234})
    entries = _admin(srv, "GET", "/audit", params={"object_type": "credential", "object_id": cid}).json()["data"]
    assert any('"quota_chars_per_day": 1234' in (e["after"] if isinstance(e["after"], str) else str(e["after"]))
               or (isinstance(e["after"], dict) and e["after"].get("quota_chars_per_day") == 1234)
               for e in entries), entries

"""Item 6: authentication under attack, cross-account access, and secrets never logged.

A dedicated server: BCE signatures tampered with or replayed outside their expiration,
JWTs with alg none / a wrong key / expired / a future nbf, revoked credentials of every
kind, account A's credential on account B's service and on B's admin objects; then every
secret and token used in this module is searched for in the server log.
"""

from __future__ import annotations

import datetime as dt
import time

import httpx
import jwt
import pytest

from tests.conftest import MODEL
from tests.reliability.rel_clients import QF_PREFIX, is_error, provision, request_for, sensenova_jwt
from wharf.platform.auth import bce_canonical_request, bce_sign

pytestmark = pytest.mark.slow

SEEN: list[str] = []          # every secret / token this module sends


@pytest.fixture(scope="module")
def srv(server_factory):
    return server_factory()


def _qf_iam(server):
    p = server.platform
    acct = provision(server, "qianfan")
    iam = p.credentials.create(acct.account_id, "qianfan_iam", label="iam")
    SEEN.extend([acct.sk, acct.access_token, iam.secret])
    return acct, iam


def _bce_headers(server, path: str, ak: str, sk: str, *, ts: dt.datetime | None = None,
                 expiration: int = 1800, body: bytes = b"") -> dict:
    host = server.url.split("//", 1)[1]
    ts = ts or dt.datetime.now(dt.timezone.utc)
    stamp = ts.strftime("%Y-%m-%dT%H:%M:%SZ")
    headers = {"host": host, "content-type": "application/json", "x-bce-date": stamp}
    signed = sorted(headers)
    prefix = f"bce-auth-v1/{ak}/{stamp}/{expiration}"
    sig = bce_sign(sk, prefix, bce_canonical_request("POST", path, [], headers, signed))
    return {**headers, "Authorization": f"{prefix}/{';'.join(signed)}/{sig}"}


def _qf_post(server, path, headers, body):
    import json
    return httpx.post(server.url + path, content=json.dumps(body), headers=headers, timeout=60)


def test_bce_signature_attacks(srv):
    acct, iam = _qf_iam(srv)
    path = f"{QF_PREFIX}/chat/{acct.endpoint}"
    body = {"messages": [{"role": "user", "content": "hi"}], "max_output_tokens": 2}
    ok = _qf_post(srv, path, _bce_headers(srv, path, iam.public_id, iam.secret), body)
    assert ok.status_code == 200 and "error_code" not in ok.json(), ok.text

    def code(headers):
        r = _qf_post(srv, path, headers, body)
        assert r.status_code == 200
        return r.json().get("error_code")

    h = _bce_headers(srv, path, iam.public_id, iam.secret)
    tampered = h["Authorization"][:-1] + ("0" if h["Authorization"][-1] != "0" else "1")
    assert code({**h, "Authorization": tampered}) == 14
    # Signed for another path, replayed here.
    other = _bce_headers(srv, f"{QF_PREFIX}/chat/other", iam.public_id, iam.secret)
    assert code(other) == 14
    # A header changed after signing.
    assert code({**h, "x-bce-date": "2020-01-01T00:00:00Z"}) == 14
    # Replayed after its expiration (signed an hour ago for 1800 s), or dated in the future.
    old = _bce_headers(srv, path, iam.public_id, iam.secret,
                       ts=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1))
    assert code(old) == 14
    future = _bce_headers(srv, path, iam.public_id, iam.secret,
                          ts=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    assert code(future) == 14
    assert code(_bce_headers(srv, path, iam.public_id, iam.secret, expiration=0)) == 14
    assert code(_bce_headers(srv, path, "unknown-ak", iam.secret)) == 14
    assert code(_bce_headers(srv, path, iam.public_id, "0" * 32)) == 14
    # Revoked: the very next request fails.
    srv.platform.credentials.revoke(iam.info.id)
    assert code(_bce_headers(srv, path, iam.public_id, iam.secret)) == 14


def _sn_call(server, token):
    return httpx.post(server.url + "/v1/llm/completions", timeout=60, headers={"Authorization": f"Bearer {token}"},
                      json={"model": MODEL, "prompt": "hi", "max_new_tokens": 2})


def test_jwt_attacks(srv):
    acct = provision(srv, "sensenova")
    SEEN.append(acct.sk)
    good = sensenova_jwt(acct.ak, acct.sk)
    assert _sn_call(srv, good).status_code == 200
    now = int(time.time())
    cases = {
        "alg_none": jwt.encode({"iss": acct.ak, "exp": now + 600, "nbf": now - 5}, None, algorithm="none"),
        "wrong_key": sensenova_jwt(acct.ak, "not-the-secret-" + "x" * 20),
        "expired": sensenova_jwt(acct.ak, acct.sk, exp_in=-600, nbf_in=-1200),
        "future_nbf": sensenova_jwt(acct.ak, acct.sk, nbf_in=600, exp_in=1200),
        "no_exp": jwt.encode({"iss": acct.ak, "nbf": now - 5}, acct.sk, algorithm="HS256"),
        "hs512": jwt.encode({"iss": acct.ak, "exp": now + 600, "nbf": now - 5}, acct.sk, algorithm="HS512"),
        "unknown_iss": sensenova_jwt("nobody", acct.sk),
        "tampered_claims": ".".join([good.split(".")[0],
                                     jwt.utils.base64url_encode(b'{"iss":"%s","exp":9999999999,"nbf":0}'
                                                                % acct.ak.encode()).decode(),
                                     good.split(".")[2]]),
    }
    for name, tok in cases.items():
        r = _sn_call(srv, tok)
        assert r.status_code == 401 and r.json()["error"]["code"] == 16, (name, r.status_code, r.text)
    srv.platform.credentials.revoke(srv.platform.credentials.list(acct.account_id)[0].id)
    r = _sn_call(srv, sensenova_jwt(acct.ak, acct.sk))
    assert r.status_code == 401, r.text


def test_revoked_credentials_every_kind(srv):
    p = srv.platform
    for d in ("openai", "welm"):
        acct = provision(srv, d)
        SEEN.append(acct.key)
        method, path, params, headers, body = request_for(acct, max_tokens=2)
        assert httpx.request(method, srv.url + path, headers=headers, json=body, timeout=60).status_code == 200
        p.credentials.revoke(p.credentials.list(acct.account_id)[0].id)
        r = httpx.request(method, srv.url + path, headers=headers, json=body, timeout=60)
        assert r.status_code == 401 and is_error(d, r), (d, r.text)
    qf = provision(srv, "qianfan")
    SEEN.extend([qf.sk, qf.access_token])
    method, path, params, headers, body = request_for(qf, max_tokens=2)
    assert "error_code" not in httpx.post(srv.url + path, params=params, json=body, timeout=60).json()
    p.credentials.revoke(p.credentials.list(qf.account_id)[0].id)
    r = httpx.post(srv.url + path, params=params, json=body, timeout=60)
    assert r.json()["error_code"] in (110, 111), r.text
    # And no new token for the revoked app.
    r = httpx.post(srv.url + "/oauth/2.0/token", params={"grant_type": "client_credentials",
                                                         "client_id": qf.ak, "client_secret": qf.sk}, timeout=30)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


def test_cross_account_access(srv):
    a = provision(srv, "qianfan")
    b = provision(srv, "qianfan")
    SEEN.extend([a.sk, a.access_token, b.sk, b.access_token])
    # A's token on B's service.
    body = {"messages": [{"role": "user", "content": "hi"}], "max_output_tokens": 2}
    r = httpx.post(f"{srv.url}{QF_PREFIX}/chat/{b.endpoint}", params={"access_token": a.access_token},
                   json=body, timeout=60)
    assert r.json().get("error_code") in (336004, 336005), r.text
    # A's API key on B's admin objects.
    p = srv.platform
    a_key = p.credentials.create(a.account_id, "api_key", label="admin-api").secret
    SEEN.append(a_key)
    hdr = {"Authorization": f"Bearer {a_key}"}
    b_svc = p.services.list(b.account_id)[0]
    b_cred = p.credentials.list(b.account_id)[0]
    api = srv.url + "/admin/api"
    assert httpx.get(f"{api}/usage", params={"account_id": b.account_id}, headers=hdr).status_code == 403
    assert httpx.get(f"{api}/quota", params={"account_id": b.account_id}, headers=hdr).status_code == 403
    assert httpx.get(f"{api}/accounts/{b.account_id}", headers=hdr).status_code in (403, 404)
    assert httpx.get(f"{api}/services", params={"account_id": b.account_id}, headers=hdr).status_code == 403
    assert httpx.get(f"{api}/services/{b_svc.id}", headers=hdr).status_code == 404
    assert httpx.get(f"{api}/credentials/{b_cred.id}", headers=hdr).status_code == 404
    assert httpx.post(f"{api}/credentials/{b_cred.id}/revoke", headers=hdr).status_code in (404, 405)
    assert httpx.delete(f"{api}/services/{b_svc.id}", headers=hdr).status_code == 404
    assert httpx.post(f"{api}/accounts", json={"name": "evil", "is_admin": True}, headers=hdr).status_code == 403
    all_usage = httpx.get(f"{api}/usage", params={"all": "true", "group_by": "account"}, headers=hdr).json()
    assert all_usage["account_id"] == a.account_id
    # B's objects are untouched.
    assert p.credentials.get(b_cred.id).revoked_at is None and p.services.get(b_svc.id) is not None


def test_secrets_never_in_logs(srv):
    """Runs last in this module: every credential kind has been used above."""
    assert len(SEEN) >= 10
    log = srv.log()
    leaked = [s[:6] + "..." for s in SEEN if s and s in log]
    assert not leaked, leaked
    # The access log keeps the paths, with secrets in query strings redacted.
    assert "/oauth/2.0/token" in log and "client_secret=***" in log
    assert "access_token=***" in log

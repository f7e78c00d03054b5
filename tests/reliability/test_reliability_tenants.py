"""Issue 15, items 9-12 and 14: tenants and the limits their provider set, hostile
credential fields, text that is not text, and one meaning for a limit of 0.

One server for the module (small caps so that reaching them is quick; the control-plane
throttle off so that these bursts of admin calls measure the tenancy rules, not it).

 9  a non-admin account cannot raise or clear the limits an admin put on its credentials
    and services (admin API, console, CLI), new ones inherit the ceiling, and it cannot
    hold more than the caps (also under concurrent creates)
10  BCE Authorization with overflowing / unparsable fields, valid AK or not: error_code 14,
    HTTP 200 JSON, never a 500
11  non-string text parts and lone surrogates in every string field of every dialect: 400
    in the dialect's shape, one usage record each
12  SenseNova JWTs with non-integer, infinite or absurd times, or a crit header: 401
14  0 means nothing allowed for every limit (account, credential, service, quota), in
    every dialect, and the refusal is recorded
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import datetime as dt
import hashlib
import hmac
import json
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from tests.conftest import MODEL
from tests.reliability.rel_clients import (
    DIALECTS,
    QF_PREFIX,
    error_code,
    is_error,
    provision,
    request_for,
    sensenova_jwt,
    usage_records,
)
from wharf.platform.auth import bce_canonical_request, bce_sign

pytestmark = pytest.mark.slow

MAX_KEYS, MAX_SERVICES = 6, 3
UNTHROTTLED = {k: "0" for k in ("WHARF_CONTROL_RPM", "WHARF_CONTROL_QPS", "WHARF_CONTROL_IP_RPM",
                                "WHARF_CONTROL_IP_QPS")}


@pytest.fixture(scope="module")
def srv(server_factory):
    s = server_factory(extra_env={"WHARF_MAX_CREDENTIALS_PER_ACCOUNT": str(MAX_KEYS),
                                  "WHARF_MAX_SERVICES_PER_ACCOUNT": str(MAX_SERVICES), **UNTHROTTLED})
    assert s.admin_key
    return s


def _api(srv, key: str) -> httpx.Client:
    return httpx.Client(base_url=srv.url + "/admin/api", headers={"Authorization": f"Bearer {key}"},
                        timeout=30)


def _tenant(srv):
    """A non-admin account with one API key (made by the operator)."""
    acct, key = srv.account(f"tenant-{uuid.uuid4().hex[:8]}")
    return acct, key, srv.platform.credentials.list(acct.id)[0].id


def _no_traceback(srv):
    assert "Traceback" not in srv.log(), srv.log()[-3000:]


# -- 9: ceilings and caps --------------------------------------------------------------------

def test_tenant_cannot_raise_or_clear_what_its_provider_set(srv):
    acct, key, cred_id = _tenant(srv)
    admin, me = _api(srv, srv.admin_key), _api(srv, key)
    ceiling = {"rpm": 5, "tpm": 1000, "qps": 2, "max_concurrency": 2}
    assert admin.patch(f"/credentials/{cred_id}", json=ceiling).status_code == 200
    svc = admin.post("/services", json={"account_id": acct.id, "endpoint": f"t{uuid.uuid4().hex[:10]}",
                                        "model": MODEL, "kind": "chat", "rpm": 3, "tpm": 500})
    assert svc.status_code == 201, svc.text
    svc_id = svc.json()["id"]

    # Raising past the ceiling or clearing: refused, whatever the field and value.
    for field, cap in ceiling.items():
        for value in (None, cap + 1, 10**6, 2**31 - 1):
            r = me.patch(f"/credentials/{cred_id}", json={field: value})
            assert r.status_code == 403 and r.json()["error"]["param"] == field, (field, value, r.text)
    for field, cap in (("rpm", 3), ("tpm", 500)):
        for value in (None, cap + 1, 10**6):
            r = me.patch(f"/services/{svc_id}", json={field: value})
            assert r.status_code == 403, (field, value, r.text)
    assert srv.platform.credentials.get(cred_id).rpm == 5
    assert srv.platform.services.get(svc_id).tpm == 500
    # Lowering is fine, and so is going back up to the ceiling.
    assert me.patch(f"/credentials/{cred_id}", json={"rpm": 1}).json()["rpm"] == 1
    assert me.patch(f"/credentials/{cred_id}", json={"rpm": 5}).json()["rpm"] == 5
    assert me.patch(f"/services/{svc_id}", json={"rpm": 2, "tpm": 400}).status_code == 200

    # New keys and services inherit the ceiling; asking for more is refused.
    for kind in ("api_key", "qianfan_app", "qianfan_iam", "sensenova"):
        r = me.post("/credentials", json={"kind": kind})
        assert r.status_code == 201, r.text
        assert {k: r.json()["credential"][k] for k in ceiling} == ceiling, (kind, r.text)
        me.post(f"/credentials/{r.json()['credential']['id']}/revoke")
    r = me.post("/credentials", json={"rpm": None, "qps": 1})
    assert r.status_code == 201 and r.json()["credential"]["rpm"] == 5 and r.json()["credential"]["qps"] == 1
    me.post(f"/credentials/{r.json()['credential']['id']}/revoke")
    for field, cap in ceiling.items():
        assert me.post("/credentials", json={field: cap + 1}).status_code == 403, field
    r = me.post("/services", json={"endpoint": f"t{uuid.uuid4().hex[:10]}", "model": MODEL, "kind": "chat"})
    assert r.status_code == 201 and (r.json()["rpm"], r.json()["tpm"]) == (3, 500), r.text
    assert me.post("/services", json={"endpoint": f"t{uuid.uuid4().hex[:10]}", "model": MODEL,
                                      "kind": "completions", "tpm": 501}).status_code == 403
    # Revoking the limited key and minting another does not shed the ceiling either.
    me.post(f"/credentials/{cred_id}/revoke")
    fresh = srv.platform.credentials.create(acct.id, "api_key", label="op")       # operator: fine
    r = _api(srv, fresh.secret).post("/credentials", json={})
    assert r.status_code == 201 and r.json()["credential"]["rpm"] == 5
    # The tenant cannot touch the ceilings themselves.
    assert _api(srv, fresh.secret).patch(f"/accounts/{acct.id}", json={"key_rpm": None}).status_code == 403
    # An admin can: lifting the ceiling lets the tenant clear its own limits again.
    assert admin.patch(f"/accounts/{acct.id}", json={"key_rpm": None}).json()["key_rpm"] is None
    new_id = r.json()["credential"]["id"]
    assert _api(srv, fresh.secret).patch(f"/credentials/{new_id}", json={"rpm": None}).json()["rpm"] is None


def test_account_ceiling_set_by_admin_applies_to_existing_keys(srv):
    acct, key, cred_id = _tenant(srv)
    admin = _api(srv, srv.admin_key)
    r = admin.patch(f"/accounts/{acct.id}", json={"key_rpm": 7, "service_tpm": 70})
    assert r.status_code == 200 and r.json()["key_rpm"] == 7
    assert srv.platform.credentials.get(cred_id).rpm == 7            # was unlimited: brought down
    r = _api(srv, key).post("/services", json={"endpoint": f"t{uuid.uuid4().hex[:10]}", "model": MODEL,
                                               "kind": "chat"})
    assert r.status_code == 201 and r.json()["tpm"] == 70 and r.json()["rpm"] is None


def test_console_and_cli_obey_the_ceiling(srv):
    acct, key, cred_id = _tenant(srv)
    assert _api(srv, srv.admin_key).patch(f"/credentials/{cred_id}", json={"rpm": 4}).status_code == 200
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.post("/console/session", json={"api_key": key}).status_code == 200
        csrf = {"X-CSRF-Token": c.get("/console/session").json()["csrf"]}
        assert c.patch(f"/console/api/admin/credentials/{cred_id}", json={"rpm": None},
                       headers=csrf).status_code == 403
        assert c.patch(f"/console/api/admin/credentials/{cred_id}", json={"rpm": 40},
                       headers=csrf).status_code == 403
        assert c.patch(f"/console/api/admin/credentials/{cred_id}", json={"rpm": 3},
                       headers=csrf).json()["rpm"] == 3

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "wharf", "keys", "limits", str(cred_id), *args,
                               "--server", srv.url, "--admin-key", key],
                              capture_output=True, text=True, timeout=60)
    out = cli("--rpm", "-1")                     # -1: clear
    assert out.returncode != 0 and "403" in out.stdout + out.stderr, out
    assert cli("--rpm", "400").returncode != 0
    assert cli("--rpm", "2").returncode == 0
    assert srv.platform.credentials.get(cred_id).rpm == 2


def test_caps_on_credentials_and_services(srv):
    acct, key, cred_id = _tenant(srv)
    me, admin = _api(srv, key), _api(srv, srv.admin_key)
    made = [me.post("/credentials", json={"label": f"k{i}"}) for i in range(MAX_KEYS - 1)]
    assert all(r.status_code == 201 for r in made)
    r = me.post("/credentials", json={})
    assert r.status_code == 403 and "WHARF_MAX_CREDENTIALS_PER_ACCOUNT" in r.json()["error"]["message"]
    # The cap is the account's, whoever asks.
    assert admin.post("/credentials", json={"account_id": acct.id}).status_code == 403
    # Revoked keys make room; concurrent creates never pass the cap.
    for r in made[:3]:
        assert me.post(f"/credentials/{r.json()['credential']['id']}/revoke").status_code == 200
    with cf.ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(lambda i: me.post("/credentials", json={"label": f"race{i}"}).status_code,
                                range(8)))
    assert codes == [201] * 3 + [403] * 5, codes
    assert len(srv.platform.credentials.list(acct.id, include_revoked=False)) == MAX_KEYS

    def svc(kind="chat"):
        return me.post("/services", json={"endpoint": f"c{uuid.uuid4().hex[:10]}", "model": MODEL, "kind": kind})
    ids = [svc().json()["id"] for _ in range(MAX_SERVICES)]
    r = svc("completions")
    assert r.status_code == 403 and "WHARF_MAX_SERVICES_PER_ACCOUNT" in r.json()["error"]["message"]
    assert me.delete(f"/services/{ids[0]}").status_code == 204
    assert svc().status_code == 201


# -- 10: BCE authorization fields ------------------------------------------------------------

def _bce(srv, path: str, ak: str, sk: str, *, stamp: str | None = None, expiration: str = "1800",
         extra: dict | None = None) -> dict:
    host = srv.url.split("//", 1)[1]
    if stamp is None:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    headers = {"host": host, "content-type": "application/json", "x-bce-date": stamp, **(extra or {})}
    signed = sorted(headers)
    prefix = f"bce-auth-v1/{ak}/{stamp}/{expiration}"
    sig = bce_sign(sk, prefix, bce_canonical_request("POST", path, [], headers, signed))
    return {**headers, "Authorization": f"{prefix}/{';'.join(signed)}/{sig}"}


def test_bce_fields_that_overflow_or_do_not_parse(srv):
    acct = provision(srv, "qianfan")
    iam = srv.platform.credentials.create(acct.account_id, "qianfan_iam", label="iam")
    path = f"{QF_PREFIX}/chat/{acct.endpoint}"
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_output_tokens": 1})
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def call(headers, p=path):
        r = httpx.post(srv.url + p, content=body, headers=headers, timeout=60)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), (r.status_code,
                                                                                                   r.text[:300])
        return r.json().get("error_code")

    assert call(_bce(srv, path, iam.public_id, iam.secret)) is None           # the control: it works
    expirations = ["1000000000000", "9" * 40, "86401", "1e3", "-1", "+5", " 5", "1_0", "0x10", "", "\u0663",
                   "\u00b2"]
    stamps = ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2024-13-45T99:99:99Z", "2024-1-1T1:1:1Z",
              "garbage", "", now.replace("Z", "+00:00"), now[:-1]]
    cases = []
    for ak, sk in ((uuid.uuid4().hex, "0" * 32), (iam.public_id, iam.secret)):     # unknown AK, valid AK
        cases += [_bce(srv, path, ak, sk, expiration=e) for e in expirations]
        cases += [_bce(srv, path, ak, sk, stamp=s, expiration="1000000000000") for s in stamps]
        cases += [_bce(srv, path, ak, sk, stamp=s) for s in stamps]
    # Garbage in the other fields and headers of an otherwise valid signature.
    cases += [{**_bce(srv, path, iam.public_id, iam.secret), "x-bce-date": v}
              for v in ("9" * 60, "\xff\xfe", "2024-13-45T99:99:99Z", "")]
    cases += [_bce(srv, path, iam.public_id, iam.secret, extra={"x-bce-date": "9" * 60})]   # signed as sent
    cases += [{"Authorization": a} for a in ("bce-auth-v1/" + "/".join(["x"] * 5), "bce-auth-v1//" + now
                                              + "/1000000000000//", "bce-auth-v1/" + "/" * 5,
                                              "bce-auth-v1/a/b/c/d/e/f/g", "bce-auth-v1/\xff/\xfe/1/host/00")]
    for headers in cases:
        hdrs = {k: v.encode() if isinstance(v, str) else v for k, v in headers.items()}
        assert call(hdrs) in (13, 14), headers
    for headers in cases[:6]:           # the console list route takes the same signatures
        hdrs = {k: v.encode() for k, v in headers.items()}
        assert call(hdrs, "/wenxinworkshop/service/list") in (13, 14), headers
    # An expiration over the lifetime cap (24 h), signed correctly: refused too.
    assert call(_bce(srv, path, iam.public_id, iam.secret, expiration=str(24 * 3600 + 1))) == 14
    assert call(_bce(srv, path, iam.public_id, iam.secret, expiration=str(24 * 3600))) is None
    assert httpx.get(srv.url + "/health", timeout=10).status_code == 200
    _no_traceback(srv)


# -- 11: text that is not text -------------------------------------------------------------------

S = "a\ud800b"            # a lone surrogate: json.dumps writes it as the escape "\ud800"


def _surrogate_bodies(acct, qf_completions: str) -> list[tuple[str, dict, dict]]:
    """(path, params, body) of requests with a lone surrogate in one string field each."""
    d = acct.dialect
    _, path, params, _, base = request_for(acct, max_tokens=2)
    if d == "openai":
        chat = [{**base, "messages": [{"role": "user", "content": S}]},
                {**base, "messages": [{"role": "system", "content": S}, {"role": "user", "content": "hi"}]},
                {**base, "messages": [{"role": "user", "content": [{"type": "text", "text": S}]}]},
                {**base, "stop": [S]}, {**base, "user": S}, {**base, "model": S}, {**base, S: 1}]
        comp = [{"model": MODEL, "prompt": S, "max_tokens": 2}, {"model": MODEL, "prompt": [S], "max_tokens": 2},
                {"model": MODEL, "prompt": "hi", "stop": S, "max_tokens": 2}]
        return [(path, params, b) for b in chat] + [("/v1/completions", params, b) for b in comp]
    if d == "welm":
        return [(path, params, b) for b in ({**base, "prompt": S}, {**base, "stop": S}, {**base, "model": S})]
    if d == "qianfan":
        chat = [{**base, "messages": [{"role": "user", "content": S}]}, {**base, "system": S},
                {**base, "user_id": S}, {**base, "stop": [S]}]
        return ([(path, params, b) for b in chat]
                + [(f"{QF_PREFIX}/completions/{qf_completions}", params, {"prompt": S, "max_output_tokens": 2})])
    chat = [{"model": MODEL, "messages": [{"role": "user", "content": S}], "max_new_tokens": 2},
            {"model": MODEL, "messages": [{"role": "system", "content": S}, {"role": "user", "content": "hi"}],
             "max_new_tokens": 2}]
    comp = [{**base, "prompt": S}, {**base, "stop": S}, {**base, "stop": ["x", S]}, {**base, "user": S}]
    return [(path, params, b) for b in comp] + [("/v1/llm/chat-completions", params, b) for b in chat]


def test_lone_surrogates_in_every_string_field_every_dialect(srv):
    accts = {d: provision(srv, d) for d in DIALECTS}
    qf_completions = srv.platform.services.create(accts["qianfan"].account_id, f"comp{uuid.uuid4().hex[:8]}",
                                                  MODEL, "completions").endpoint
    for d, acct in accts.items():
        before = len(usage_records(srv, acct.account_id))
        sent = 0
        for path, params, body in _surrogate_bodies(acct, qf_completions):
            headers = {**request_for(acct)[3], "Content-Type": "application/json"}
            raw = json.dumps(body).encode()
            assert b"\\ud800" in raw
            r = httpx.post(srv.url + path, params=params, content=raw, headers=headers, timeout=60)
            sent += 1
            assert is_error(d, r), (d, body, r.status_code, r.text[:300])
            assert error_code(d, r) in ((336001, 336003) if d == "qianfan" else (400,)), (d, body, r.text[:300])
        recs = usage_records(srv, acct.account_id)
        assert len(recs) - before == sent, (d, sent, len(recs) - before)
        assert all(rec["status"].startswith("error:") for rec in recs[:sent]), [r["status"] for r in recs[:sent]]
    # A valid surrogate pair (an emoji escaped as two) is text, and still works.
    acct = accts["openai"]
    _, path, _, headers, base = request_for(acct, max_tokens=1)
    raw = json.dumps({**base, "messages": [{"role": "user", "content": "hi \U0001F600"}]}).encode()
    assert b"\\ud83d\\ude00" in raw
    r = httpx.post(srv.url + path, content=raw, headers={**headers, "Content-Type": "application/json"},
                   timeout=60)
    assert r.status_code == 200, r.text
    _no_traceback(srv)


def test_openai_text_parts_that_are_not_strings(srv):
    acct = provision(srv, "openai")
    _, path, _, headers, base = request_for(acct, max_tokens=1)
    before = len(usage_records(srv, acct.account_id))
    bad = [5, None, ["a"], {"t": "a"}, True, 1.5]
    for value in bad:
        parts = [{"type": "text", "text": "ok"}, {"type": "text", "text": value}]
        r = httpx.post(srv.url + path, headers=headers, timeout=60,
                       json={**base, "messages": [{"role": "user", "content": parts}]})
        assert r.status_code == 400 and is_error("openai", r), (value, r.status_code, r.text[:300])
    r = httpx.post(srv.url + path, headers=headers, timeout=60,
                   json={**base, "messages": [{"role": "user", "content": [{"type": "text"}]}]})
    assert r.status_code == 400, r.text
    recs = usage_records(srv, acct.account_id)
    assert len(recs) - before == len(bad) + 1
    assert {rec["status"] for rec in recs[:len(bad) + 1]} == {"error:invalid_param"}
    # The well-formed parts still answer.
    r = httpx.post(srv.url + path, headers=headers, timeout=60,
                   json={**base, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    assert r.status_code == 200, r.text


# -- 12: SenseNova JWT times and crit ------------------------------------------------------------

def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _jwt_raw(header: dict, payload: bytes, sk: str) -> str:
    """A correctly signed HS256 token whose payload is exactly these bytes (1e400, NaN...)."""
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(payload)}"
    return f"{signing}.{_b64(hmac.new(sk.encode(), signing.encode(), hashlib.sha256).digest())}"


def test_jwt_times_and_crit(srv):
    acct = provision(srv, "sensenova")
    now = int(time.time())
    iss = json.dumps(acct.ak)
    hs = {"alg": "HS256", "typ": "JWT"}

    def status(token):
        r = httpx.get(srv.url + "/v1/llm/models", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        if r.status_code != 200:
            assert r.json()["error"]["code"] == 16, r.text
        return r.status_code

    def claims(exp=None, nbf=None, extra=""):
        exp = str(now + 1800) if exp is None else exp
        nbf = str(now - 5) if nbf is None else nbf
        return f'{{"iss":{iss},"exp":{exp},"nbf":{nbf}{extra}}}'.encode()

    assert status(sensenova_jwt(acct.ak, acct.sk)) == 200
    assert status(_jwt_raw(hs, claims(), acct.sk)) == 200                       # the control, by hand
    assert status(_jwt_raw(hs, claims(exp=str(now + 23 * 3600)), acct.sk)) == 200
    bad_exp = ["1e400", "-1e400", "Infinity", "NaN", str(10**30), str(2**63), str(now + 25 * 3600),
               f"{now + 1800}.5", f"{now + 1800}.0", f'"{now + 1800}"', "true", "null", "[1]", "{}"]
    bad_nbf = ["-1e400", "1e400", "-Infinity", "NaN", "-1", str(-10**30), f"{now - 5}.5", '"0"', "false"]
    bad_iat = ["1e400", "NaN", f"{now}.5", '"now"', "-1"]
    tokens = ([_jwt_raw(hs, claims(exp=e), acct.sk) for e in bad_exp]
              + [_jwt_raw(hs, claims(nbf=n), acct.sk) for n in bad_nbf]
              + [_jwt_raw(hs, claims(extra=f',"iat":{i}'), acct.sk) for i in bad_iat])
    # Unknown critical extensions, and crit values that are not even lists.
    tokens += [_jwt_raw({**hs, "crit": c, "x-policy": 1}, claims(), acct.sk)
               for c in (["x-policy"], ["exp"], ["b64"], [], "x-policy", None, [1])]
    for tok in tokens:
        assert status(tok) == 401, base64.urlsafe_b64decode(tok.split(".")[1] + "==")
    # And a generation call with one of them: 401, nothing recorded.
    r = httpx.post(srv.url + "/v1/llm/completions", headers={"Authorization": f"Bearer {tokens[0]}"},
                   json={"model": MODEL, "prompt": "hi", "max_new_tokens": 1}, timeout=30)
    assert r.status_code == 401 and is_error("sensenova", r)
    assert httpx.get(srv.url + "/health", timeout=10).status_code == 200
    _no_traceback(srv)


# -- 14: 0 means nothing allowed -----------------------------------------------------------------

REFUSED = {"openai": (429,), "welm": (429,), "sensenova": (429,)}


def _call(srv, acct, **kw):
    method, path, params, headers, body = request_for(acct, max_tokens=1, **kw)
    return httpx.request(method, srv.url + path, params=params, headers=headers, json=body, timeout=60)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_zero_means_nothing_allowed(srv, dialect):
    """Each limit at 0 on the account refuses every request; null allows; the refusal is
    recorded once. Qianfan: 336501 (rpm), 336502 (tpm), 18 (qps, concurrency), 17 (quota)."""
    qianfan = {"rpm": 336501, "tpm": 336502, "qps": 18, "max_concurrency": 18, "quota_chars_per_day": 17,
               "quota_tokens_per_day": 17}
    ok = provision(srv, dialect, rpm=None, tpm=None)
    assert not is_error(dialect, _call(srv, ok)), "the control: no limit set, the request is answered"
    for field, qf_code in qianfan.items():
        acct = provision(srv, dialect, **{field: 0})
        for _ in range(2):
            r = _call(srv, acct)
            assert is_error(dialect, r), (field, r.status_code, r.text[:200])
            if dialect == "qianfan":
                assert r.json()["error_code"] == qf_code, (field, r.text)
            else:
                assert r.status_code in REFUSED[dialect], (field, r.status_code, r.text[:200])
        statuses = [rec["status"] for rec in usage_records(srv, acct.account_id)]
        want = "error:quota_exceeded" if field.startswith("quota") else "error:rate_limited"
        assert statuses == [want, want], (field, statuses)


def test_zero_on_credentials_and_services(srv):
    # A tenant may set its own key to 0 (nothing allowed) and back to null (no ceiling here).
    acct = provision(srv, "openai")
    cred_id = srv.platform.credentials.list(acct.account_id)[0].id
    me = _api(srv, acct.key)
    assert _call(srv, acct).status_code == 200
    for field in ("rpm", "tpm", "qps", "max_concurrency"):
        assert me.patch(f"/credentials/{cred_id}", json={field: 0}).json()[field] == 0
        r = _call(srv, acct)
        assert r.status_code == 429 and field.split("_")[-1] in r.json()["error"]["message"], (field, r.text)
        assert me.patch(f"/credentials/{cred_id}", json={field: None}).json()[field] is None
    assert _call(srv, acct).status_code == 200
    # A Qianfan service at rpm 0 / tpm 0, and the limit headers say 0.
    qf = provision(srv, "qianfan")
    svc = srv.platform.services.list(qf.account_id)[0]
    for field, code in (("rpm", 336501), ("tpm", 336502)):
        srv.platform.services.update(svc.id, **{field: 0})
        r = _call(srv, qf)
        assert r.json()["error_code"] == code, r.text
        header = "X-Ratelimit-Limit-Requests" if field == "rpm" else "X-Ratelimit-Limit-Tokens"
        assert r.headers[header] == "0"
        srv.platform.services.update(svc.id, **{field: None})
    assert "error_code" not in _call(srv, qf).json()
    # The admin API documents the meaning of 0 on every limit field.
    spec = httpx.get(srv.url + "/openapi.json", timeout=30).json()["components"]["schemas"]
    for schema in ("Limits", "AccountLimits", "ServiceCreate", "ServiceUpdate"):
        for name, prop in spec[schema]["properties"].items():
            if name in ("rpm", "tpm", "qps", "max_concurrency", "quota_chars_per_day", "quota_tokens_per_day"):
                assert "0: nothing allowed" in prop.get("description", ""), (schema, name)

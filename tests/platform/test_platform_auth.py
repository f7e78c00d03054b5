"""The four auth schemes, checked against the real SDKs' own signers."""

from __future__ import annotations

import datetime as dt
import time

import jwt
import pytest
from sqlalchemy import update

from wharf.errors import AuthError
from wharf.platform.auth import bce_canonical_request, bce_sign, uri_encode
from wharf.platform.models import AccessToken

CHAT_URL = "http://127.0.0.1:8123/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/ngxxol17_1234"


@pytest.fixture
def alice(platform):
    return platform.accounts.create("alice")


def _reason(fn, *a, **kw) -> str:
    with pytest.raises(AuthError) as e:
        fn(*a, **kw)
    return e.value.reason


# -- bearer -------------------------------------------------------------------------

def test_bearer(platform, alice):
    key = platform.credentials.create(alice.id, "api_key").secret
    p = platform.authenticator.bearer(key)
    assert (p.account_id, p.account_name, p.credential_kind, p.is_admin) == (alice.id, "alice", "api_key", False)
    assert platform.authenticator.bearer(f"Bearer {key}").account_id == alice.id
    assert _reason(platform.authenticator.bearer, key + "x") == "invalid"
    assert _reason(platform.authenticator.bearer, "") == "missing"
    # A Qianfan secret is not an API key.
    qf = platform.credentials.create(alice.id, "qianfan_app")
    assert _reason(platform.authenticator.bearer, qf.secret) == "invalid"


# -- Qianfan OAuth ------------------------------------------------------------------

def test_qianfan_oauth(platform, alice):
    auth = platform.authenticator
    app = platform.credentials.create(alice.id, "qianfan_app")
    token, ttl = auth.issue_qianfan_token(app.public_id, app.secret)
    assert ttl >= 30 * 24 * 3600
    assert auth.qianfan_access_token(token).account_id == alice.id
    assert _reason(auth.issue_qianfan_token, "nobody", app.secret) == "unknown_client"
    assert _reason(auth.issue_qianfan_token, app.public_id, "wrong") == "bad_secret"
    assert _reason(auth.qianfan_access_token, token + "x") == "invalid"
    assert _reason(auth.qianfan_access_token, "") == "missing"
    # IAM keys are not OAuth clients.
    iam = platform.credentials.create(alice.id, "qianfan_iam")
    assert _reason(auth.issue_qianfan_token, iam.public_id, iam.secret) == "unknown_client"


def test_qianfan_token_survives_restart_and_expires(platform, alice, db_url, secret_box):
    from wharf.platform.core import Platform
    from wharf.platform.store import Store

    app = platform.credentials.create(alice.id, "qianfan_app")
    token, _ = platform.authenticator.issue_qianfan_token(app.public_id, app.secret)
    other = Platform(Store.open(db_url), secret_box)        # a second replica / a restart
    try:
        assert other.authenticator.qianfan_access_token(token).account_id == alice.id
        with platform.store.write() as s:
            s.execute(update(AccessToken).values(
                expires_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)))
        assert _reason(other.authenticator.qianfan_access_token, token) == "expired"
    finally:
        other.close()


def test_qianfan_token_dies_with_credential_and_account(platform, alice):
    auth = platform.authenticator
    app = platform.credentials.create(alice.id, "qianfan_app")
    token, _ = auth.issue_qianfan_token(app.public_id, app.secret)
    platform.accounts.disable(alice.id)
    assert _reason(auth.qianfan_access_token, token) == "disabled"
    assert _reason(auth.issue_qianfan_token, app.public_id, app.secret) == "disabled"
    platform.accounts.enable(alice.id)
    assert auth.qianfan_access_token(token).account_id == alice.id
    platform.credentials.revoke(app.info.id)
    assert _reason(auth.qianfan_access_token, token) == "revoked"
    assert _reason(auth.issue_qianfan_token, app.public_id, app.secret) == "unknown_client"


# -- BCE v1 (Qianfan IAM) -----------------------------------------------------------

def _sdk_signed_request(ak, sk, url=CHAT_URL, query=None, headers=None):
    """Sign exactly as the qianfan SDK does before it sends an IAM request."""
    from qianfan.resources.requestor.openapi_requestor import QfAPIRequestor
    from qianfan.resources.typing import QfRequest

    req = QfRequest(method="POST", url=url)
    req.query = dict(query or {})
    req.headers = dict(headers or {"Request_id": "req-123"})
    QfAPIRequestor._sign(req, ak, sk)
    return req


def _verify(platform, req, path=None, **kw):
    from urllib.parse import urlparse

    return platform.authenticator.bce_signature(req.method, path or urlparse(req.url).path,
                                                list(req.query.items()), req.headers,
                                                req.headers["Authorization"], **kw)


def test_bce_matches_qianfan_sdk_signer(platform, alice):
    iam = platform.credentials.create(alice.id, "qianfan_iam")
    req = _sdk_signed_request(iam.public_id, iam.secret, query={"extra": "a b/ü"})
    auth = req.headers["Authorization"]
    assert auth.startswith(f"bce-auth-v1/{iam.public_id}/")
    signed = auth.split("/")[4].split(";")
    assert {"host", "x-bce-date", "request_id", "content-type"} <= set(signed)
    assert req.headers["Host"] == "127.0.0.1:8123"                # host is signed with its port
    p = _verify(platform, req)
    assert (p.account_id, p.credential_kind) == (alice.id, "qianfan_iam")
    # Headers arrive in another case and order at the server: still fine.
    req.headers = {k.upper(): v for k, v in reversed(list(req.headers.items()))}
    req.headers["Authorization"] = auth
    assert _verify(platform, req).account_id == alice.id


def test_bce_canonical_request_matches_baidubce(platform, alice):
    """Our canonical request + signature equal baidubce's for odd paths, queries, header sets."""
    from baidubce.auth.bce_credentials import BceCredentials
    from baidubce.auth.bce_v1_signer import sign

    iam = platform.credentials.create(alice.id, "qianfan_iam")
    ts = time.time()
    headers = {"Host": "wharf.example:8443", "Content-Type": "application/json", "Content-Length": "17",
               "x-bce-date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)), "X-Other": "v"}
    query = {"access_token": "a+b=c", "中文": "值 1", "empty": ""}
    path = "/rpc/2.0/ai_custom/v1/wenxinworkshop/completions/svc-1.v2"
    for to_sign in ({b"host", b"content-length", b"x-bce-date"}, None):
        auth = sign(BceCredentials(iam.public_id, iam.secret), b"POST", path.encode(),
                    {k.encode(): v for k, v in headers.items()},
                    {k.encode(): v.encode() for k, v in query.items()},
                    timestamp=ts, expiration_in_seconds=1800, headers_to_sign=to_sign).decode()
        p = platform.authenticator.bce_signature("POST", path, list(query.items()), headers, auth)
        assert p.account_id == alice.id
        # and our own signer reproduces the hex signature bit for bit
        prefix = "/".join(auth.split("/")[:4])
        listed = auth.split("/")[4].split(";") if to_sign else ["host", "content-length", "content-type",
                                                                 "content-md5", "x-bce-date"]
        lower = {k.lower(): v for k, v in headers.items()}
        mine = bce_sign(iam.secret, prefix, bce_canonical_request("POST", path, query.items(), lower, listed))
        assert mine == auth.split("/")[5]


def test_uri_encode():
    assert uri_encode("a b/c~-._", keep_slash=True) == "a%20b/c~-._"
    assert uri_encode("a/b+中") == "a%2Fb%2B%E4%B8%AD"


def _sign_like(ak, sk, *, signed_host, sent_host="127.0.0.1:8123", auth_ts=None, signed_date=None,
               sent_date=None, names=("host", "x-bce-date"), expiration=1800):
    """A request signed the way the Java (host;x-bce-date, 1800 s) and Go (content-type;host;
    x-bce-date, 300 s) SDKs sign: `host` as they sign it, the headers as they send them."""
    now = time.time()
    fmt = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))       # noqa: E731
    auth_ts = auth_ts or fmt(now)
    signed_date = signed_date or auth_ts
    sent = {"Host": sent_host, "Content-Type": "application/json", "X-Bce-Date": sent_date or signed_date}
    values = {"host": signed_host, "content-type": "application/json", "x-bce-date": signed_date}
    prefix = f"bce-auth-v1/{ak}/{auth_ts}/{expiration}"
    path = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/ngxxol17_1234"
    sig = bce_sign(sk, prefix, bce_canonical_request("POST", path, [], values, names))
    return path, {**sent, "Authorization": f"{prefix}/{';'.join(names)}/{sig}"}


def test_bce_host_without_port_and_the_java_date_skew(platform, alice):
    """Java and Go sign the host without its port; Java may send an x-bce-date a second after
    the auth string's. Exactly those are accepted; any other host or date is not."""
    iam = platform.credentials.create(alice.id, "qianfan_iam")

    def verify(path, headers):
        return platform.authenticator.bce_signature("POST", path, [], headers, headers["Authorization"])

    ak, sk = iam.public_id, iam.secret
    go_names = ("content-type", "host", "x-bce-date")
    for names, exp in ((("host", "x-bce-date"), 1800), (go_names, 300)):
        assert verify(*_sign_like(ak, sk, signed_host="127.0.0.1", names=names, expiration=exp)).account_id == alice.id
        assert verify(*_sign_like(ak, sk, signed_host="127.0.0.1:8123", names=names)).account_id == alice.id
    assert verify(*_sign_like(ak, sk, signed_host="wharf.example", sent_host="wharf.example:443")).account_id \
        == alice.id
    assert verify(*_sign_like(ak, sk, signed_host="[::1]", sent_host="[::1]:8123")).account_id == alice.id
    # nothing looser: another host, a host cut short, a port signed that was not sent
    for signed, sent in (("127.0.0.2", "127.0.0.1:8123"), ("127.0.0", "127.0.0.1:8123"),
                         ("127.0.0.1:8124", "127.0.0.1:8123"), ("127.0.0.1:8123", "127.0.0.1"),
                         ("127.0.0.1", "127.0.0.1:8123:9"), ("", "127.0.0.1:8123")):
        assert _reason(verify, *_sign_like(ak, sk, signed_host=signed, sent_host=sent)) == "signature", (signed, sent)
    # Java: the auth string says T, the signed x-bce-date is T and the sent one T+1 (or all equal)
    t = time.time()
    fmt = lambda s: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s))         # noqa: E731
    java = _sign_like(ak, sk, signed_host="127.0.0.1", auth_ts=fmt(t), signed_date=fmt(t), sent_date=fmt(t + 1))
    assert verify(*java).account_id == alice.id
    java = _sign_like(ak, sk, signed_host="127.0.0.1", auth_ts=fmt(t), signed_date=fmt(t + 1), sent_date=fmt(t + 1))
    assert verify(*java).account_id == alice.id
    # but not a signed date two seconds off what was sent, nor one sent before the auth string's
    for signed_d, sent_d in ((fmt(t), fmt(t + 2)), (fmt(t), fmt(t - 1)), (fmt(t + 1), fmt(t))):
        bad = _sign_like(ak, sk, signed_host="127.0.0.1", auth_ts=fmt(t), signed_date=signed_d, sent_date=sent_d)
        assert _reason(verify, *bad) == "signature", (signed_d, sent_d)
    # tampered, wrong key, out of window: refused as ever, port or not
    path, headers = _sign_like(ak, sk, signed_host="127.0.0.1")
    assert _reason(verify, path.replace("ngxxol17_1234", "other"), headers) == "signature"
    assert _reason(verify, *_sign_like(ak, "0" * 32, signed_host="127.0.0.1")) == "signature"
    assert _reason(verify, *_sign_like(ak, sk, signed_host="127.0.0.1", auth_ts=fmt(t - 400),
                                       expiration=300)) == "expired"


def test_bce_failures(platform, alice):
    iam = platform.credentials.create(alice.id, "qianfan_iam")
    req = _sdk_signed_request(iam.public_id, iam.secret)
    auth = req.headers["Authorization"]
    good = _verify(platform, req)
    assert good.account_id == alice.id

    def with_auth(a):
        req.headers["Authorization"] = a
        return req

    sig = auth.split("/")[5]
    tampered = auth[: -len(sig)] + ("0" if sig[0] != "0" else "1") + sig[1:]
    assert _reason(_verify, platform, with_auth(tampered)) == "signature"
    # the body path is part of the signature
    assert _reason(_verify, platform, with_auth(auth), path="/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/other") \
        == "signature"
    # a signed header changed in transit
    req.headers["Request_id"] = "req-999"
    assert _reason(_verify, platform, with_auth(auth)) == "signature"
    # wrong SK
    req2 = _sdk_signed_request(iam.public_id, "0" * 32)
    assert _reason(_verify, platform, req2) == "signature"
    # unknown AK
    req3 = _sdk_signed_request("f" * 32, iam.secret)
    assert _reason(_verify, platform, req3) == "invalid"
    # expired: past the expiration the client signed (the SDK's default is 300 s)
    req4 = _sdk_signed_request(iam.public_id, iam.secret)
    life = int(req4.headers["Authorization"].split("/")[3])
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=life + 10)
    assert _reason(_verify, platform, req4, now=later) == "expired"
    assert _verify(platform, req4, now=later - dt.timedelta(seconds=20)).account_id == alice.id
    earlier = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    assert _reason(_verify, platform, req4, now=earlier) == "expired"     # from the future
    # malformed
    assert _reason(_verify, platform, with_auth("bce-auth-v1/x/y")) == "invalid"
    assert _reason(_verify, platform, with_auth("Bearer abc")) == "invalid"
    # revoked credential and disabled account: next request fails
    req5 = _sdk_signed_request(iam.public_id, iam.secret)
    platform.accounts.disable(alice.id)
    assert _reason(_verify, platform, req5) == "disabled"
    platform.accounts.enable(alice.id)
    platform.credentials.revoke(iam.info.id)
    assert _reason(_verify, platform, req5) == "revoked"


# -- SenseNova JWT ------------------------------------------------------------------

def test_sensenova_sdk_token(platform, alice):
    from sensenova.util import ak_sk_to_header

    sn = platform.credentials.create(alice.id, "sensenova")
    token = ak_sk_to_header(sn.public_id, sn.secret)["Authorization"].removeprefix("Bearer ")
    p = platform.authenticator.sensenova_jwt(token)
    assert (p.account_id, p.credential_kind) == (alice.id, "sensenova")


def test_sensenova_failures(platform, alice):
    auth = platform.authenticator
    sn = platform.credentials.create(alice.id, "sensenova")
    now = int(time.time())

    def tok(claims=None, key=None, alg="HS256", **extra):
        c = {"iss": sn.public_id, "exp": now + 1800, "nbf": now - 5, **(claims or {})}
        return jwt.encode(c, key if key is not None else sn.secret, algorithm=alg, **extra)

    assert auth.sensenova_jwt(tok()).account_id == alice.id
    assert _reason(auth.sensenova_jwt, tok(key="wrong-secret")) == "signature"
    assert _reason(auth.sensenova_jwt, tok({"iss": "NOBODY"})) == "invalid"
    assert _reason(auth.sensenova_jwt, tok({"exp": now - 60})) == "expired"
    assert _reason(auth.sensenova_jwt, tok({"nbf": now + 60})) == "expired"
    assert auth.sensenova_jwt(tok({"nbf": now + 2})).account_id == alice.id     # small clock skew
    assert _reason(auth.sensenova_jwt, tok(alg="HS512")) == "invalid"
    assert _reason(auth.sensenova_jwt, tok(key="", alg="none")) == "invalid"
    unsigned = jwt.encode({"iss": sn.public_id, "exp": now + 100, "nbf": now}, None, algorithm="none")
    assert _reason(auth.sensenova_jwt, unsigned) == "invalid"
    no_exp = jwt.encode({"iss": sn.public_id, "nbf": now}, sn.secret, algorithm="HS256")
    assert _reason(auth.sensenova_jwt, no_exp) == "invalid"
    assert _reason(auth.sensenova_jwt, "not.a.jwt") == "invalid"
    assert _reason(auth.sensenova_jwt, "") == "missing"
    # explicit clock for the tests' own use
    assert _reason(auth.sensenova_jwt, tok(), now=now + 4000) == "expired"
    good = tok()
    platform.accounts.disable(alice.id)
    assert _reason(auth.sensenova_jwt, good) == "disabled"
    platform.accounts.enable(alice.id)
    platform.credentials.revoke(sn.info.id)
    assert _reason(auth.sensenova_jwt, good) == "revoked"

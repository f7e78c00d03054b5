"""Authentication: four schemes, one Principal.

  bearer(token)                        OpenAI / WeLM API keys ("wk-...")
  issue_qianfan_token(id, secret)      Qianfan OAuth client_credentials -> (access_token, expires_in)
  qianfan_access_token(token)          Qianfan ?access_token=
  bce_signature(...)                   Qianfan IAM: BCE auth v1 AK/SK signature
  sensenova_jwt(token)                 SenseNova: HS256 JWT, iss = access key id
  client_token(account, credential, kind)  what a client of one of the account's own
                                       credentials sends (the console's playground)

Every scheme looks the credential and its account up in the store on every
request (one indexed query, no cache), so a revoked credential or a disabled
account fails on the very next request, on every replica.

Qianfan access tokens are random strings whose sha256 is kept in the store
(table access_tokens), not signed/stateless tokens: they survive restarts,
work across replicas, and die with their credential.

AuthError reasons: "missing", "invalid" (unknown key/token/AK, malformed),
"signature" (bad HMAC or JWT signature), "expired" (token, signature or JWT
past its life, or not yet valid), "revoked", "disabled"; and for
issue_qianfan_token "unknown_client" (-> {"error":"invalid_client",
"error_description":"unknown client id"}) and "bad_secret" (-> "Client
authentication failed"; use that answer for every other reason there too).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace

import jwt
from sqlalchemy import bindparam, select

from wharf.errors import AuthError, InvalidParam
from wharf.platform.credentials import Credentials, hash_key
from wharf.platform.models import AccessToken, Account, Credential, utcnow
from wharf.platform.secretbox import SecretBox
from wharf.platform.store import Store

QIANFAN_TOKEN_TTL_S = 30 * 24 * 3600        # what Baidu does
EXPIRED_TOKEN_KEEP_S = 7 * 24 * 3600        # expired tokens answer "expired" (111) this long, then "invalid"
BCE_FUTURE_SKEW_S = 300                     # a signature timestamp may be this far ahead of our clock
JWT_LEEWAY_S = 5                            # the sensenova SDK sets nbf = now - 5, exp = now + 1800
SENSENOVA_JWT_LIFETIME_S = 1800
# The longest a self-signed credential may still be valid: a JWT's exp - now, a BCE
# signature's expiration (Settings.max_token_lifetime_s). Both SDKs use 1800 s.
MAX_TOKEN_LIFETIME_S = 24 * 3600
JWT_TIME_CLAIMS = ("exp", "nbf", "iat")
JWT_MAX_TIME = 2**53                        # NumericDate as an exact integer (year ~285 million)
# BCE v1 fields, ASCII only (int() and strptime() also take other digits, "1_0", " 10 "...).
_BCE_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_BCE_EXPIRATION = re.compile(r"[0-9]{1,12}")
BCE_DEFAULT_SIGNED = ("host", "content-md5", "content-length", "content-type")


@dataclass(frozen=True)
class Principal:
    account_id: int
    account_name: str
    is_admin: bool
    credential_id: int
    credential_kind: str
    # Limits (None = no limit): the account's, then the credential's own.
    account_rpm: int | None = None
    account_tpm: int | None = None
    account_qps: int | None = None
    account_max_concurrency: int | None = None
    quota_chars_per_day: int | None = None
    quota_tokens_per_day: int | None = None
    credential_rpm: int | None = None
    credential_tpm: int | None = None
    credential_qps: int | None = None
    credential_max_concurrency: int | None = None
    # What the credential may reach (wharf/platform/key_scope.py); None: anything.
    allowed_models: tuple[str, ...] | None = None
    allowed_services: tuple[int, ...] | None = None
    # Days the account keeps its prompts and outputs (request_content.py); None: never stored.
    content_retention_days: int | None = None


# Per-request lookups, built once (Core, not the ORM: they run on every request).
_C, _A, _T = Credential.__table__, Account.__table__, AccessToken.__table__
_CRED_AND_ACCOUNT = ([col.label(f"c_{col.name}") for col in _C.c] + [col.label(f"a_{col.name}") for col in _A.c])
_BY_SECRET_HASH = (select(*_CRED_AND_ACCOUNT).join_from(_C, _A, _A.c.id == _C.c.account_id)
                   .where(_C.c.secret_hash == bindparam("v")))
_BY_PUBLIC_ID = (select(*_CRED_AND_ACCOUNT).join_from(_C, _A, _A.c.id == _C.c.account_id)
                 .where(_C.c.public_id == bindparam("v")))
_BY_ACCESS_TOKEN = (select(_T.c.expires_at.label("t_expires_at"), *_CRED_AND_ACCOUNT)
                    .join_from(_T, _C, _C.c.id == _T.c.credential_id).join(_A, _A.c.id == _C.c.account_id)
                    .where(_T.c.token_hash == bindparam("v")))


def _split(row) -> tuple[SimpleNamespace, SimpleNamespace]:
    """A joined row -> (credential, account), each with the model's attribute names."""
    m = row._mapping
    return (SimpleNamespace(**{k[2:]: v for k, v in m.items() if k.startswith("c_")}),
            SimpleNamespace(**{k[2:]: v for k, v in m.items() if k.startswith("a_")}))


def _principal(c, a) -> Principal:
    if c.revoked_at is not None:
        raise AuthError("credential has been revoked", reason="revoked")
    if a.status != "active":
        raise AuthError("account is disabled", reason="disabled")
    if c.expires_at is not None and c.expires_at <= utcnow():    # expired, or a rotation's grace over
        raise AuthError("credential has expired", reason="expired")
    return Principal(account_id=a.id, account_name=a.name, is_admin=a.is_admin, credential_id=c.id,
                     credential_kind=c.kind, account_rpm=a.rpm, account_tpm=a.tpm, account_qps=a.qps,
                     account_max_concurrency=a.max_concurrency, quota_chars_per_day=a.quota_chars_per_day,
                     quota_tokens_per_day=a.quota_tokens_per_day, credential_rpm=c.rpm,
                     credential_tpm=c.tpm, credential_qps=c.qps, credential_max_concurrency=c.max_concurrency,
                     allowed_models=None if c.allowed_models is None else tuple(json.loads(c.allowed_models)),
                     allowed_services=None if c.allowed_services is None else tuple(json.loads(c.allowed_services)),
                     content_retention_days=a.content_retention_days)


# -- BCE v1 helpers (also used by tests and by anyone who wants to sign) -----------

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def uri_encode(value: str, keep_slash: bool = False) -> str:
    """RFC 3986 UriEncode as BCE defines it: every byte but A-Za-z0-9-._~ as %XX."""
    out = []
    for b in value.encode("utf-8"):
        if b in _UNRESERVED or (keep_slash and b == 0x2F):
            out.append(chr(b))
        else:
            out.append("%%%02X" % b)
    return "".join(out)


def bce_canonical_request(method: str, path: str, query_params: Iterable[tuple[str, str]],
                          headers: Mapping[str, str], signed_headers: Iterable[str],
                          *, encode_path: bool = True) -> str:
    lower = {k.strip().lower(): v for k, v in headers.items()}
    uri = uri_encode(path, keep_slash=True) if encode_path else path
    query = "&".join(sorted(f"{uri_encode(k)}={uri_encode(v or '')}" for k, v in query_params
                            if k.lower() != "authorization"))
    lines = []
    for name in signed_headers:
        value = lower.get(name)
        if value is None or not str(value).strip():
            continue                  # the BCE signers skip absent and empty headers
        lines.append(f"{uri_encode(name)}:{uri_encode(str(value).strip())}")
    return "\n".join([method.upper(), uri, query, "\n".join(sorted(lines))])


def bce_sign(sk: str, auth_prefix: str, canonical_request: str) -> str:
    signing_key = hmac.new(sk.encode(), auth_prefix.encode(), hashlib.sha256).hexdigest()
    return hmac.new(signing_key.encode(), canonical_request.encode(), hashlib.sha256).hexdigest()


def _host_without_port(host: str) -> str | None:
    """`127.0.0.1:8080` -> `127.0.0.1`, `[::1]:8080` -> `[::1]`; None when there is no port."""
    name, sep, port = host.rpartition(":")
    if sep and port.isascii() and port.isdigit() and name and (":" not in name or name.endswith("]")):
        return name
    return None


def _signed_value_variants(lower: dict, ts: str, t0: dt.datetime, t1: dt.datetime | None) -> list[dict]:
    """The header values a real client may have signed, as sent first. The Java and Go SDKs
    sign `host` without its port (URI.getHost(), url.Hostname()) while the Host they send
    has it; the Java SDK reads the clock once for the auth string, again for the x-bce-date
    it signs and again for the one it sends, so the signed date may be the auth string's
    when the sent one is a second later. Nothing looser: only those two substitutions."""
    hosts = [lower.get("host")]
    stripped = _host_without_port(str(hosts[0]).strip()) if hosts[0] is not None else None
    if stripped is not None:
        hosts.append(stripped)
    dates = [lower.get("x-bce-date")]
    if t1 is not None and 0 < (t1 - t0).total_seconds() <= 1:
        dates.append(ts)
    out = []
    for host in hosts:
        for date in dates:
            values = dict(lower)
            if host is not None:
                values["host"] = host
            if date is not None:
                values["x-bce-date"] = date
            out.append(values)
    return out


def sign_sensenova_jwt(access_key_id: str, secret: str, now: float | None = None) -> str:
    """A SenseNova JWT as its SDK signs one: HS256, iss = the access key id, valid from 5 s
    ago for SENSENOVA_JWT_LIFETIME_S."""
    t = int(time.time() if now is None else now)
    return jwt.encode({"iss": access_key_id, "exp": t + SENSENOVA_JWT_LIFETIME_S, "nbf": t - JWT_LEEWAY_S},
                      secret, algorithm="HS256")


class Authenticator:
    def __init__(self, store: Store, box: SecretBox, *, credentials: Credentials | None = None,
                 qianfan_token_ttl_s: int = QIANFAN_TOKEN_TTL_S,
                 max_token_lifetime_s: int = MAX_TOKEN_LIFETIME_S):
        self.store = store
        self.box = box
        self.credentials = credentials or Credentials(store, box)
        self.qianfan_token_ttl_s = qianfan_token_ttl_s
        self.max_token_lifetime_s = max_token_lifetime_s

    def _lookup(self, stmt, value: str, kinds: tuple[str, ...]):
        """(credential, account) rows as attribute namespaces, or None."""
        with self.store.read_conn() as conn:
            row = conn.execute(stmt, {"v": value}).first()
        if row is None:
            return None
        c, a = _split(row)
        return (c, a) if c.kind in kinds else None

    def _ok(self, c, a) -> Principal:
        p = _principal(c, a)
        self.credentials.touch(c.id)
        return p

    # -- OpenAI / WeLM ------------------------------------------------------
    def bearer(self, token: str | None) -> Principal:
        """An API key, bare (the HTTP layer strips an optional "Bearer ")."""
        token = (token or "").strip()
        if token[:7].lower() == "bearer ":       # tolerated here too
            token = token[7:].strip()
        if not token:
            raise AuthError("missing API key", reason="missing")
        h = hash_key(token)
        found = self._lookup(_BY_SECRET_HASH, h, ("api_key",))
        # The lookup is by hash, so it leaks nothing about the key; compare anyway.
        if found is None or not hmac.compare_digest(found[0].secret_hash or "", h):
            raise AuthError("invalid API key", reason="invalid")
        return self._ok(*found)

    # -- Qianfan OAuth ------------------------------------------------------
    def issue_qianfan_token(self, client_id: str, client_secret: str) -> tuple[str, int]:
        found = self._lookup(_BY_PUBLIC_ID, client_id, ("qianfan_app",)) if client_id else None
        if found is None or found[0].revoked_at is not None:
            raise AuthError("unknown client id", reason="unknown_client")
        c, a = found
        sk = self.box.decrypt(c.secret_encrypted or "")
        if not hmac.compare_digest(sk.encode(), (client_secret or "").encode("utf-8", "surrogatepass")):
            raise AuthError("Client authentication failed", reason="bad_secret")
        _principal(c, a)                       # disabled account -> AuthError(reason="disabled")
        now = utcnow()
        ttl = self.qianfan_token_ttl_s
        expires = now + dt.timedelta(seconds=ttl)
        token = f"24.{secrets.token_hex(32)}.{ttl}.{int(expires.timestamp())}.wharf"
        # Expired tokens are deleted in the background (token_prune.py), not on this request.
        with self.store.write() as s:
            s.add(AccessToken(token_hash=hash_key(token), credential_id=c.id, created_at=now,
                              expires_at=expires))
        self.credentials.touch(c.id)
        return token, ttl

    def qianfan_access_token(self, token: str | None) -> Principal:
        if not token:
            raise AuthError("missing access token", reason="missing")
        with self.store.read_conn() as conn:
            row = conn.execute(_BY_ACCESS_TOKEN, {"v": hash_key(token)}).first()
        if row is None:
            raise AuthError("Access token invalid or no longer valid", reason="invalid")
        if row.t_expires_at <= utcnow():
            raise AuthError("Access token expired", reason="expired")
        return self._ok(*_split(row))

    # -- Qianfan IAM (BCE auth v1) -----------------------------------------
    def bce_signature(self, method: str, path: str, query_params: Iterable[tuple[str, str]],
                      headers: Mapping[str, str], authorization: str | None,
                      now: dt.datetime | None = None) -> Principal:
        """Verify `Authorization: bce-auth-v1/{ak}/{ts}/{expiration}/{signedHeaders}/{signature}`.

        path: the decoded request path (ASGI scope["path"]); query_params: decoded
        (name, value) pairs in any order; headers: the request headers (any case).

        Every field is checked before the access key is looked up: the timestamp is
        exactly YYYY-MM-DDTHH:MM:SSZ (a real UTC time), the expiration 1 to
        max_token_lifetime_s seconds in ASCII digits, an x-bce-date header (if sent) the
        same format within 300 s of the timestamp; anything else is "invalid" (no
        arithmetic on an unchecked value, so nothing can overflow). Other headers are
        only ever signed, never parsed.
        """
        if not authorization:
            raise AuthError("missing Authorization", reason="missing")
        parts = authorization.strip().split("/")
        if len(parts) != 6 or parts[0] != "bce-auth-v1":
            raise AuthError("malformed bce-auth-v1 authorization", reason="invalid")
        _, ak, ts, exp_s, signed, signature = parts
        if not ak or not _BCE_TIMESTAMP.fullmatch(ts) or not _BCE_EXPIRATION.fullmatch(exp_s):
            raise AuthError("malformed bce-auth-v1 access key, timestamp or expiration", reason="invalid")
        try:
            t0 = dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
        except ValueError:
            raise AuthError("malformed bce-auth-v1 timestamp", reason="invalid") from None
        expiration = int(exp_s)
        if expiration > self.max_token_lifetime_s:
            raise AuthError(f"bce-auth-v1 expiration is longer than {self.max_token_lifetime_s} s",
                            reason="invalid")
        now = now or utcnow()
        # The future check first: t0 is then at most now + skew, and t0 + expiration fits.
        if t0 > now + dt.timedelta(seconds=BCE_FUTURE_SKEW_S):
            raise AuthError("signature timestamp is in the future", reason="expired")
        if expiration <= 0 or now > t0 + dt.timedelta(seconds=expiration):
            raise AuthError("signature expired", reason="expired")
        lower = {k.strip().lower(): v for k, v in headers.items()}
        x_date, t1 = lower.get("x-bce-date"), None
        if x_date is not None:      # the SDKs send the same instant (give or take a second)
            x_date = str(x_date).strip()
            try:
                if not _BCE_TIMESTAMP.fullmatch(x_date):
                    raise ValueError
                t1 = dt.datetime.strptime(x_date, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
            except ValueError:
                raise AuthError("malformed x-bce-date", reason="invalid") from None
            if abs((t1 - t0).total_seconds()) > BCE_FUTURE_SKEW_S:
                raise AuthError("x-bce-date does not match the signature's timestamp", reason="invalid")
        found = self._lookup(_BY_PUBLIC_ID, ak, ("qianfan_iam",))
        if found is None:
            raise AuthError("unknown access key", reason="invalid")
        c, a = found
        sk = self.box.decrypt(c.secret_encrypted or "")

        listed = [h.strip().lower() for h in signed.split(";") if h.strip()]
        header_sets = []
        if listed:
            header_sets.append(listed)
        else:
            header_sets.append(list(BCE_DEFAULT_SIGNED) + [h for h in lower if h.startswith("x-bce-")])
        # The Python BCE signer also signs x-bce-* headers it did not list.
        extra = [h for h in lower if h.startswith("x-bce-") and h not in header_sets[0]]
        if extra:
            header_sets.append(header_sets[0] + extra)
        query = list(query_params)
        prefix = f"bce-auth-v1/{ak}/{ts}/{exp_s}"
        encodings = (True, False) if uri_encode(path, keep_slash=True) != path else (True,)
        ok = False
        for values in _signed_value_variants(lower, ts, t0, t1):
            for hs in header_sets:
                for enc in encodings:
                    expect = bce_sign(sk, prefix, bce_canonical_request(method, path, query, values, hs,
                                                                       encode_path=enc))
                    ok |= hmac.compare_digest(expect.encode(), signature.lower().encode())
        if not ok:
            raise AuthError("signature does not match", reason="signature")
        return self._ok(c, a)

    # -- SenseNova JWT ------------------------------------------------------
    def client_token(self, account_id: int, credential_id, kind: str) -> str:
        """A token made from one of `account_id`'s own active credentials, as its client
        would make it: a Qianfan access token (kind qianfan_app) or a SenseNova JWT
        (sensenova). Not the account's credential: NotFound (Credentials.own_secret)."""
        if kind not in ("qianfan_app", "sensenova"):
            raise InvalidParam("kind must be qianfan_app or sensenova", param="kind")
        public_id, secret = self.credentials.own_secret(account_id, credential_id, kind)
        if kind == "qianfan_app":
            return self.issue_qianfan_token(public_id, secret)[0]
        return sign_sensenova_jwt(public_id, secret)

    def sensenova_jwt(self, token: str | None, now: float | None = None) -> Principal:
        """HS256 only; iss = the access key id; exp and nbf required. Refused ("invalid")
        before any signature work: a `crit` header (RFC 7515 4.1.11: Wharf understands no
        extension, and PyJWT before 2.12 ignores crit), a time claim (exp, nbf, iat) that
        is not an integer in [0, 2^53] (floats, 1e400 = inf, strings, booleans), and exp
        more than max_token_lifetime_s ahead (a token that never expires).
        Then PyJWT verifies the signature, exp and nbf (leeway 5 s), iat and iss."""
        if not token:
            raise AuthError("missing token", reason="missing")
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError, RecursionError):
            raise AuthError("malformed token", reason="invalid") from None
        if header.get("alg") != "HS256":
            raise AuthError("token must be signed with HS256", reason="invalid")
        if "crit" in header:
            raise AuthError("token has a crit header: no JWS extension is supported", reason="invalid")
        iss = claims.get("iss")
        if not isinstance(iss, str) or not iss:
            raise AuthError("token has no iss", reason="invalid")
        clock = time.time() if now is None else now
        for name in JWT_TIME_CLAIMS:
            v = claims.get(name)
            if v is None and name != "iat":
                raise AuthError(f"token has no {name}", reason="invalid")
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= JWT_MAX_TIME):
                raise AuthError(f"token {name} must be an integer number of seconds since 1970",
                                reason="invalid")
        if claims["exp"] - clock > self.max_token_lifetime_s + JWT_LEEWAY_S:
            raise AuthError(f"token expires more than {self.max_token_lifetime_s} s from now", reason="invalid")
        found = self._lookup(_BY_PUBLIC_ID, iss, ("sensenova",))
        if found is None:
            raise AuthError("unknown access key id", reason="invalid")
        c, a = found
        secret = self.box.decrypt(c.secret_encrypted or "")
        options = {"require": ["exp", "nbf", "iss"], "verify_exp": True, "verify_nbf": True,
                   "verify_iat": True, "verify_iss": True}
        try:
            if now is None:
                jwt.decode(token, secret, algorithms=["HS256"], options=options, leeway=JWT_LEEWAY_S,
                           issuer=iss)
            else:   # for tests: check the times against `now` ourselves
                claims = jwt.decode(token, secret, algorithms=["HS256"],
                                    options={**options, "verify_exp": False, "verify_nbf": False})
                if now > float(claims["exp"]) + JWT_LEEWAY_S:
                    raise jwt.ExpiredSignatureError()
                if now < float(claims["nbf"]) - JWT_LEEWAY_S:
                    raise jwt.ImmatureSignatureError()
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired", reason="expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid", reason="expired") from None
        except jwt.InvalidSignatureError:
            raise AuthError("token signature does not match", reason="signature") from None
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError):
            raise AuthError("invalid token", reason="invalid") from None
        return self._ok(c, a)

"""Raw HTTP clients for the four dialects, for the reliability tests: one account per
dialect, credentials of the dialect's own kind, one call shape per dialect."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

import httpx

from tests.conftest import MODEL
from tests.dialect_auth import qianfan_token, sensenova_jwt

QF_PREFIX = "/rpc/2.0/ai_custom/v1/wenxinworkshop"
DIALECTS = ("openai", "qianfan", "welm", "sensenova")


@dataclass
class DialectAccount:
    dialect: str
    account_id: int
    key: str = ""                # api_key (openai / welm)
    ak: str = ""                 # qianfan_app / sensenova public id
    sk: str = ""
    endpoint: str = ""           # qianfan chat service
    access_token: str = ""       # qianfan OAuth token
    secrets: list[str] = field(default_factory=list)


def provision(server, dialect: str, **limits) -> DialectAccount:
    p = server.platform
    tag = uuid.uuid4().hex[:8]
    acct = p.accounts.create(f"rel-{dialect}-{tag}", **limits)
    out = DialectAccount(dialect, acct.id)
    if dialect in ("openai", "welm"):
        out.key = p.credentials.create(acct.id, "api_key", label="rel").secret
        out.secrets = [out.key]
    elif dialect == "qianfan":
        app = p.credentials.create(acct.id, "qianfan_app", label="rel")
        out.ak, out.sk = app.public_id, app.secret
        out.endpoint = p.services.create(acct.id, f"relchat{tag}", MODEL, "chat", "rel").endpoint
        out.access_token = qianfan_token(server.url, out.ak, out.sk)
        out.secrets = [out.sk, out.access_token]
    elif dialect == "sensenova":
        c = p.credentials.create(acct.id, "sensenova", label="rel")
        out.ak, out.sk = c.public_id, c.secret
        out.secrets = [out.sk]
    return out


def request_for(acct: DialectAccount, *, max_tokens: int = 8, stream: bool = False,
                prompt: str = "Say hello") -> tuple[str, str, dict, dict, dict]:
    """(method, path, params, headers, json body) of one generation call."""
    d = acct.dialect
    if d == "openai":
        body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                "stream": stream}
        return "POST", "/v1/chat/completions", {}, {"Authorization": f"Bearer {acct.key}"}, body
    if d == "welm":
        body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens}
        return "POST", "/welm/v1/completions", {}, {"Authorization": acct.key}, body
    if d == "qianfan":
        body = {"messages": [{"role": "user", "content": prompt}], "max_output_tokens": max_tokens,
                "stream": stream}
        return ("POST", f"{QF_PREFIX}/chat/{acct.endpoint}", {"access_token": acct.access_token}, {}, body)
    if d == "sensenova":
        body = {"model": MODEL, "prompt": prompt, "max_new_tokens": max_tokens, "stream": stream}
        return ("POST", "/v1/llm/completions", {},
                {"Authorization": f"Bearer {sensenova_jwt(acct.ak, acct.sk)}"}, body)
    raise ValueError(d)


def raw_request_for(acct: DialectAccount, content: bytes, content_type: str = "application/json",
                    ) -> tuple[str, dict, dict]:
    """(path, params, headers) to send an arbitrary body to the dialect's generation route."""
    method, path, params, headers, _ = request_for(acct)
    return path, params, {**headers, "Content-Type": content_type}


def is_error(dialect: str, resp: httpx.Response) -> bool:
    """Whether a (non-stream) answer is an error in the dialect's own shape."""
    ctype = resp.headers.get("content-type", "")
    if dialect == "qianfan":
        if resp.status_code != 200 or "json" not in ctype:
            return False
        b = resp.json()
        return isinstance(b.get("error_code"), int) and isinstance(b.get("error_msg"), str)
    if resp.status_code < 400:
        return False
    if dialect == "welm" and resp.status_code == 429:
        return ctype.startswith("text/plain")
    if "json" not in ctype:
        return False
    b = resp.json()
    if dialect == "openai":
        return isinstance(b.get("error"), dict) and "message" in b["error"] and "type" in b["error"]
    if dialect == "welm":
        fr = b.get("choices", [{}])[0].get("finish_reason", "")
        return isinstance(fr, str) and fr.startswith("error")
    if dialect == "sensenova":
        return isinstance(b.get("error"), dict) and isinstance(b["error"].get("code"), int)
    return False


def error_code(dialect: str, resp: httpx.Response):
    """A short description of an error answer: HTTP status, or Qianfan's error_code."""
    if dialect == "qianfan":
        try:
            return resp.json().get("error_code")
        except json.JSONDecodeError:
            return None
    return resp.status_code


def usage_records(server, account_id: int) -> list[dict]:
    return server.platform.usage.records(account_id=account_id, limit=1000)

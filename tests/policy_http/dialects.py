"""One small raw-HTTP client per dialect, so a test can say "send this in dialect X" and get
back what that dialect's client would see, classified into one outcome.

Every client sends a completion (or chat) of `prompt` with a small max token count and
greedy decoding, streamed or not, over HTTP to `where`: a live `wharf serve`'s base URL
(real sockets), or an httpx client whose base_url is the server, such as the in-process
app's TestClient (tests/inproc.py). One request builder and one classifier serve both.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from tests.conftest import MODEL
from tests.dialect_auth import client_for, qianfan_token, sensenova_jwt

QF = "/rpc/2.0/ai_custom/v1/wenxinworkshop"

Where = str | httpx.Client     # a live server's base URL, or a client whose base_url is the server


def where_of(server) -> Where:
    """Where to send requests for a LiveServer (its URL) or an InProcessServer (its client)."""
    return server.client if hasattr(server, "client") else server.url


def _base(where: Where) -> str:
    return where if isinstance(where, str) else ""      # a client resolves paths against its base_url


@dataclass
class Reply:
    dialect: str
    status: int
    headers: httpx.Headers
    body: object                      # parsed JSON, text, or the list of stream events
    text: str = ""                    # generated text the client received (all of it)
    finish: str | None = None         # the dialect's own finish reason
    outcome: str = "ok"               # ok | rate_limited | quota | blocked_input | blocked_output | error
    events: list = field(default_factory=list)


@dataclass
class Identity:
    """An account and the credentials every dialect needs."""
    account_id: int
    api_key: str
    qf_ak: str
    qf_sk: str
    qf_completions: str
    qf_chat: str
    sn_ak: str
    sn_sk: str
    qf_token: str | None = None


def provision(server, name: str, **limits) -> Identity:
    p = server.platform
    tag = uuid.uuid4().hex[:8]
    acct = p.accounts.create(f"{name}-{tag}", **limits)
    key = p.credentials.create(acct.id, "api_key", label="policy").secret
    app = p.credentials.create(acct.id, "qianfan_app", label="policy")
    sn = p.credentials.create(acct.id, "sensenova", label="policy")
    comp = p.services.create(acct.id, f"pc{tag}", MODEL, "completions", "policy tests")
    chat = p.services.create(acct.id, f"pchat{tag}", MODEL, "chat", "policy tests")
    return Identity(acct.id, key, app.public_id, app.secret, comp.endpoint, chat.endpoint,
                    sn.public_id, sn.secret)


def qf_token(where: Where, ident: Identity) -> str:
    if ident.qf_token is None:
        ident.qf_token = qianfan_token(where, ident.qf_ak, ident.qf_sk)
    return ident.qf_token


def sn_jwt(ident: Identity) -> str:
    return sensenova_jwt(ident.sn_ak, ident.sn_sk)


# dialect id -> (streams?, chat?)
DIALECTS = {
    "openai": (True, False), "openai-chat": (True, True),
    "qianfan": (True, False), "qianfan-chat": (True, True),
    "welm": (False, False),
    "sensenova": (True, False), "sensenova-chat": (True, True),
}
COMPLETION_DIALECTS = ["openai", "qianfan", "welm", "sensenova"]
ALL_DIALECTS = list(DIALECTS)


def request(dialect: str, where: Where, ident: Identity, prompt: str, max_tokens: int, *, stream: bool = False):
    """(url, kwargs) for httpx's post: the request as that dialect's client sends it."""
    url = _base(where)
    chat = DIALECTS[dialect][1]
    msgs = [{"role": "user", "content": prompt}]
    if dialect.startswith("openai"):
        body = {"model": MODEL, "max_tokens": max_tokens, "temperature": 0, "stream": stream,
                **({"messages": msgs} if chat else {"prompt": prompt})}
        path = "/v1/chat/completions" if chat else "/v1/completions"
        return url + path, {"json": body, "headers": {"Authorization": f"Bearer {ident.api_key}"}}
    if dialect.startswith("qianfan"):
        body = {"max_output_tokens": max_tokens, "top_k": 1, "stream": stream,
                **({"messages": msgs} if chat else {"prompt": prompt})}
        path = f"{QF}/chat/{ident.qf_chat}" if chat else f"{QF}/completions/{ident.qf_completions}"
        return url + path, {"json": body, "params": {"access_token": qf_token(where, ident)}}
    if dialect == "welm":
        body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        return url + "/welm/v1/completions", {"json": body,
                                              "headers": {"Authorization": f"Bearer {ident.api_key}"}}
    if dialect.startswith("sensenova"):
        body = {"model": MODEL, "max_new_tokens": max_tokens, "temperature": 0.01, "top_p": 0.000001,
                "repetition_penalty": 1.0, "stream": stream,
                **({"messages": msgs} if chat else {"prompt": prompt})}
        path = "/v1/llm/chat-completions" if chat else "/v1/llm/completions"
        return url + path, {"json": body, "headers": {"Authorization": f"Bearer {sn_jwt(ident)}"}}
    raise ValueError(dialect)


def _events(raw: str) -> list:
    out = []
    for line in raw.split("\n"):
        if line.startswith("data:"):
            data = line[5:].strip()
            out.append(data if data == "[DONE]" else json.loads(data))
        elif line.strip().startswith("{"):
            out.append(json.loads(line))       # Qianfan's bare-JSON mid-stream error
    return out


def classify(dialect: str, r: httpx.Response, stream: bool) -> Reply:
    ctype = r.headers.get("content-type", "")
    if "event-stream" in ctype:
        body = _events(r.text)
    elif "json" in ctype:
        body = r.json()
    else:
        body = r.text
    rep = Reply(dialect, r.status_code, r.headers, body)
    if dialect.startswith("openai"):
        if r.status_code == 429:
            rep.outcome = "quota" if body["error"]["code"] == "insufficient_quota" else "rate_limited"
        elif r.status_code == 400 and body["error"]["code"] == "content_policy_violation":
            rep.outcome = "blocked_input"
        elif r.status_code != 200:
            rep.outcome = "error"
        else:
            chat = dialect == "openai-chat"
            if isinstance(body, list):
                rep.events = [e for e in body if e != "[DONE]"]
                for e in rep.events:
                    for c in e.get("choices", []):
                        rep.text += (c.get("delta", {}).get("content") or "") if chat else c.get("text", "")
                        rep.finish = c.get("finish_reason") or rep.finish
            else:
                c = body["choices"][0]
                rep.text = c["message"]["content"] if chat else c["text"]
                rep.finish = c["finish_reason"]
            rep.outcome = "blocked_output" if rep.finish == "content_filter" else "ok"
    elif dialect.startswith("qianfan"):
        assert r.status_code == 200, r.text       # Qianfan always answers 200
        if isinstance(body, dict) and "error_code" in body:
            code = body["error_code"]
            rep.finish = str(code)
            rep.outcome = {17: "quota", 18: "rate_limited", 336501: "rate_limited",
                           336502: "rate_limited"}.get(code, "error")
            if code == 336003 and body.get("need_clear_history"):
                rep.outcome = "blocked_input"
        else:
            frames = body if isinstance(body, list) else [body]
            rep.events = frames
            rep.text = "".join(f.get("result", "") for f in frames)
            last = frames[-1]
            rep.finish = last.get("finish_reason")
            if any("error_code" in f for f in frames):
                rep.outcome = "error"
            elif last.get("is_safe") == 0 or rep.finish == "content_filter":
                rep.outcome = "blocked_output"
    elif dialect == "welm":
        if r.status_code == 429:
            rep.outcome = {"quota limit exceed": "quota", "rate limit exceeded": "rate_limited"}.get(body, "error")
        elif r.status_code == 400 and body["choices"][0]["finish_reason"] == "error: content policy violation":
            rep.outcome = "blocked_input"
        elif r.status_code != 200:
            rep.outcome = "error"
        else:
            c = body["choices"][0]
            rep.text, rep.finish = c["text"], c["finish_reason"]
            rep.outcome = "blocked_output" if rep.finish == "error: internal error" else "ok"
    elif dialect.startswith("sensenova"):
        chat = dialect == "sensenova-chat"
        if r.status_code == 429:
            assert body["error"]["code"] == 8, body
            msg = body["error"]["message"].lower()
            rep.outcome = "quota" if "quota" in msg else "rate_limited"
        elif r.status_code != 200:
            rep.outcome = "error"
        else:
            if isinstance(body, list):
                rep.events = [e for e in body if e != "[DONE]"]
                for e in rep.events:
                    for c in e["data"]["choices"]:
                        rep.text += c.get("delta", "")
                        rep.finish = c.get("finish_reason") or rep.finish
            else:
                c = body["data"]["choices"][0]
                rep.text = c["message"] if chat else c["text"]
                rep.finish = c["finish_reason"]
            usage = (rep.events[-1]["data"]["usage"] if rep.events else body["data"]["usage"])
            if rep.finish == "sensitive":
                # A blocked prompt is a 200 with no completion at all (SenseNova has no error for it).
                rep.outcome = "blocked_input" if usage["completion_tokens"] == 0 else "blocked_output"
    return rep


def _with_body(kw: dict, body: dict | None) -> dict:
    if body:
        kw["json"] = {**kw["json"], **body}
    return kw


def call(dialect: str, where: Where, ident: Identity, prompt: str, max_tokens: int = 4, *,
         stream: bool = False, client: httpx.Client | None = None, body: dict | None = None) -> Reply:
    """`body`: fields added to the dialect's JSON body (e.g. ignore_eos)."""
    target, kw = request(dialect, where, ident, prompt, max_tokens, stream=stream)
    kw = _with_body(kw, body)
    if client is not None:
        return classify(dialect, client.post(target, **kw), stream)
    with client_for(where) as c:
        return classify(dialect, c.post(target, **kw), stream)


async def acall(dialect: str, url: str, ident: Identity, prompt: str, max_tokens: int = 4, *,
                stream: bool = False, client: httpx.AsyncClient, body: dict | None = None) -> Reply:
    target, kw = request(dialect, url, ident, prompt, max_tokens, stream=stream)
    return classify(dialect, await client.post(target, **_with_body(kw, body)), stream)


def call_at_once(calls: list[tuple[str, Where, Identity, str, int]], **kw) -> list[Reply]:
    """Every (dialect, where, ident, prompt, max_tokens) sent at the same time (as `call`
    sends it, with kw), replies in order. To live servers: asyncio over real sockets. To an
    in-process client: one thread per call through that client, whose portal runs them
    concurrently on the app's one event loop, as a server's connections are."""
    for c in calls:         # tokens first (Qianfan's OAuth), outside the burst
        if c[0].startswith("qianfan"):
            qf_token(c[1], c[2])
    if all(isinstance(c[1], str) for c in calls):
        async def fire():
            limits = httpx.Limits(max_connections=len(calls) + 10)
            async with httpx.AsyncClient(timeout=300, limits=limits) as client:
                return await asyncio.gather(*(acall(*c, client=client, **kw) for c in calls))
        return asyncio.run(fire())
    assert not any(isinstance(c[1], str) for c in calls), "live and in-process targets in one burst"
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda c: call(*c, **kw), calls))


def metric(where: Where, name: str, **labels) -> float:
    """Sum of a Prometheus series at /metrics whose labels include `labels`."""
    total = 0.0
    with client_for(where) as client:
        page = client.get("/metrics")
    for line in page.text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        head, _, rest = series.partition("{")
        if head != name:
            continue
        got = dict(p.split("=", 1) for p in rest.rstrip("}").split(",") if "=" in p)
        got = {k: v.strip('"') for k, v in got.items()}
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total

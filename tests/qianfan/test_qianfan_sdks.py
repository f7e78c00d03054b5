"""The official Qianfan Java, Go and Node.js SDKs against the live server (seed 004: "支持以下SDK
调用本文API:Python、Go、Java和Node.js SDK"; Python's in test_qianfan_sdk.py), each driven by
its client program in sdk_clients/: OAuth and AK/SK, completions and chat, stream and not,
Chinese text, the errors they must read as errors, a wrong secret, a service by name, an
expired token. WIRE.md says what each SDK needs of the server; sdk_builds.py how they are
built or installed (once, cached)."""

from __future__ import annotations

import datetime as dt
import json
import os

import httpx
import pytest
from sqlalchemy import select, update

from tests.qianfan import sdk_builds
from tests.qianfan.conftest import PREFIX, get_token, make_account
from wharf.platform.models import AccessToken

SDKS = ("java", "go", "node")
CHINESE = "用一句话介绍北京。"


@pytest.fixture(scope="session")
def sdk_commands():
    """Build each SDK once per session (or take it from the cache); None: its reason to skip."""
    out = {}
    for name, build in (("java", sdk_builds.java_command), ("go", sdk_builds.go_command),
                        ("node", sdk_builds.node_command)):
        try:
            out[name] = build()
        except sdk_builds.Unavailable as exc:
            out[name] = str(exc)
    return out


@pytest.fixture(scope="module", params=SDKS)
def sdk(request, server, sdk_commands, tmp_path_factory):
    """One client process per SDK for the module, pointed at the shared server."""
    cmd = sdk_commands[request.param]
    if isinstance(cmd, str):
        pytest.skip(f"Qianfan {request.param} SDK: {cmd}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QIANFAN_")}
    env.update({"QIANFAN_BASE_URL": server.url,
                "QIANFAN_CONSOLE_API_BASE_URL": server.url,      # Java's and Node's name
                "QIANFAN_CONSOLE_BASE_URL": server.url})         # Go's name
    if request.param == "go":
        # Refresh a token on 110/111 and the service list on a miss at once, not at most
        # hourly / every 10 minutes (a real token lives 30 days). Java reads the first as
        # how long to keep a token, so it keeps its default (3590 s).
        env.update({"QIANFAN_ACCESS_TOKEN_REFRESH_MIN_INTERVAL": "0",
                    "QIANFAN_INFER_RESOURCE_REFRESH_MIN_INTERVAL": "0"})
    proc = sdk_builds.SdkProcess(cmd, env, tmp_path_factory.mktemp(f"sdk-{request.param}"))
    proc.name = request.param
    yield proc
    proc.close()


@pytest.fixture(scope="module")
def acct(server):
    return make_account(server)


def _creds(acct, auth: str) -> dict:
    return {"auth": auth, "ak": acct.app_ak if auth == "oauth" else acct.iam_ak,
            "sk": acct.app_sk if auth == "oauth" else acct.iam_sk}


def _short(sdk, kind: str) -> dict:
    """Keep generations short: the Java SDK's completion builder has no max_output_tokens."""
    if kind == "completions" and sdk.name == "java":
        return {"stop": [",", "\n", "。", "."]}
    return {"max_output_tokens": 8}


def _check_chunks(chunks: list[dict], kind: str) -> None:
    assert chunks, "no chunk reached the SDK"
    for i, c in enumerate(chunks):
        assert c["sentence_id"] == i and isinstance(c["result"], str)
        assert c["is_end"] is (i == len(chunks) - 1)
        assert c["object"] == ("chat.completion" if kind == "chat" else "completion")
        assert c["usage"]["prompt_tokens"] > 0
    assert chunks[-1]["usage"]["total_tokens"] == \
        chunks[-1]["usage"]["prompt_tokens"] + chunks[-1]["usage"]["completion_tokens"]


@pytest.mark.parametrize("auth", ["oauth", "iam"])
@pytest.mark.parametrize("kind", ["completions", "chat"])
def test_do_and_stream(sdk, acct, auth, kind):
    endpoint = acct.chat if kind == "chat" else acct.completions
    base = {**_creds(acct, auth), "kind": kind, "endpoint": endpoint, "text": CHINESE, **_short(sdk, kind)}
    r = sdk(**base)
    assert r["ok"], r
    (body,) = r["responses"]
    assert isinstance(body["result"], str) and body["id"].startswith("as-")
    assert body["usage"]["prompt_tokens"] > 5 and body["usage"]["completion_tokens"] >= 1   # the Chinese arrived
    r = sdk(**base, stream=True)
    assert r["ok"], r
    _check_chunks(r["responses"], kind)


def test_event_text_reaches_go(server, sdk, acct):
    """Go drops every SSE line containing `event`; the server escapes a letter of it, so each
    SDK reads the text a plain HTTP client reads (greedy: top_k 1, the same text each time)."""
    body = {"prompt": "event, event, event, event, event, event,", "top_k": 1, "stop": [","]}
    token = get_token(server, acct.app_ak, acct.app_sk)
    with httpx.stream("POST", f"{server.url}{PREFIX}/completions/{acct.completions}",
                      params={"access_token": token}, json={**body, "stream": True}, timeout=60) as resp:
        raw = resp.read().decode()
    assert "ev\\u0065nt" in raw and "event" not in raw          # escaped on the wire
    plain = "".join(json.loads(line[6:])["result"] for line in raw.split("\n\n") if line.startswith("data: "))
    assert "event" in plain
    r = sdk(**_creds(acct, "oauth"), kind="completions", endpoint=acct.completions, text=body["prompt"],
            stream=True, top_k=1, stop=[","])
    assert r["ok"], r
    assert "".join(c["result"] for c in r["responses"]) == plain


@pytest.mark.parametrize("auth", ["oauth", "iam"])
def test_errors_read_as_errors(sdk, acct, auth):
    """HTTP 200 + error_code: 336003 (temperature out of range: Java and Node send 0; Go cannot
    send 0, its field is omitempty, so 1.5), 336005 (no such endpoint). Node throws
    Error(JSON.stringify(reply)) for any reply with an error_code it does not retry."""
    base = {**_creds(acct, auth), "kind": "chat", "text": "你好", "max_output_tokens": 4}
    for stream in (False, True):
        r = sdk(**base, endpoint=acct.chat, temperature=1.5 if sdk.name == "go" else 0.0, stream=stream)
        assert not r["ok"] and _code(r) == 336003 and "temperature" in _msg(r), r
        r = sdk(**base, endpoint="no_such_service", stream=stream)
        assert not r["ok"] and _code(r) == 336005, r


def _code(r: dict) -> int | None:
    return r["error"]["error_code"] if isinstance(r.get("error"), dict) else r.get("code")


def _msg(r: dict) -> str:
    return r["error"]["error_msg"] if isinstance(r.get("error"), dict) else r.get("error", "")


def test_wrong_secret(sdk, acct):
    r = sdk(auth="oauth", ak=acct.app_ak, sk="wrong-secret", kind="chat", endpoint=acct.chat, text="你好")
    assert not r["ok"] and "Client authentication failed" in json.dumps(r, ensure_ascii=False), r
    r = sdk(auth="iam", ak=acct.iam_ak, sk="0" * 32, kind="chat", endpoint=acct.chat, text="你好")
    assert not r["ok"] and _code(r) == 14, r


@pytest.mark.parametrize("kind", ["completions", "chat"])
def test_service_by_name(server, sdk, kind):
    """AK/SK mode: the SDK lists the account's services and calls one by its name (Go: as
    WithModel, exact; Java: as .model(), any case; Node: as chat()'s model argument, any case,
    listing afresh on each call). Node's completions() cannot: before any request it looks the
    model up in its own table of public models (modelInfoMap[model.toUpperCase()].required_keys)
    and a name not there is a TypeError, whatever service/list holds."""
    a = make_account(server)
    svc = next(s for s in server.platform.services.list(a.account_id) if s.kind == kind)
    model = svc.endpoint if sdk.name == "go" else svc.endpoint.upper()
    # CHINESE, not "你好": the model answers 你好 with "；" after "；" and never a stop, and
    # Java's completions cannot cap their tokens (120 s and a killed SDK on a busy machine).
    r = sdk(**_creds(a, "iam"), kind=kind, model=model, text=CHINESE, **_short(sdk, kind))
    if sdk.name == "node" and kind == "completions":
        assert not r["ok"] and r["exception"] == "TypeError" and "'includes'" in r["message"], r
        return
    assert r["ok"], r
    assert isinstance(r["responses"][0]["result"], str)


def test_expired_token(server, sdk):
    """A token past its life answers 111. Go fetches a new one and goes on; Java keeps its
    token for 3590 s and never refreshes, so it reads 111 as an error; so does Node, which
    fetches a token only once its own clock passes expires_in (and 110/111 are not among the
    codes it retries)."""
    a = make_account(server)
    base = {**_creds(a, "oauth"), "kind": "chat", "endpoint": a.chat, "text": "你好", "max_output_tokens": 4}
    assert sdk(**base)["ok"]
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    with server.platform.store.write() as s:
        s.execute(update(AccessToken).where(AccessToken.credential_id == a.app_cred_id).values(expires_at=past))
    r = sdk(**base)
    with server.platform.store.read() as s:
        tokens = s.scalars(select(AccessToken).where(AccessToken.credential_id == a.app_cred_id)).all()
    if sdk.name == "go":
        assert r["ok"], r
        assert len(tokens) == 2
    else:
        assert not r["ok"] and _code(r) == 111, r
        assert len(tokens) == 1

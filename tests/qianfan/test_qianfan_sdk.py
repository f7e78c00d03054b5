"""The real qianfan SDK (0.4.12.3) against a live `wharf serve`: OAuth (QIANFAN_AK/SK) and IAM
(QIANFAN_ACCESS_KEY/SECRET_KEY) modes, .do() and stream=True, auth failures, retries."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
import qianfan
import qianfan.errors as qerr
from sqlalchemy import select, update

from tests.qianfan.conftest import PREFIX, get_token
from wharf.platform.models import AccessToken

ZH_PROMPT = "请用一句话介绍一下北京。"


def _check_body(body: dict, obj: str):
    assert body["id"].startswith("as-")
    assert body["object"] == obj
    assert isinstance(body["created"], int)
    assert isinstance(body["result"], str)
    assert "error_code" not in body
    u = body["usage"]
    assert u["prompt_tokens"] > 0 and 0 < u["completion_tokens"] <= 16
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert body["is_truncated"] in (True, False) and body["need_clear_history"] is False


def _check_stream(chunks: list[dict], obj: str) -> str:
    assert chunks, "no chunks"
    assert [c["sentence_id"] for c in chunks] == list(range(len(chunks)))
    assert [c["is_end"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("as-")
    for c in chunks:
        assert c["object"] == obj and "error_code" not in c and isinstance(c["usage"], dict)
    last = chunks[-1]["usage"]
    assert 0 < last["completion_tokens"] <= 16
    assert last["total_tokens"] == last["prompt_tokens"] + last["completion_tokens"]
    return "".join(c["result"] for c in chunks)


@pytest.mark.parametrize("mode", ["oauth", "iam"])
def test_completion_do_and_stream(server, qf_account, sdk_env, mode):
    a = qf_account
    sdk_env(server, **({"oauth": (a.app_ak, a.app_sk)} if mode == "oauth" else {"iam": (a.iam_ak, a.iam_sk)}))
    comp = qianfan.Completion(endpoint=a.completions)
    resp = comp.do(prompt=ZH_PROMPT, max_output_tokens=16, temperature=0.7, user_id="u-42")
    _check_body(resp["body"], "completion")
    assert resp["body"]["is_safe"] == 1

    chunks = [r["body"] for r in comp.do(prompt=ZH_PROMPT, stream=True, max_output_tokens=16)]
    text = _check_stream(chunks, "completion")
    assert text.strip()

    recs = [r for r in server.platform.usage.records(a.account_id) if r["dialect"] == "qianfan"]
    assert len(recs) == 2 and {r["status"] for r in recs} == {"ok"}
    assert any(r["user"] == "u-42" for r in recs)
    assert recs[-1]["prompt_tokens"] == resp["body"]["usage"]["prompt_tokens"]
    assert recs[-1]["completion_tokens"] == resp["body"]["usage"]["completion_tokens"]


@pytest.mark.parametrize("mode", ["oauth", "iam"])
def test_chat_do_and_stream(server, qf_account, sdk_env, mode):
    a = qf_account
    sdk_env(server, **({"oauth": (a.app_ak, a.app_sk)} if mode == "oauth" else {"iam": (a.iam_ak, a.iam_sk)}))
    chat = qianfan.ChatCompletion(endpoint=a.chat)
    msgs = [{"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好！有什么可以帮你的吗？"},
            {"role": "user", "content": "请介绍一下长城"}]
    resp = chat.do(messages=msgs, max_output_tokens=16, top_p=0.9, top_k=40, penalty_score=1.1)
    _check_body(resp["body"], "chat.completion")
    assert resp["body"]["result"]

    chunks = [r["body"] for r in chat.do(messages=msgs[:1], stream=True, max_output_tokens=16)]
    _check_stream(chunks, "chat.completion")

    recs = server.platform.usage.records(a.account_id)
    assert [r["status"] for r in recs] == ["ok", "ok"]
    assert {r["service_id"] for r in recs} == {server.platform.services.get_by_endpoint(a.chat).id}


def test_iam_call_by_service_name(server, qf_account, sdk_env):
    """IAM mode lists services (POST /wenxinworkshop/service/list) and can call one by name."""
    a = qf_account
    sdk_env(server, iam=(a.iam_ak, a.iam_sk))
    from qianfan.resources.console.service import Service
    listed = Service.list()["result"]["common"]
    by_name = {s["name"]: s for s in listed}
    assert by_name[a.chat]["apiType"] == "chat"
    assert by_name[a.chat]["url"] == f"{server.url}{PREFIX}/chat/{a.chat}"
    assert by_name[a.completions]["apiType"] == "completions"
    resp = qianfan.ChatCompletion(model=a.chat).do(messages=[{"role": "user", "content": "hi"}],
                                                   max_output_tokens=8)
    assert resp["body"]["object"] == "chat.completion"


def test_stop(server, shared_account, sdk_env):
    a = shared_account
    sdk_env(server, oauth=(a.app_ak, a.app_sk))
    comp = qianfan.Completion(endpoint=a.completions)
    kw = dict(prompt="1, 2, 3, 4, 5, 6,", max_output_tokens=12, temperature=0.01, top_k=1)
    free = comp.do(**kw)["body"]["result"]
    assert "," in free, free
    cut = comp.do(stop=[","], **kw)["body"]["result"]
    assert "," not in cut and free.startswith(cut), (free, cut)


@pytest.mark.parametrize("kwargs,field", [
    ({"temperature": 0}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"penalty_score": 2.5}, "penalty_score"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
])
def test_range_violation_via_sdk(server, shared_account, sdk_env, kwargs, field):
    a = shared_account
    sdk_env(server, oauth=(a.app_ak, a.app_sk))
    with pytest.raises(qerr.APIError) as ei:
        qianfan.ChatCompletion(endpoint=a.chat).do(messages=[{"role": "user", "content": "hi"}],
                                                   max_output_tokens=8, retry_count=1, **kwargs)
    assert ei.value.error_code == 336003 and field in ei.value.error_msg


def test_chat_roles_via_sdk(server, shared_account, sdk_env):
    a = shared_account
    sdk_env(server, oauth=(a.app_ak, a.app_sk))
    with pytest.raises(qerr.APIError) as ei:
        qianfan.ChatCompletion(endpoint=a.chat).do(
            messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
            retry_count=1)
    assert ei.value.error_code == 336003 and "messages" in ei.value.error_msg


def test_oauth_bad_ak_and_bad_sk(server, shared_account, sdk_env):
    a = shared_account
    sdk_env(server, oauth=("x" * 24, a.app_sk))
    with pytest.raises(qerr.AuthError, match=r"AK\("):
        qianfan.Completion(endpoint=a.completions).do(prompt="hi", max_output_tokens=8)
    sdk_env(server, oauth=(a.app_ak, "y" * 32))
    with pytest.raises(qerr.AuthError, match=r"SK\("):
        qianfan.Completion(endpoint=a.completions).do(prompt="hi", max_output_tokens=8)


def test_iam_bad_sk_and_unknown_ak(server, shared_account, sdk_env):
    a = shared_account
    for ak, sk in ((a.iam_ak, "0" * 32), ("f" * 32, a.iam_sk)):
        sdk_env(server, iam=(ak, sk))
        with pytest.raises(qerr.APIError) as ei:
            qianfan.Completion(endpoint=a.completions).do(prompt="hi", max_output_tokens=8, retry_count=1)
        assert ei.value.error_code == 14


def test_expired_token_is_refreshed(server, qf_account, sdk_env, monkeypatch):
    """A token past its life answers 111; the SDK fetches a new one and the call succeeds.
    (The SDK refreshes at most once per ACCESS_TOKEN_REFRESH_MIN_INTERVAL, an hour by default;
    a real token lives 30 days, so in real life the interval has long passed.)"""
    a = qf_account
    monkeypatch.setenv("QIANFAN_ACCESS_TOKEN_REFRESH_MIN_INTERVAL", "0")
    sdk_env(server, oauth=(a.app_ak, a.app_sk))
    comp = qianfan.Completion(endpoint=a.completions)
    comp.do(prompt="hi", max_output_tokens=4)
    store = server.platform.store
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    with store.write() as s:
        s.execute(update(AccessToken).where(AccessToken.credential_id == a.app_cred_id).values(expires_at=past))
    old = get_token(server, a.app_ak, a.app_sk)      # a raw token, expired right away too
    with store.write() as s:
        s.execute(update(AccessToken).where(AccessToken.credential_id == a.app_cred_id).values(expires_at=past))
    r = httpx.post(f"{server.url}{PREFIX}/completions/{a.completions}", params={"access_token": old},
                   json={"prompt": "hi"})
    assert r.status_code == 200 and r.json()["error_code"] == 111

    resp = comp.do(prompt="hi", max_output_tokens=4)
    assert resp["body"]["result"] is not None and "error_code" not in resp["body"]
    with store.read() as s:
        rows = s.scalars(select(AccessToken).where(AccessToken.credential_id == a.app_cred_id)).all()
    assert len(rows) == 3          # first SDK token, the raw one, and the SDK's refresh


def test_revoked_credentials_fail_on_next_call(server, qf_account, sdk_env):
    a = qf_account
    sdk_env(server, oauth=(a.app_ak, a.app_sk))
    comp = qianfan.Completion(endpoint=a.completions)
    comp.do(prompt="hi", max_output_tokens=4)
    server.platform.credentials.revoke(a.app_cred_id)
    with pytest.raises((qerr.AccessTokenExpiredError, qerr.AuthError, qerr.APIError)):
        comp.do(prompt="hi", max_output_tokens=4, retry_count=1)

    sdk_env(server, iam=(a.iam_ak, a.iam_sk))
    comp = qianfan.Completion(endpoint=a.completions)
    comp.do(prompt="hi", max_output_tokens=4)
    server.platform.credentials.revoke(a.iam_cred_id)
    with pytest.raises(qerr.APIError) as ei:
        comp.do(prompt="hi", max_output_tokens=4, retry_count=1)
    assert ei.value.error_code == 14


def test_other_accounts_endpoint_and_wrong_path(server, shared_account, qf_account, sdk_env):
    sdk_env(server, oauth=(qf_account.app_ak, qf_account.app_sk))
    with pytest.raises(qerr.APIError) as ei:
        qianfan.Completion(endpoint=shared_account.completions).do(prompt="hi", retry_count=1)
    assert ei.value.error_code == 336004
    with pytest.raises(qerr.APIError) as ei:   # a completions service on the chat path
        qianfan.ChatCompletion(endpoint=qf_account.completions).do(
            messages=[{"role": "user", "content": "hi"}], retry_count=1)
    assert ei.value.error_code == 336005 and "completions" in ei.value.error_msg

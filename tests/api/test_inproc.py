"""The in-process app of tests/inproc.py answers as `wharf serve` does, in every dialect,
with the scripted engine's reply: what the cheaper fixture is trusted with."""

from __future__ import annotations

import json

import pytest

from tests.conftest import MODEL
from tests.dialect_auth import sensenova_jwt
from tests.inproc import REPLY


@pytest.fixture(scope="module")
def key(inproc):
    return inproc.account("inproc")[1]


def test_completion_is_the_script_cut_by_max_tokens(inproc, key):
    h = {"Authorization": f"Bearer {key}"}
    whole = inproc.client.post("/v1/completions", headers=h,
                               json={"model": MODEL, "prompt": "Where is Paris?", "max_tokens": 200})
    assert whole.status_code == 200, whole.text
    choice = whole.json()["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == (REPLY, "stop")
    usage = whole.json()["usage"]
    cut = inproc.client.post("/v1/completions", headers=h,
                             json={"model": MODEL, "prompt": "Where is Paris?", "max_tokens": 3,
                                   "temperature": 1.5}).json()
    assert REPLY.startswith(cut["choices"][0]["text"]) and cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == 3
    assert cut["usage"]["prompt_tokens"] == usage["prompt_tokens"] > 0


def test_chat_stream_in_chinese_joins_to_the_script(inproc, key):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "法国的首都是哪里？"}], "stream": True,
            "n": 2, "stop": ["首都"]}
    with inproc.client.stream("POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                              json=body) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    texts = {0: "", 1: ""}
    for e in events[:-1]:
        for c in json.loads(e)["choices"]:
            texts[c["index"]] += c["delta"].get("content") or ""
    assert texts[0] == texts[1] == REPLY[:REPLY.index("首都")]


def test_other_dialects_in_process(inproc):
    p = inproc.platform
    acct = p.accounts.create("inproc-dialects")
    app = p.credentials.create(acct.id, "qianfan_app", label="t")
    svc = p.services.create(acct.id, "inprocchat", MODEL, "chat", "t")
    token = inproc.client.post("/oauth/2.0/token", params={"grant_type": "client_credentials",
                                                           "client_id": app.public_id,
                                                           "client_secret": app.secret}).json()["access_token"]
    qf = inproc.client.post(f"/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{svc.endpoint}",
                            params={"access_token": token},
                            json={"messages": [{"role": "user", "content": "你好"}]}).json()
    assert qf["result"] == REPLY, qf
    sn = p.credentials.create(acct.id, "sensenova", label="t")
    r = inproc.client.post("/v1/llm/completions", json={"model": MODEL, "prompt": "你好", "max_new_tokens": 4},
                           headers={"Authorization": f"Bearer {sensenova_jwt(sn.public_id, sn.secret)}"})
    assert r.status_code == 200 and REPLY.startswith(r.json()["data"]["choices"][0]["text"]), r.text
    key = p.credentials.create(acct.id, "api_key", label="t").secret
    bad = inproc.client.post("/welm/v1/completions", headers={"Authorization": f"Bearer {key}"},
                             json={"model": MODEL, "prompt": "hi", "max_tokens": 4, "temperature": 7})
    assert bad.status_code == 400 and bad.json()["choices"][0]["finish_reason"].startswith("error"), bad.text

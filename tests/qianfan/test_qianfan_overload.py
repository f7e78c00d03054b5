"""A second live server with a one-slot engine and a one-place queue (so it really overloads)
and a safety lexicon: 336100 retried by the real SDK (seed 004's retry_count /
request_timeout / backoff_factor), input blocked by the lexicon (336003 + ban_round) and
output cut by it (is_safe 0)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
import qianfan
import qianfan.errors as qerr

from tests.qianfan.conftest import PREFIX, get_token, make_account

TERM = "forbiddenword"
OUTPUT_TERM = "four"      # what the model says after "one, two, three,"; never in a prompt here
LONG_PROMPT = ("The history of the city begins in ancient times, when traders from the river valleys "
               "first settled on the hills. Over the following centuries")


@pytest.fixture(scope="module")
def busy_server(server_factory, tmp_path_factory):
    lexicon = tmp_path_factory.mktemp("lexicon") / "terms.txt"
    lexicon.write_text(f"{TERM}\n{OUTPUT_TERM}\n")
    return server_factory(extra_env={"WHARF_MAX_QUEUE": "1", "WHARF_MAX_BATCH_SIZE": "1",
                                     "WHARF_LEXICON_PATH": str(lexicon)})


def _stats(server) -> dict:
    return next(iter(server.engine_stats().values()))


def test_overload_is_retried_until_it_succeeds(busy_server, sdk_env):
    srv = busy_server
    hog = make_account(srv)
    hog_token = get_token(srv, hog.app_ak, hog.app_sk)
    stop = threading.Event()

    def saturate():
        body = json.dumps({"prompt": LONG_PROMPT, "max_output_tokens": 40, "temperature": 1})
        while not stop.is_set():
            try:
                r = httpx.post(f"{srv.url}{PREFIX}/completions/{hog.completions}",
                               params={"access_token": hog_token}, content=body, timeout=120)
                if "error_code" in r.json():
                    time.sleep(0.05)
            except httpx.HTTPError:
                time.sleep(0.05)

    hogs = [threading.Thread(target=saturate, daemon=True) for _ in range(3)]
    for t in hogs:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while not (_stats(srv)["running"] >= 1 and _stats(srv)["waiting"] >= 1):
            assert time.monotonic() < deadline, "could not saturate the engine"
            time.sleep(0.05)

        a = make_account(srv)
        sdk_env(srv, oauth=(a.app_ak, a.app_sk))
        comp = qianfan.Completion(endpoint=a.completions)
        # No retries: the overload reaches the caller as 336100.
        with pytest.raises(qerr.APIError) as ei:
            comp.do(prompt="hi", max_output_tokens=4, retry_count=1)
        assert ei.value.error_code == 336100

        # With retries: the SDK backs off and tries again; the hogs stop after 2 s.
        threading.Timer(2.0, stop.set).start()
        t0 = time.monotonic()
        resp = comp.do(prompt="hi", max_output_tokens=4, retry_count=30, request_timeout=60,
                       backoff_factor=0.2)
        assert "error_code" not in resp["body"] and resp["body"]["usage"]["completion_tokens"] >= 1
        assert time.monotonic() - t0 > 1.0

        statuses = [r["status"] for r in reversed(srv.platform.usage.records(a.account_id))]
        assert statuses[-1] == "ok"
        assert statuses.count("error:overloaded") >= 2     # the no-retry call, then retried ones
    finally:
        stop.set()
        for t in hogs:
            t.join(60)


def test_stream_overload_is_a_json_error(busy_server):
    """Before a stream starts, an overload is a single application/json body, not an event."""
    srv = busy_server
    a = make_account(srv)
    tok = get_token(srv, a.app_ak, a.app_sk)
    url = f"{srv.url}{PREFIX}/completions/{a.completions}"
    body = json.dumps({"prompt": LONG_PROMPT, "max_output_tokens": 30, "stream": True})
    results: list[httpx.Response] = []

    def call():
        results.append(httpx.post(url, params={"access_token": tok}, content=body, timeout=120))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    kinds = sorted(r.headers["content-type"].split(";")[0] for r in results)
    assert "text/event-stream" in kinds and "application/json" in kinds, kinds
    for r in results:
        if r.headers["content-type"].startswith("application/json"):
            assert r.json()["error_code"] == 336100
        else:
            assert r.text.startswith("data: {") and '"is_end":true' in r.text


def test_input_blocked(busy_server):
    srv = busy_server
    a = make_account(srv)
    tok = get_token(srv, a.app_ak, a.app_sk)

    def post(kind, endpoint, body):
        return httpx.post(f"{srv.url}{PREFIX}/{kind}/{endpoint}", params={"access_token": tok},
                          json=body, timeout=60).json()

    r = post("chat", a.chat, {"messages": [{"role": "user", "content": f"tell me about {TERM}"},
                                           {"role": "assistant", "content": "ok"},
                                           {"role": "user", "content": "and now?"}]})
    assert r["error_code"] == 336003 and r["need_clear_history"] is True and r["ban_round"] == 1
    r = post("chat", a.chat, {"messages": [{"role": "user", "content": f"what is {TERM.upper()}?"}]})
    assert r["error_code"] == 336003 and r["ban_round"] == -1
    r = post("completions", a.completions, {"prompt": f"{TERM} again", "stream": True})
    assert r["error_code"] == 336003 and r["need_clear_history"] is True
    statuses = [x["status"] for x in srv.platform.usage.records(a.account_id)]
    assert statuses == ["blocked"] * 3


def test_output_cut(busy_server):
    srv = busy_server
    a = make_account(srv)
    tok = get_token(srv, a.app_ak, a.app_sk)
    url = f"{srv.url}{PREFIX}/completions/{a.completions}"
    body = {"prompt": "Count: one, two, three,", "max_output_tokens": 8, "temperature": 0.01, "top_k": 1}
    r = httpx.post(url, params={"access_token": tok}, json=body, timeout=60).json()
    assert "error_code" not in r, r
    assert r["is_safe"] == 0 and r["finish_reason"] == "content_filter", r
    assert OUTPUT_TERM not in r["result"].lower()
    raw = httpx.post(url, params={"access_token": tok}, json={**body, "stream": True}, timeout=60).text
    chunks = [json.loads(e[6:]) for e in raw.split("\n\n")[:-1]]
    assert chunks[-1]["is_end"] is True and chunks[-1]["is_safe"] == 0
    assert OUTPUT_TERM not in "".join(c["result"] for c in chunks).lower()
    statuses = [x["status"] for x in srv.platform.usage.records(a.account_id)]
    assert statuses == ["blocked", "blocked"]

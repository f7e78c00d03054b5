"""Issue 15, finding 13: a streamed request the engine refuses is refused before its
stream starts, with the dialect's retryable answer (OpenAI and SenseNova 503, Qianfan
336100 as plain JSON), as a non-streamed one is: SDKs retry a 503, not a 200 carrying an
error event. `n` beyond the batch is a 400 before any role frame, too."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.conftest import MODEL
from tests.reliability.rel_clients import QF_PREFIX, provision, sensenova_jwt, usage_records

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_server(server_factory):
    return server_factory(extra_env={"WHARF_MAX_QUEUE": "1", "WHARF_MAX_BATCH_SIZE": "1"})


def _hold_the_engine(server, stop: threading.Event) -> list[threading.Thread]:
    """One request running (the only slot) and one waiting (the only queue place)."""
    hog = provision(server, "openai")

    def hold():
        while not stop.is_set():
            try:
                httpx.post(server.url + "/v1/completions", headers={"Authorization": f"Bearer {hog.key}"},
                           json={"model": MODEL, "prompt": "Once", "max_tokens": 100, "ignore_eos": True},
                           timeout=120)
            except httpx.HTTPError:
                pass
    threads = [threading.Thread(target=hold, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while True:
        s = server.engine_stats()[MODEL]
        if s["running"] >= 1 and s["waiting"] >= 1:
            return threads
        assert time.monotonic() < deadline, "could not fill the engine"
        time.sleep(0.05)


def _streams(server):
    """(dialect, account, method, url, kwargs) of one streamed call per streaming dialect."""
    oa, qf, sn = provision(server, "openai"), provision(server, "qianfan"), provision(server, "sensenova")
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "你好"}], "max_tokens": 4, "stream": True}
    yield "openai", oa, server.url + "/v1/chat/completions", dict(
        headers={"Authorization": f"Bearer {oa.key}"}, json=chat)
    yield "openai", oa, server.url + "/v1/completions", dict(
        headers={"Authorization": f"Bearer {oa.key}"},
        json={"model": MODEL, "prompt": "Hi", "max_tokens": 4, "stream": True})
    yield "qianfan", qf, f"{server.url}{QF_PREFIX}/chat/{qf.endpoint}", dict(
        params={"access_token": qf.access_token},
        json={"messages": [{"role": "user", "content": "你好"}], "stream": True, "max_output_tokens": 4})
    yield "sensenova", sn, server.url + "/v1/llm/completions", dict(
        headers={"Authorization": f"Bearer {sensenova_jwt(sn.ak, sn.sk)}"},
        json={"model": MODEL, "prompt": "你好", "max_new_tokens": 4, "stream": True})


def test_streams_refused_as_overloaded_before_the_stream_starts(full_server):
    stop = threading.Event()
    threads = _hold_the_engine(full_server, stop)
    try:
        for dialect, acct, url, kw in _streams(full_server):
            r = httpx.post(url, timeout=60, **kw)
            ctype = r.headers.get("content-type", "")
            assert "event-stream" not in ctype and "json" in ctype, (dialect, url, r.status_code, ctype, r.text[:200])
            if dialect == "qianfan":
                assert r.status_code == 200 and r.json()["error_code"] == 336100, r.text[:200]
            else:
                assert r.status_code == 503, (dialect, url, r.status_code, r.text[:200])
            statuses = [rec["status"] for rec in usage_records(full_server, acct.account_id)]
            assert statuses and statuses[0] == "error:overloaded", statuses
    finally:
        stop.set()
        for t in threads:
            t.join(120)


def test_n_beyond_the_batch_is_a_400_before_any_frame(full_server):
    acct = provision(full_server, "openai")
    r = httpx.post(full_server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {acct.key}"},
                   timeout=60, json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 2,
                                     "max_tokens": 2, "stream": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n", r.text[:300]
    assert [rec["status"] for rec in usage_records(full_server, acct.account_id)] == ["error:invalid_param"]


@pytest.mark.parametrize("stream", [False, True])
def test_client_that_leaves_while_queued_is_dropped_from_the_queue(full_server, stream):
    """Finding 4, while queued: the only slot is busy, a request waits in the queue and its
    client hangs up. It leaves the queue at once, recorded `cancelled` with nothing
    generated, rather than being prefilled for nobody when the slot frees."""
    hog, waiter = provision(full_server, "openai"), provision(full_server, "openai")
    done = threading.Event()

    def hold():
        httpx.post(full_server.url + "/v1/completions", headers={"Authorization": f"Bearer {hog.key}"},
                   json={"model": MODEL, "prompt": "Once", "max_tokens": 300, "ignore_eos": True}, timeout=120)
        done.set()
    threading.Thread(target=hold, daemon=True).start()
    try:
        _leave_while_queued(full_server, waiter, done, stream)
    finally:
        done.wait(120)            # the hog's slot is free again for the next test


def _leave_while_queued(full_server, waiter, done: threading.Event, stream: bool) -> None:
    deadline = time.monotonic() + 30
    while full_server.engine_stats()[MODEL]["running"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(full_server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {waiter.key}"},
                   json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                         "stream": stream}, timeout=0.7)
    deadline = time.monotonic() + 5
    while not usage_records(full_server, waiter.account_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    recs = usage_records(full_server, waiter.account_id)
    assert not done.is_set(), "the hog finished first: the test proves nothing"
    assert [(r["status"], r["completion_tokens"]) for r in recs] == [("cancelled", 0)], recs
    # The scheduler drops it from the queue at its next step (the hog's steps go on).
    while full_server.engine_stats()[MODEL]["waiting"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert full_server.engine_stats()[MODEL]["waiting"] == 0
    assert not done.is_set()

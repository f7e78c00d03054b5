"""Issue 15, finding 1: one tenant's request never fails another tenant's requests.

A victim account streams long answers (OpenAI and Qianfan) on the shared server while
an attacker, from all four dialects, sends the numbers that once became 0 in float32
and made the sampler fail the whole batch: temperatures and top_p of 1e-300 / 1e-38 /
5e-324 and repetition penalties of 1e-300 / 1e-40. Each attack must get a clean answer in
its own dialect (greedy output, or a 4xx naming the field), never a 5xx or Qianfan
336000, and every victim stream must run to its full length, recorded `ok`.
"""

from __future__ import annotations

import json
import threading
import time

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
    usage_records,
)

pytestmark = pytest.mark.slow
VICTIM_TOKENS = 40

# Per dialect: the fields it lets through (its own ranges) that a tiny value can poison.
POISONS = {
    "openai": [("temperature", 1e-300), ("temperature", 5e-324), ("top_p", 1e-300),
               ("repetition_penalty", 1e-300), ("repetition_penalty", 1e-40)],
    "qianfan": [("temperature", 1e-300), ("temperature", 1e-38), ("top_p", 1e-300)],
    "welm": [("temperature", 1e-300), ("temperature", 1e-38), ("top_p", 5e-324)],
    "sensenova": [("temperature", 1e-300), ("temperature", 1e-38), ("repetition_penalty", 1e-300),
                  ("top_p", 1e-300)],
}


def _victim_stream(server, acct, out: list) -> None:
    """One streamed answer; appends (finish_reason, completion tokens, error text)."""
    if acct.dialect == "openai":
        path, params, headers = "/v1/chat/completions", {}, {"Authorization": f"Bearer {acct.key}"}
        body = {"model": MODEL, "messages": [{"role": "user", "content": "请写一首关于大海的长诗。"}],
                "max_tokens": VICTIM_TOKENS, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}, "temperature": 0.8}
    else:   # Qianfan: no ignore_eos, so a story long enough to outlast the attacks
        path, params, headers = f"{QF_PREFIX}/chat/{acct.endpoint}", {"access_token": acct.access_token}, {}
        body = {"messages": [{"role": "user", "content": "Tell me a very long story about the sea."}],
                "max_output_tokens": VICTIM_TOKENS, "stream": True}
    finish, tokens, error = None, 0, None
    try:
        with httpx.stream("POST", server.url + path, params=params, headers=headers, json=body,
                          timeout=180) as r:
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event or "error_code" in event:
                    error = line
                elif acct.dialect == "openai":
                    if event.get("usage"):
                        tokens = event["usage"]["completion_tokens"]
                    for c in event.get("choices", []):
                        finish = c.get("finish_reason") or finish
                else:
                    if event.get("is_end"):
                        finish, tokens = "end", event["usage"]["completion_tokens"]
    except httpx.HTTPError as exc:
        error = repr(exc)
    out.append((acct.dialect, finish, tokens, error))


def _attack(server, acct, field: str, value: float) -> httpx.Response:
    method, path, params, headers, body = request_for(acct, max_tokens=4)
    body = {**body, field: value}
    return httpx.request(method, server.url + path, params=params, headers=headers,
                         content=json.dumps(body), timeout=120)


def test_poisoned_sampling_values_fail_nobody_else(server):
    victims = {d: provision(server, d) for d in ("openai", "qianfan")}
    attackers = {d: provision(server, d) for d in DIALECTS}
    results: list = []
    threads = [threading.Thread(target=_victim_stream, args=(server, victims[d], results))
               for d in ("openai", "openai", "openai", "qianfan")]
    for t in threads:
        t.start()
    time.sleep(1.0)                       # the victims are mid-answer when the attacks land

    answers = []
    for d in DIALECTS:
        for field, value in POISONS[d]:
            r = _attack(server, attackers[d], field, value)
            answers.append((d, field, value, r.status_code, error_code(d, r), is_error(d, r), r.text[:200]))
    for t in threads:
        t.join(180)

    for d, field, value, status, code, err, text in answers:
        assert status < 500 and code != 336000, (d, field, value, status, text)
        if err:   # refused: by name, in the dialect's own 4xx shape (Qianfan: 336003)
            assert field in text or code in (400, 336003), (d, field, value, text)
    assert len(results) == 4
    for dialect, finish, tokens, error in results:
        assert error is None, (dialect, error)
        assert finish in ("length", "end") and 0 < tokens <= VICTIM_TOKENS, (dialect, finish, tokens)
        if dialect == "openai":
            assert tokens == VICTIM_TOKENS
    for acct in victims.values():
        statuses = [r["status"] for r in usage_records(server, acct.account_id)]
        assert statuses and set(statuses) == {"ok"}, statuses
    for acct in attackers.values():
        statuses = {r["status"] for r in usage_records(server, acct.account_id)}
        assert "error:internal" not in statuses, statuses
    assert "engine step failed" not in server.log()


def test_a_request_holding_every_slot_yields_one_to_a_bystander(server):
    """Finding 7: `n` = the whole batch (32) once held every slot until it finished, so
    another account's 5-token request waited ~48 s. Now the wide request gives a slot
    back (preemption, recomputed later) and still completes every choice in full."""
    hog, bystander = provision(server, "openai"), provision(server, "openai")
    wide_tokens = 24
    slots = server.engine_stats()[MODEL]["max_batch_size"]
    out: dict = {}

    def wide():
        r = httpx.post(server.url + "/v1/completions", headers={"Authorization": f"Bearer {hog.key}"}, timeout=300,
                       json={"model": MODEL, "prompt": "Once upon a time", "n": slots, "max_tokens": wide_tokens,
                             "ignore_eos": True, "temperature": 0.9})
        out["wide"], out["wide_done"] = r, time.monotonic()
    t = threading.Thread(target=wide)
    t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:     # until the wide request holds the batch
        stats = server.engine_stats()[MODEL]
        if stats["running"] >= slots:
            break
        time.sleep(0.05)
    method, path, params, headers, body = request_for(bystander, max_tokens=5, prompt="你好")
    r = httpx.request(method, server.url + path, params=params, headers=headers, json=body, timeout=120)
    short_done = time.monotonic()
    t.join(300)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 5, r.text[:300]
    assert short_done < out["wide_done"], "the bystander waited for the whole wide request"
    wide_answer = out["wide"].json()
    assert out["wide"].status_code == 200, wide_answer
    assert wide_answer["usage"]["completion_tokens"] == slots * wide_tokens
    assert all(c["finish_reason"] == "length" for c in wide_answer["choices"])


SECRET_SYSTEM = ("You are the help desk of Example Bank. The vault PIN is 4921. Never tell anyone the "
                 "PIN. 客服守则：礼貌、简洁、不要透露任何内部信息。") * 3


def _chat(server, key: str, system: str, question: str) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                      json={"model": MODEL, "max_tokens": 2, "temperature": 0,
                            "messages": [{"role": "system", "content": system},
                                         {"role": "user", "content": question}]})


def test_prefix_cache_is_no_oracle_across_accounts(server):
    """Finding 6: another account guessed a PIN in a victim's system prompt from the
    shared prefix cache's hit counter. Cached prefixes are now per account: the victim's
    own repeat hits, a stranger with the very same prefix does not."""
    victim = provision(server, "openai")

    def hits() -> int:
        return server.engine_stats()[MODEL]["prefix_cache_hits"]
    assert _chat(server, victim.key, SECRET_SYSTEM, "What are your hours?").status_code == 200
    before = hits()
    for guess in ("What are your hours?", "Is the PIN 4921?"):    # each from a fresh account
        assert _chat(server, provision(server, "openai").key, SECRET_SYSTEM, guess).status_code == 200
    assert hits() == before, "a stranger's prompt reused the victim's cached prefix"
    assert _chat(server, victim.key, SECRET_SYSTEM, "Where is the branch?").status_code == 200
    assert hits() == before + 1, "the victim's own repeat should reuse its prefix"


def test_engine_traffic_is_for_admins_only(server):
    acct = provision(server, "openai")
    anonymous = httpx.get(server.url + "/engine/stats", timeout=10)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"]
    tenant = httpx.get(server.url + "/engine/stats", timeout=10, headers={"Authorization": f"Bearer {acct.key}"})
    assert tenant.status_code == 200
    facts = tenant.json()[MODEL]
    assert facts["context_length"] > 0 and facts["backend"]
    leaks = {"waiting", "running", "generated_tokens", "tokens_per_second", "prefix_cache_hits",
             "prefix_cache_tokens", "upstreams"} & set(facts)
    assert not leaks, leaks
    admin = server.engine_stats()[MODEL]
    assert {"running", "waiting", "prefix_cache_hits"} <= set(admin)
    # Probes and scrapers need no key.
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    assert httpx.get(server.url + "/metrics", timeout=10).status_code == 200

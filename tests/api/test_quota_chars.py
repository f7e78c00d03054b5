"""A daily quota counted in characters is never overspent, even though one token can be
many characters: reservations grow atomically as an answer outgrows its estimate."""

from __future__ import annotations

import concurrent.futures

import httpx

from tests.conftest import MODEL

PROMPT = "Write a long paragraph about the history of European printing presses:"


def welm(server, key, max_tokens):
    return httpx.post(server.url + "/welm/v1/completions", headers={"Authorization": key}, timeout=120,
                      json={"model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0})


def test_one_answer_is_cut_at_the_character_quota(server):
    acct, key = server.account("chars-one", quota_chars_per_day=60)
    # 40 tokens reserve 40 characters up front; English runs ~4 characters a token, so
    # the answer outgrows the estimate and must stop at the quota, not past it.
    r = welm(server, key, 40)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert len(choice["text"]) == 60 and choice["finish_reason"] == "length"
    status = server.platform.quota.status(acct.id)
    assert status.chars_used == 60 and status.chars_reserved == 0
    assert welm(server, key, 8).text == "quota limit exceed"


def test_concurrent_answers_never_overspend_characters(server):
    acct, key = server.account("chars-many", quota_chars_per_day=150)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: welm(server, key, 24), range(6)))
    served = [r.json()["choices"][0]["text"] for r in responses if r.status_code == 200]
    assert served and all(r.status_code in (200, 429) for r in responses)
    status = server.platform.quota.status(acct.id)
    assert status.chars_used == sum(len(t) for t in served) <= 150
    assert status.chars_reserved == 0

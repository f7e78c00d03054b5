"""Issue 7 over real HTTP: every policy, in every dialect, through the one pipeline.

Each test provisions its own account on a live `wharf serve` (the shared SQLite server, or one
more server whose lexicon is set through the admin API), sends real requests in the dialect's
own wire format (raw HTTP, as the dialect's clients send it) and checks three things: what
the client sees (that dialect's words, codes and headers), the usage records (exactly one per
request, with the right status) and the /metrics counters.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from tests.policy_http.dialects import COMPLETION_DIALECTS, DIALECTS, acall, call, metric, provision, request

PROMPT = "The capital of France is Paris. The capital of Germany is"
ALL = list(DIALECTS)
STREAMING = [d for d, (streams, _) in DIALECTS.items() if streams]


def usage_rows(server, account_id: int) -> list[dict]:
    return server.platform.usage.records(account_id, limit=1000)


def assert_usage(server, account_id: int, dialect: str, statuses: list[str]) -> None:
    rows = usage_rows(server, account_id)
    assert len({r["request_id"] for r in rows}) == len(rows)
    assert sorted(r["status"] for r in rows) == sorted(statuses), rows
    family = dialect.split("-")[0]
    assert {r["dialect"] for r in rows} <= {family}


def wait_usage(server, account_id: int, n: int, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = usage_rows(server, account_id)
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


# -- rate limits -------------------------------------------------------------------------------

@pytest.mark.parametrize("dialect", ALL)
def test_rpm_third_request_refused(server, dialect):
    ident = provision(server, "rpm", rpm=2)
    before = metric(server.url, "wharf_rate_limited_total", reason="rpm")
    replies = [call(dialect, server.url, ident, PROMPT, 2) for _ in range(3)]
    assert [r.outcome for r in replies] == ["ok", "ok", "rate_limited"], [r.body for r in replies]
    last = replies[-1]
    if dialect.startswith("openai"):
        assert last.status == 429 and last.body["error"]["code"] == "rate_limit_exceeded"
        assert int(last.headers["retry-after"]) >= 1
    elif dialect.startswith("qianfan"):
        assert last.body["error_code"] == 336501
        for r in replies:
            assert r.headers["x-ratelimit-limit-requests"] == "2"
    elif dialect == "welm":
        assert last.status == 429 and last.body == "rate limit exceeded"
    else:
        assert last.status == 429 and last.body["error"] == {"code": 8, "message": last.body["error"]["message"],
                                                              "details": []}
    assert metric(server.url, "wharf_rate_limited_total", reason="rpm") == before + 1
    assert_usage(server, ident.account_id, dialect, ["ok", "ok", "error:rate_limited"])


@pytest.mark.parametrize("dialect", ALL)
def test_tpm_refuses_what_does_not_fit(server, dialect):
    ident = provision(server, "tpm", tpm=40)
    first = call(dialect, server.url, ident, PROMPT, 2)
    second = call(dialect, server.url, ident, PROMPT, 40)     # worst case > what is left
    assert (first.outcome, second.outcome) == ("ok", "rate_limited"), second.body
    if dialect.startswith("qianfan"):
        assert second.body["error_code"] == 336502
        assert second.headers["x-ratelimit-limit-tokens"] == "40"
    assert_usage(server, ident.account_id, dialect, ["ok", "error:rate_limited"])


@pytest.mark.parametrize("dialect", ALL)
def test_concurrency_slot_shared_across_dialects(server, dialect):
    """max_concurrency=1: an OpenAI stream holds the account's one slot, so a request in any
    dialect is refused until that stream ends (the client hangs up)."""
    ident = provision(server, "conc", max_concurrency=1)
    target, kw = request("openai", server.url, ident, "Count to one hundred:", 200, stream=True)
    kw["json"]["ignore_eos"] = True
    with httpx.Client(timeout=120) as c:
        with c.stream("POST", target, **kw) as held:
            assert held.status_code == 200
            lines = held.iter_lines()       # keep the iterator: dropping it hangs up
            next(lines)
            refused = call(dialect, server.url, ident, PROMPT, 2)
        assert refused.outcome == "rate_limited", refused.body
        if dialect.startswith("qianfan"):
            assert refused.body["error_code"] == 18
        wait_usage(server, ident.account_id, 2)       # the held stream settles as cancelled
        deadline = time.monotonic() + 10
        while (again := call(dialect, server.url, ident, PROMPT, 2)).outcome != "ok":
            assert time.monotonic() < deadline, again.body
            time.sleep(0.2)
    rows = usage_rows(server, ident.account_id)
    statuses = sorted(r["status"] for r in rows)
    assert statuses.count("cancelled") == 1 and statuses.count("ok") == 1
    assert all(s in ("ok", "cancelled", "error:rate_limited") for s in statuses)


@pytest.mark.parametrize("dialect", ALL)
def test_qps_burst(server, dialect):
    ident = provision(server, "qps", qps=1)
    call(dialect, server.url, ident, "warm up", 1)          # e.g. Qianfan's OAuth token, outside the burst

    async def burst():
        async with httpx.AsyncClient(timeout=120) as c:
            return await asyncio.gather(*(acall(dialect, server.url, ident, PROMPT, 2, client=c)
                                          for _ in range(4)))
    time.sleep(1.1)
    outcomes = [r.outcome for r in asyncio.run(burst())]
    assert outcomes.count("rate_limited") >= 2 and set(outcomes) <= {"ok", "rate_limited"}, outcomes
    rows = usage_rows(server, ident.account_id)
    assert len(rows) == 5


# -- quota -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dialect", ALL)
@pytest.mark.parametrize("unit", ["chars", "tokens"])
def test_quota_exhausted(server, dialect, unit):
    limits = {"quota_chars_per_day": 3} if unit == "chars" else {"quota_tokens_per_day": 5}
    ident = provision(server, "quota", **limits)
    before = metric(server.url, "wharf_quota_rejections_total")
    r = call(dialect, server.url, ident, PROMPT, 4)
    assert r.outcome == "quota", r.body
    if dialect.startswith("openai"):
        assert r.status == 429 and r.body["error"]["code"] == "insufficient_quota"
        assert r.body["error"]["type"] == "insufficient_quota"
    elif dialect.startswith("qianfan"):
        assert r.body["error_code"] == 17
    elif dialect == "welm":
        assert r.status == 429 and r.body == "quota limit exceed"
    else:
        assert r.status == 429 and r.body["error"]["code"] == 8
    assert metric(server.url, "wharf_quota_rejections_total") == before + 1
    assert_usage(server, ident.account_id, dialect, ["error:quota_exceeded"])
    q = server.platform.quota.status(ident.account_id)
    assert q.chars_reserved == q.tokens_reserved == 0 and q.tokens_used == 0


def test_quota_50_concurrent_fit_10_sqlite(server):
    """50 concurrent requests against a token quota that fits exactly 10 (worst case = actual,
    thanks to ignore_eos): exactly 10 are served and the total never passes the quota."""
    _check_quota_concurrency(server, [server])


def _check_quota_concurrency(server, replicas, n=50, fits=10, max_tokens=4):
    probe = provision(server, "probe")
    r = httpx.post(server.url + "/v1/completions", headers={"Authorization": f"Bearer {probe.api_key}"},
                   json={"model": "smollm2-135m-instruct", "prompt": PROMPT, "max_tokens": 1}, timeout=120)
    per_request = r.json()["usage"]["prompt_tokens"] + max_tokens
    limit = fits * per_request
    ident = provision(server, "quota50", quota_tokens_per_day=limit)

    async def one(i, c):
        url = replicas[i % len(replicas)].url
        target, kw = request("openai", url, ident, PROMPT, max_tokens)
        kw["json"]["ignore_eos"] = True
        return (await c.post(target, **kw)).status_code

    async def fire():
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=n + 10)) as c:
            return await asyncio.gather(*(one(i, c) for i in range(n)))
    codes = asyncio.run(fire())
    assert sorted(set(codes)) <= [200, 429], codes
    ok = codes.count(200)
    q = server.platform.quota.status(ident.account_id)
    assert ok == fits, codes
    assert q.tokens_used == ok * per_request <= limit
    assert q.tokens_reserved == 0 and q.chars_reserved == 0
    rows = usage_rows(server, ident.account_id)
    assert len(rows) == n and len({x["request_id"] for x in rows}) == n
    assert sorted(x["status"] for x in rows) == sorted(["ok"] * fits + ["error:quota_exceeded"] * (n - fits))
    assert sum(x["prompt_tokens"] + x["completion_tokens"] for x in rows) == q.tokens_used
    return ok, q.tokens_used, limit


# -- content safety ----------------------------------------------------------------------------

def _greedy_text(server, key: str, chat: bool) -> str:
    body = {"model": "smollm2-135m-instruct", "max_tokens": 16, "temperature": 0}
    if chat:
        body["messages"] = [{"role": "user", "content": PROMPT}]
    else:
        body["prompt"] = PROMPT
    r = httpx.post(server.url + ("/v1/chat/completions" if chat else "/v1/completions"),
                   headers={"Authorization": f"Bearer {key}"}, json=body, timeout=120)
    c = r.json()["choices"][0]
    return c["message"]["content"] if chat else c["text"]


@pytest.fixture(scope="module")
def lexicon_server(server, server_factory):
    """A second server whose lexicon is set at run time through the admin API: a word the model
    writes greedily for PROMPT (as a completion and as a chat), and one the prompt tests use."""
    probe = provision(server, "lexprobe")
    full = {chat: _greedy_text(server, probe.api_key, chat) for chat in (False, True)}
    words = []
    for text in full.values():
        words.append(next(w for w in re.findall(r"[A-Za-z]{4,}", text)
                          if w.casefold() not in PROMPT.casefold()))
    s = server_factory()
    assert s.admin_key
    admin = {"Authorization": f"Bearer {s.admin_key}"}
    terms = ["forbiddenthing", "敏感词", *words]
    r = httpx.put(s.url + "/admin/api/safety/lexicon", headers=admin, json={"terms": terms}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["terms"] == list(dict.fromkeys(terms))
    # Persisted where the server reads it on its next start (no WHARF_LEXICON_PATH: data_dir).
    assert (s.data_dir / "lexicon.txt").read_text(encoding="utf-8").splitlines()[1:] == r.json()["terms"]
    # Admin only.
    _, user_key = s.account("not-admin")
    assert httpx.get(s.url + "/admin/api/safety/lexicon", headers={"Authorization": f"Bearer {user_key}"},
                     timeout=30).status_code == 403
    return s, full, terms


@pytest.mark.parametrize("dialect", ALL)
@pytest.mark.parametrize("prompt", ["tell me about forbiddenthing", "这是敏感词吗"])
def test_input_blocked(lexicon_server, dialect, prompt):
    s, _, _ = lexicon_server
    ident = provision(s, "inblock")
    before = metric(s.url, "wharf_content_blocked_total", stage="input")
    r = call(dialect, s.url, ident, prompt, 4)
    assert r.outcome == "blocked_input", r.body
    if dialect.startswith("openai"):
        assert r.status == 400 and r.body["error"]["code"] == "content_policy_violation"
    elif dialect.startswith("qianfan"):
        assert r.body["error_code"] == 336003 and r.body["need_clear_history"] is True
    elif dialect == "welm":
        assert r.status == 400 and r.body["choices"][0]["finish_reason"] == "error: content policy violation"
    else:
        assert r.status == 200 and r.finish == "sensitive" and r.text == ""
    assert metric(s.url, "wharf_content_blocked_total", stage="input") == before + 1
    assert_usage(s, ident.account_id, dialect, ["blocked"])


OUTPUT_CASES = [(d, st) for d in ALL for st in ((False, True) if DIALECTS[d][0] else (False,))]


@pytest.mark.parametrize("dialect,stream", OUTPUT_CASES,
                         ids=[f"{d}-{'stream' if st else 'json'}" for d, st in OUTPUT_CASES])
def test_output_cut_before_the_word(lexicon_server, dialect, stream):
    s, full, terms = lexicon_server
    ident = provision(s, "outblock")
    chat = DIALECTS[dialect][1]
    reference = full[chat]
    folded = reference.casefold()
    cut = min(folded.index(t.casefold()) for t in terms if t.casefold() in folded)
    before = metric(s.url, "wharf_content_blocked_total", stage="output")
    r = call(dialect, s.url, ident, PROMPT, 16, stream=stream)
    assert r.outcome == "blocked_output", (r.body, reference)
    expected_finish = {"openai": "content_filter", "qianfan": "content_filter", "welm": "error: internal error",
                       "sensenova": "sensitive"}[dialect.split("-")[0]]
    assert r.finish == expected_finish
    if dialect.startswith("qianfan"):
        assert r.events[-1]["is_safe"] == 0
    # Nothing of the word reached the client: what arrived is the reference text before the word.
    assert reference.startswith(r.text) and len(r.text) <= cut, (r.text, reference, cut)
    for t in terms:
        assert t.casefold() not in r.text.casefold()
    if stream:
        seen = "".join(str(e) for e in r.events)
        for t in terms:
            assert t not in seen
    assert metric(s.url, "wharf_content_blocked_total", stage="output") == before + 1
    assert_usage(s, ident.account_id, dialect, ["blocked"])


def test_lexicon_replaced_at_run_time(lexicon_server):
    """PUT takes effect on the next request; GET shows it; the metric is per server."""
    s, _, terms = lexicon_server
    admin = {"Authorization": f"Bearer {s.admin_key}"}
    ident = provision(s, "lexswap")
    try:
        r = httpx.put(s.url + "/admin/api/safety/lexicon", headers=admin, json={"terms": ["zebra"]}, timeout=30)
        assert r.json()["count"] == 1
        assert call("openai", s.url, ident, "tell me about forbiddenthing", 2).outcome == "ok"
        assert call("welm", s.url, ident, "a zebra", 2).outcome == "blocked_input"
    finally:
        httpx.put(s.url + "/admin/api/safety/lexicon", headers=admin, json={"terms": terms}, timeout=30)
    assert httpx.get(s.url + "/admin/api/safety/lexicon", headers=admin, timeout=30).json()["terms"] == terms


# -- usage: exactly once, also for a client that hangs up mid-stream ---------------------------

@pytest.mark.parametrize("dialect", STREAMING)
def test_disconnect_mid_stream_recorded_once(server, dialect):
    ident = provision(server, "hangup")
    before = metric(server.url, "wharf_requests_total", dialect=dialect.split("-")[0], status="cancelled")
    prompt = ("Count from 1 to 500, separated by commas." if DIALECTS[dialect][1]
              else "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,")       # greedy keeps counting
    target, kw = request(dialect, server.url, ident, prompt, 300, stream=True)
    with httpx.Client(timeout=120) as c:
        with c.stream("POST", target, **kw) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = 0
            for line in lines:
                if line.startswith("data:"):
                    got += 1
                if got >= 2:
                    break
    rows = wait_usage(server, ident.account_id, 1)
    time.sleep(0.5)
    rows = usage_rows(server, ident.account_id)
    assert len(rows) == 1, rows
    assert rows[0]["status"] == "cancelled" and rows[0]["completion_tokens"] < 300, rows
    assert metric(server.url, "wharf_requests_total", dialect=dialect.split("-")[0],
                  status="cancelled") == before + 1


@pytest.mark.parametrize("dialect", ALL)
def test_ok_requests_recorded_once_and_counted(server, dialect):
    ident = provision(server, "once")
    family = dialect.split("-")[0]
    before = metric(server.url, "wharf_requests_total", dialect=family, status="ok")
    outs = [call(dialect, server.url, ident, PROMPT, 3, stream=st) for st in
            ((False, True) if DIALECTS[dialect][0] else (False, False))]
    assert [o.outcome for o in outs] == ["ok", "ok"]
    assert_usage(server, ident.account_id, dialect, ["ok", "ok"])
    rows = usage_rows(server, ident.account_id)
    assert all(r["completion_tokens"] > 0 and r["generated_chars"] > 0 for r in rows)
    assert metric(server.url, "wharf_requests_total", dialect=family, status="ok") == before + 2
    assert metric(server.url, "wharf_tokens_total", direction="out", dialect=family) > 0


# -- platform defaults ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def defaults_server(server_factory):
    return server_factory(extra_env={"WHARF_DEFAULT_RPM": "2", "WHARF_DEFAULT_QUOTA_TOKENS_PER_DAY": "100000"})


@pytest.mark.parametrize("dialect", COMPLETION_DIALECTS)
def test_platform_default_rpm_applies_to_accounts_without_limits(defaults_server, dialect):
    s = defaults_server
    plain = provision(s, "defaults")
    outs = [call(dialect, s.url, plain, PROMPT, 1).outcome for _ in range(3)]
    assert outs == ["ok", "ok", "rate_limited"]
    own = provision(s, "own", rpm=10)                   # an account's own limit wins
    assert [call(dialect, s.url, own, PROMPT, 1).outcome for _ in range(3)] == ["ok"] * 3
    if dialect == "qianfan":
        r = call(dialect, s.url, plain, PROMPT, 1)
        assert r.headers["x-ratelimit-limit-requests"] == "2"
    q = httpx.get(s.url + "/admin/api/quota", params={"account_id": plain.account_id},
                  headers={"Authorization": f"Bearer {s.admin_key}"}, timeout=30).json()
    assert q["tokens_limit"] == 100000 and q["tokens_used"] > 0

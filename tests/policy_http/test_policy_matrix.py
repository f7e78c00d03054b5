"""Issue 7 over HTTP: every policy, in every dialect, through the one pipeline.

Each test provisions its own account on the app `wharf serve` runs, here in process
(tests/inproc.py: create_app with every dialect, the pipeline and the platform on a fresh
SQLite store, over the real engine whose runner answers every prompt with the script's
REPLY): these are platform and dialect checks, none needs the real model. Requests go in
the dialect's own wire format (raw HTTP through starlette's TestClient, as the dialect's
clients send it) and each test checks three things: what the client sees (that dialect's
words, codes and headers), the usage records (exactly one per request, with the right
status) and the /metrics counters. The same checks across two real replicas, over real
sockets, are tests/policy_http/test_policy_replicas.py.
"""

from __future__ import annotations

import gc
import time

import pytest

from tests.conftest import MODEL
from tests.inproc import REPLY, in_process_server, tokenizer_of_the_embedded_model
from tests.policy_http.dialects import (
    COMPLETION_DIALECTS,
    DIALECTS,
    call,
    call_at_once,
    metric,
    provision,
    request,
    where_of,
)

PROMPT = "The capital of France is Paris. The capital of Germany is"
ALL = list(DIALECTS)
STREAMING = [d for d, (streams, _) in DIALECTS.items() if streams]
# The disconnect test's script: longer than the 300 tokens it asks for, so a server that
# did not stop for the hang-up would record them all.
COUNTING = ", ".join(str(i) for i in range(13, 150))


@pytest.fixture(scope="module")
def tokenizer(model_cache_dir):
    return tokenizer_of_the_embedded_model(model_cache_dir)


@pytest.fixture(scope="module")
def srv(model_cache_dir):
    """The app in process with default settings and its own SQLite store."""
    with in_process_server(model_cache_dir, MODEL) as s:
        yield s


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
def test_rpm_third_request_refused(srv, dialect):
    ident = provision(srv, "rpm", rpm=2)
    before = metric(srv.client, "wharf_rate_limited_total", reason="rpm")
    replies = [call(dialect, srv.client, ident, PROMPT, 2) for _ in range(3)]
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
    assert metric(srv.client, "wharf_rate_limited_total", reason="rpm") == before + 1
    assert_usage(srv, ident.account_id, dialect, ["ok", "ok", "error:rate_limited"])


@pytest.mark.parametrize("dialect", ALL)
def test_tpm_refuses_what_does_not_fit(srv, dialect):
    ident = provision(srv, "tpm", tpm=40)
    first = call(dialect, srv.client, ident, PROMPT, 2)
    second = call(dialect, srv.client, ident, PROMPT, 40)     # worst case > what is left
    assert (first.outcome, second.outcome) == ("ok", "rate_limited"), second.body
    if dialect.startswith("qianfan"):
        assert second.body["error_code"] == 336502
        assert second.headers["x-ratelimit-limit-tokens"] == "40"
    assert_usage(srv, ident.account_id, dialect, ["ok", "error:rate_limited"])


@pytest.mark.parametrize("dialect", ALL)
def test_concurrency_slot_shared_across_dialects(srv, dialect):
    """max_concurrency=1: an OpenAI stream holds the account's one slot, so a request in any
    dialect is refused until that stream ends (the client hangs up)."""
    ident = provision(srv, "conc", max_concurrency=1)
    target, kw = request("openai", srv.client, ident, "Count to one hundred:", 200, stream=True)
    kw["json"]["ignore_eos"] = True
    with srv.client.stream("POST", target, **kw) as held:
        assert held.status_code == 200
        lines = held.iter_lines()       # keep the iterator: dropping it hangs up
        next(lines)
        refused = call(dialect, srv.client, ident, PROMPT, 2)
    assert refused.outcome == "rate_limited", refused.body
    if dialect.startswith("qianfan"):
        assert refused.body["error_code"] == 18
    wait_usage(srv, ident.account_id, 2)       # the held stream settles as cancelled
    deadline = time.monotonic() + 10
    while (again := call(dialect, srv.client, ident, PROMPT, 2)).outcome != "ok":
        assert time.monotonic() < deadline, again.body
        time.sleep(0.2)
    rows = usage_rows(srv, ident.account_id)
    statuses = sorted(r["status"] for r in rows)
    assert statuses.count("cancelled") == 1 and statuses.count("ok") == 1
    assert all(s in ("ok", "cancelled", "error:rate_limited") for s in statuses)


@pytest.mark.parametrize("dialect", ALL)
def test_qps_burst(srv, dialect):
    ident = provision(srv, "qps", qps=1)
    call(dialect, srv.client, ident, "warm up", 1)          # e.g. Qianfan's OAuth token, outside the burst
    time.sleep(1.1)
    outcomes = [r.outcome for r in call_at_once([(dialect, srv.client, ident, PROMPT, 2)] * 4)]
    assert outcomes.count("rate_limited") >= 2 and set(outcomes) <= {"ok", "rate_limited"}, outcomes
    rows = usage_rows(srv, ident.account_id)
    assert len(rows) == 5


# -- quota -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dialect", ALL)
@pytest.mark.parametrize("unit", ["chars", "tokens"])
def test_quota_exhausted(srv, dialect, unit):
    limits = {"quota_chars_per_day": 3} if unit == "chars" else {"quota_tokens_per_day": 5}
    ident = provision(srv, "quota", **limits)
    before = metric(srv.client, "wharf_quota_rejections_total")
    r = call(dialect, srv.client, ident, PROMPT, 4)
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
    assert metric(srv.client, "wharf_quota_rejections_total") == before + 1
    assert_usage(srv, ident.account_id, dialect, ["error:quota_exceeded"])
    q = srv.platform.quota.status(ident.account_id)
    assert q.chars_reserved == q.tokens_reserved == 0 and q.tokens_used == 0


def test_quota_50_concurrent_fit_10_sqlite(srv):
    """50 concurrent requests against a token quota that fits exactly 10 (worst case = actual,
    thanks to ignore_eos): exactly 10 are served and the total never passes the quota."""
    _check_quota_concurrency(srv, [srv])


def _check_quota_concurrency(server, replicas, n=50, fits=10, max_tokens=4):
    """`server`, `replicas`: LiveServers or InProcessServers; requests go round the replicas."""
    probe = provision(server, "probe")
    r = call("openai", where_of(server), probe, PROMPT, 1)
    assert r.outcome == "ok", r.body
    per_request = r.body["usage"]["prompt_tokens"] + max_tokens
    limit = fits * per_request
    ident = provision(server, "quota50", quota_tokens_per_day=limit)
    replies = call_at_once([("openai", where_of(replicas[i % len(replicas)]), ident, PROMPT, max_tokens)
                            for i in range(n)], body={"ignore_eos": True})
    codes = [x.status for x in replies]
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

# A word of the script's reply that PROMPT does not contain, within the 16 tokens the output
# tests ask for: the output is cut before it ("Paris is the capital of France. " arrives).
WORD = "巴黎"


@pytest.fixture(scope="module")
def lexicon_server(model_cache_dir, tokenizer):
    """A second app whose lexicon is set at run time through the admin API: WORD, which the
    script writes for PROMPT (as a completion and as a chat), and two the prompt tests use."""
    first_16 = tokenizer.decode(tokenizer(REPLY, add_special_tokens=False)["input_ids"][:16])
    assert WORD in first_16 and WORD not in PROMPT, first_16
    with in_process_server(model_cache_dir, MODEL) as s:
        _, admin_key = s.account("ops", is_admin=True)
        admin = {"Authorization": f"Bearer {admin_key}"}
        terms = ["forbiddenthing", "敏感词", WORD]
        r = s.client.put("/admin/api/safety/lexicon", headers=admin, json={"terms": terms})
        assert r.status_code == 200, r.text
        assert r.json()["terms"] == list(dict.fromkeys(terms))
        # Persisted where the server reads it on its next start (no WHARF_LEXICON_PATH: data_dir).
        assert (s.data_dir / "lexicon.txt").read_text(encoding="utf-8").splitlines()[1:] == r.json()["terms"]
        # Admin only.
        _, user_key = s.account("not-admin")
        assert s.client.get("/admin/api/safety/lexicon",
                            headers={"Authorization": f"Bearer {user_key}"}).status_code == 403
        yield s, admin, terms


@pytest.mark.parametrize("dialect", ALL)
@pytest.mark.parametrize("prompt", ["tell me about forbiddenthing", "这是敏感词吗"])
def test_input_blocked(lexicon_server, dialect, prompt):
    s, _, _ = lexicon_server
    ident = provision(s, "inblock")
    before = metric(s.client, "wharf_content_blocked_total", stage="input")
    r = call(dialect, s.client, ident, prompt, 4)
    assert r.outcome == "blocked_input", r.body
    if dialect.startswith("openai"):
        assert r.status == 400 and r.body["error"]["code"] == "content_policy_violation"
    elif dialect.startswith("qianfan"):
        assert r.body["error_code"] == 336003 and r.body["need_clear_history"] is True
    elif dialect == "welm":
        assert r.status == 400 and r.body["choices"][0]["finish_reason"] == "error: content policy violation"
    else:
        assert r.status == 200 and r.finish == "sensitive" and r.text == ""
    assert metric(s.client, "wharf_content_blocked_total", stage="input") == before + 1
    assert_usage(s, ident.account_id, dialect, ["blocked"])


OUTPUT_CASES = [(d, st) for d in ALL for st in ((False, True) if DIALECTS[d][0] else (False,))]


@pytest.mark.parametrize("dialect,stream", OUTPUT_CASES,
                         ids=[f"{d}-{'stream' if st else 'json'}" for d, st in OUTPUT_CASES])
def test_output_cut_before_the_word(lexicon_server, dialect, stream):
    s, _, terms = lexicon_server
    ident = provision(s, "outblock")
    reference = REPLY                   # what the script writes, as a completion and as a chat
    folded = reference.casefold()
    cut = min(folded.index(t.casefold()) for t in terms if t.casefold() in folded)
    before = metric(s.client, "wharf_content_blocked_total", stage="output")
    r = call(dialect, s.client, ident, PROMPT, 16, stream=stream)
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
    assert metric(s.client, "wharf_content_blocked_total", stage="output") == before + 1
    assert_usage(s, ident.account_id, dialect, ["blocked"])


def test_lexicon_replaced_at_run_time(lexicon_server):
    """PUT takes effect on the next request; GET shows it; the metric is per server."""
    s, admin, terms = lexicon_server
    ident = provision(s, "lexswap")
    try:
        r = s.client.put("/admin/api/safety/lexicon", headers=admin, json={"terms": ["zebra"]})
        assert r.json()["count"] == 1
        assert call("openai", s.client, ident, "tell me about forbiddenthing", 2).outcome == "ok"
        assert call("welm", s.client, ident, "a zebra", 2).outcome == "blocked_input"
    finally:
        s.client.put("/admin/api/safety/lexicon", headers=admin, json={"terms": terms})
    assert s.client.get("/admin/api/safety/lexicon", headers=admin).json()["terms"] == terms


# -- usage: exactly once, also for a client that hangs up mid-stream ---------------------------

@pytest.fixture(scope="module")
def counting_server(model_cache_dir, tokenizer):
    """An app whose script counts on for longer than the 300 tokens the hang-up test asks for."""
    assert len(tokenizer(COUNTING, add_special_tokens=False)["input_ids"]) > 300
    with in_process_server(model_cache_dir, MODEL, reply=COUNTING) as s:
        yield s


@pytest.mark.parametrize("dialect", STREAMING)
def test_disconnect_mid_stream_recorded_once(counting_server, dialect):
    s = counting_server
    ident = provision(s, "hangup")
    before = metric(s.client, "wharf_requests_total", dialect=dialect.split("-")[0], status="cancelled")
    prompt = ("Count from 1 to 500, separated by commas." if DIALECTS[dialect][1]
              else "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,")       # the script keeps counting
    target, kw = request(dialect, s.client, ident, prompt, 300, stream=True)
    # Without the garbage collector: the response must end the run itself. The client
    # leaves while the app waits to send a chunk, so the body generators are suspended
    # at a `yield`, and once only the collector closed them (the record came late, or
    # not within 20 s, and the engine generated on for no one).
    gc.disable()
    try:
        with s.client.stream("POST", target, **kw) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = 0
            for line in lines:
                if line.startswith("data:"):
                    got += 1
                if got >= 2:
                    break
        rows = usage_rows(s, ident.account_id)     # written before the app's task ended
    finally:
        gc.enable()
    assert len(rows) == 1, rows
    time.sleep(0.3)
    assert usage_rows(s, ident.account_id) == rows       # and only once
    assert rows[0]["status"] == "cancelled" and rows[0]["completion_tokens"] < 300, rows
    assert metric(s.client, "wharf_requests_total", dialect=dialect.split("-")[0],
                  status="cancelled") == before + 1


@pytest.mark.parametrize("dialect", ALL)
def test_ok_requests_recorded_once_and_counted(srv, dialect):
    ident = provision(srv, "once")
    family = dialect.split("-")[0]
    before = metric(srv.client, "wharf_requests_total", dialect=family, status="ok")
    outs = [call(dialect, srv.client, ident, PROMPT, 3, stream=st) for st in
            ((False, True) if DIALECTS[dialect][0] else (False, False))]
    assert [o.outcome for o in outs] == ["ok", "ok"]
    assert_usage(srv, ident.account_id, dialect, ["ok", "ok"])
    rows = usage_rows(srv, ident.account_id)
    assert all(r["completion_tokens"] > 0 and r["generated_chars"] > 0 for r in rows)
    assert metric(srv.client, "wharf_requests_total", dialect=family, status="ok") == before + 2
    assert metric(srv.client, "wharf_tokens_total", direction="out", dialect=family) > 0


# -- platform defaults ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def defaults_server(model_cache_dir):
    env = {"WHARF_DEFAULT_RPM": "2", "WHARF_DEFAULT_QUOTA_TOKENS_PER_DAY": "100000"}
    with in_process_server(model_cache_dir, MODEL, env=env) as s:
        yield s


@pytest.mark.parametrize("dialect", COMPLETION_DIALECTS)
def test_platform_default_rpm_applies_to_accounts_without_limits(defaults_server, dialect):
    s = defaults_server
    plain = provision(s, "defaults")
    outs = [call(dialect, s.client, plain, PROMPT, 1).outcome for _ in range(3)]
    assert outs == ["ok", "ok", "rate_limited"]
    own = provision(s, "own", rpm=10)                   # an account's own limit wins
    assert [call(dialect, s.client, own, PROMPT, 1).outcome for _ in range(3)] == ["ok"] * 3
    if dialect == "qianfan":
        r = call(dialect, s.client, plain, PROMPT, 1)
        assert r.headers["x-ratelimit-limit-requests"] == "2"
    _, admin_key = s.account(f"ops-{dialect}", is_admin=True)
    q = s.client.get("/admin/api/quota", params={"account_id": plain.account_id},
                     headers={"Authorization": f"Bearer {admin_key}"}).json()
    assert q["tokens_limit"] == 100000 and q["tokens_used"] > 0

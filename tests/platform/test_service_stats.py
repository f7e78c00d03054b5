"""Call statistics per service and day over a real `wharf serve` on SQLite and PostgreSQL:
counts, tokens, errors by kind, latency / TTFT p50 and p95 from the usage records, a real
Qianfan call among them, isolation between accounts and bad input."""

from __future__ import annotations

import datetime as dt
import uuid

import httpx

from tests.policy_http.dialects import call, provision

PATH = "/admin/api/stats/services"


def _stats(srv, key, **params) -> httpx.Response:
    return httpx.get(srv.url + PATH, params=params, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _record(p, account_id, service_id, at, status="ok", latency=None, ttft=None, tokens=(0, 0)):
    p.usage.record_usage(request_id=f"st-{uuid.uuid4().hex[:16]}", account_id=account_id, model="m",
                         dialect="qianfan", service_id=service_id, status=status, latency_ms=latency,
                         ttft_ms=ttft, prompt_tokens=tokens[0], completion_tokens=tokens[1], created_at=at)


def test_per_service_and_day(srv):
    p = srv.platform
    ident = provision(srv, "st")
    comp = p.services.get_by_endpoint(ident.qf_completions)
    chat = p.services.get_by_endpoint(ident.qf_chat)
    day1 = dt.datetime(2026, 3, 10, 4, tzinfo=dt.timezone.utc)     # noon in Asia/Shanghai
    day2 = day1 + dt.timedelta(days=1)
    for i in range(1, 21):      # 20 answered: latency 10..200, ttft 1..20
        _record(p, ident.account_id, comp.id, day1, latency=10 * i, ttft=i, tokens=(3, 2))
    _record(p, ident.account_id, comp.id, day1, status="error:timeout", latency=99999, ttft=99999)
    _record(p, ident.account_id, comp.id, day1, status="error:timeout")
    _record(p, ident.account_id, comp.id, day1, status="error:rate_limited")
    _record(p, ident.account_id, comp.id, day1, status="blocked")
    _record(p, ident.account_id, chat.id, day2, latency=50, ttft=5, tokens=(7, 1))
    _record(p, ident.account_id, None, day2, latency=1)                # no service: not counted
    r = _stats(srv, ident.api_key, since="2026-03-10", until="2026-03-11")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["account_id"] == ident.account_id
    rows = [(x["day"], x["service_id"]) for x in body["rows"]]
    assert rows == [("2026-03-11", chat.id), ("2026-03-10", comp.id)]       # newest day first
    c = body["rows"][1]
    assert c["endpoint"] == comp.endpoint and c["requests"] == 24 and c["ok"] == 20 and c["blocked"] == 1
    assert c["errors"] == {"rate_limited": 1, "timeout": 2} and c["cancelled"] == 0
    assert (c["prompt_tokens"], c["completion_tokens"]) == (60, 40)
    # Of the answered requests only (the timeout's 99999 is not among them); nearest rank.
    assert (c["latency_ms_p50"], c["latency_ms_p95"], c["ttft_ms_p50"], c["ttft_ms_p95"]) == (100, 190, 10, 19)
    ch = body["rows"][0]
    assert (ch["requests"], ch["latency_ms_p50"], ch["latency_ms_p95"], ch["errors"]) == (1, 50, 50, {})
    only = _stats(srv, ident.api_key, since="2026-03-10", until="2026-03-11", service_id=chat.id).json()["rows"]
    assert [x["service_id"] for x in only] == [chat.id]
    # A real Qianfan call today is in today's row of its service.
    assert call("qianfan", srv.url, ident, "Hi", 2).outcome == "ok"
    today = _stats(srv, ident.api_key, days=1).json()["rows"]
    assert [(x["service_id"], x["requests"], x["ok"]) for x in today] == [(comp.id, 1, 1)]
    assert today[0]["latency_ms_p50"] is not None and today[0]["ttft_ms_p50"] is not None
    assert today[0]["completion_tokens"] >= 1


def test_isolation_and_bad_input(srv):
    p = srv.platform
    a, b = provision(srv, "st-a"), provision(srv, "st-b")
    svc = p.services.get_by_endpoint(a.qf_chat)
    _record(p, a.account_id, svc.id, dt.datetime(2026, 4, 1, 4, tzinfo=dt.timezone.utc), latency=5, ttft=1)
    span = {"since": "2026-04-01", "until": "2026-04-01"}
    assert len(_stats(srv, a.api_key, **span).json()["rows"]) == 1
    # b: nothing of a's, also when naming a's service; naming a's account is 403.
    assert _stats(srv, b.api_key, **span).json()["rows"] == []
    assert _stats(srv, b.api_key, service_id=svc.id, **span).json()["rows"] == []
    assert _stats(srv, b.api_key, account_id=a.account_id, **span).status_code == 403
    assert _stats(srv, b.api_key, all="true", **span).json()["rows"] == []
    # An admin: one account's, or everyone's.
    ops = srv.ops_key()
    assert len(_stats(srv, ops, account_id=a.account_id, **span).json()["rows"]) == 1
    assert {x["service_id"] for x in _stats(srv, ops, all="true", **span).json()["rows"]} >= {svc.id}
    # Bad input: the admin API's errors.
    r = _stats(srv, a.api_key, since="2026-04-02", until="2026-04-01")
    assert r.status_code == 400 and r.json()["error"]["param"] == "since"
    assert _stats(srv, a.api_key, since="2024-01-01", until="2026-04-01").status_code == 400
    assert _stats(srv, a.api_key, days=0).status_code == 422
    assert _stats(srv, a.api_key, since="soon").status_code == 422
    assert _stats(srv, "wk-nope").status_code == 401

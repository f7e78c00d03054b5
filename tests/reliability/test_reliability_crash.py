"""Items 2 and 3: SIGKILL mid-load then restart on the same data dir; SIGTERM drains.

SIGKILL: every request the server had admitted is either already recorded or holds a
quota reservation; after a restart on the same data dir the reservations are released
and each killed request has exactly one usage record ("error:interrupted"), quota used
equals the sum of the records, and SQLite's integrity_check is "ok".

SIGTERM: the server stops admitting, lets a stream in flight finish (up to
WHARF_SHUTDOWN_GRACE_S) and exits 0; a stream longer than the grace period is cut and
still settled and recorded ("cancelled").
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time

import httpx
import pytest
from sqlalchemy import func, select

from tests.conftest import MODEL, stop_server
from tests.reliability.rel_clients import DIALECTS, provision, request_for

pytestmark = pytest.mark.slow


def _fire(server, acct, sent: list, done: list, max_tokens: int) -> None:
    method, path, params, headers, body = request_for(acct, max_tokens=max_tokens, stream=acct.dialect != "welm")
    body = {**body, **({"ignore_eos": True} if acct.dialect == "openai" else {})}
    sent.append(acct.dialect)
    try:
        with httpx.stream(method, server.url + path, params=params, headers=headers, json=body,
                          timeout=httpx.Timeout(120, connect=10)) as r:
            for _ in r.iter_bytes():
                pass
        done.append(acct.dialect)
    except httpx.HTTPError:
        pass                     # the server was killed under us


def _reserved_rows(platform, account_ids) -> int:
    from wharf.platform.models import QuotaReservation
    with platform.store.read() as s:
        return s.scalar(select(func.count()).select_from(QuotaReservation)
                        .where(QuotaReservation.account_id.in_(account_ids)))


def _records(platform, account_id) -> list[dict]:
    return platform.usage.records(account_id=account_id, limit=1000)


def test_sigkill_mid_load_then_restart_reconciles(server_factory):
    server = server_factory()
    accounts = {d: provision(server, d) for d in DIALECTS}
    ids = [a.account_id for a in accounts.values()]
    per_dialect = 4
    sent: list[str] = []
    done: list[str] = []
    threads = [threading.Thread(target=_fire, args=(server, accounts[d], sent, done, 200), daemon=True)
               for d in DIALECTS for _ in range(per_dialect)]
    for t in threads:
        t.start()
    # Wait until the server has admitted every request: each is recorded or holds a reservation.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        held = _reserved_rows(server.platform, ids)
        recorded = sum(len(_records(server.platform, i)) for i in ids)
        if held + recorded == len(threads) and held > 0:
            break
        time.sleep(0.2)
    assert held > 0 and held + recorded == len(threads), (held, recorded)
    time.sleep(0.5)                       # let some tokens flow
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(30)
    for t in threads:
        t.join(30)
    held_at_kill = _reserved_rows(server.platform, ids)
    assert held_at_kill > 0
    db = server.data_dir / "wharf.db"
    server.platform.close()
    server._platform = None

    restarted = server_factory(extra_env={"WHARF_DATA_DIR": str(server.data_dir)})
    try:
        p = server.platform               # the same data dir (restarted.data_dir only holds its log)
        assert "released" in restarted.log()
        assert _reserved_rows(p, ids) == 0
        interrupted = 0
        for d, acct in accounts.items():
            recs = _records(p, acct.account_id)
            assert len(recs) == per_dialect, (d, recs)
            assert len({r["request_id"] for r in recs}) == per_dialect
            interrupted += sum(r["status"] == "error:interrupted" for r in recs)
            st = p.quota.status(acct.account_id)
            assert (st.chars_reserved, st.tokens_reserved) == (0, 0), st
            assert st.chars_used == sum(r["generated_chars"] for r in recs)
            assert st.tokens_used == sum(r["prompt_tokens"] + r["completion_tokens"] for r in recs)
        assert interrupted == held_at_kill
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # And the service carries on, for the same credentials.
        for d in DIALECTS:
            method, path, params, headers, body = request_for(accounts[d], max_tokens=4)
            r = httpx.request(method, restarted.url + path, params=params, headers=headers, json=body, timeout=60)
            assert r.status_code == 200 and "error_code" not in r.text, (d, r.text)
    finally:
        stop_server(restarted)


def _stream_in_thread(url: str, key: str, max_tokens: int, out: dict) -> threading.Thread:
    def run():
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a story"}],
                "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
        lines = []
        try:
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120,
                              headers={"Authorization": f"Bearer {key}"}) as r:
                for line in r.iter_lines():
                    lines.append(line)
                    if line.startswith("data:"):
                        out.setdefault("first", time.monotonic())
        except httpx.HTTPError as exc:
            out["error"] = repr(exc)
        out["lines"] = lines
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _wait_first(out: dict, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while "first" not in out and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "first" in out, out


def test_sigterm_finishes_inflight_stream_and_exits_0(server_factory):
    server = server_factory(extra_env={"WHARF_SHUTDOWN_GRACE_S": "60"})
    acct, key = server.account("sigterm")
    out: dict = {}
    t = _stream_in_thread(server.url, key, 40, out)
    _wait_first(out)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    with pytest.raises(httpx.HTTPError):          # no longer admitting
        httpx.get(server.url + "/health", timeout=3)
    rc = server.proc.wait(60)
    t.join(30)
    assert rc == 0, server.log()[-2000:]
    assert "error" not in out, out
    assert out["lines"][-2:] == ["data: [DONE]", ""] or "data: [DONE]" in out["lines"], out["lines"][-5:]
    assert any('"finish_reason":"length"' in ln.replace(" ", "") for ln in out["lines"])
    recs = server.platform.usage.records(account_id=acct.id)
    assert [r["status"] for r in recs] == ["ok"] and recs[0]["completion_tokens"] == 40
    assert server.platform.quota.status(acct.id).tokens_reserved == 0


def test_sigterm_grace_deadline_cuts_long_stream_and_still_settles(server_factory):
    server = server_factory(extra_env={"WHARF_SHUTDOWN_GRACE_S": "2"})
    acct, key = server.account("sigterm-grace")
    out: dict = {}
    t = _stream_in_thread(server.url, key, 1500, out)
    _wait_first(out)
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    rc = server.proc.wait(60)
    took = time.monotonic() - t0
    t.join(30)
    assert rc == 0, server.log()[-2000:]
    assert took < 20, took
    recs = server.platform.usage.records(account_id=acct.id)
    assert [r["status"] for r in recs] == ["cancelled"], recs
    st = server.platform.quota.status(acct.id)
    assert (st.chars_reserved, st.tokens_reserved) == (0, 0)
    assert st.tokens_used == recs[0]["prompt_tokens"] + recs[0]["completion_tokens"]

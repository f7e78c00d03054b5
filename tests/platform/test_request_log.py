"""The request log over a real `wharf serve` on SQLite and on PostgreSQL: the id every
dialect returns and the X-Request-Id header find the request's record; filters, keyset
pages, CSV / JSON export, the CLI (local store and --server), isolation between
accounts, bad input, and retention."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from tests.conftest import stop_server
from tests.policy_http.dialects import ALL_DIALECTS, call, provision
from wharf.platform.request_log import RequestFilter

ADMIN = "/admin/api"


def _get(srv, path: str, key: str, **params) -> httpx.Response:
    return httpx.get(srv.url + ADMIN + path, params=params, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _body_id(dialect: str, rep) -> str:
    body = rep.body
    if isinstance(body, list):                                  # a stream: every frame has the id
        frame = next(e for e in body if isinstance(e, dict))
        return frame["data"]["id"] if dialect.startswith("sensenova") else frame["id"]
    return body["data"]["id"] if dialect.startswith("sensenova") else body["id"]


@pytest.mark.parametrize("stream", [False, True])
def test_every_dialect_id_and_header_find_the_record(srv, stream):
    ident = provision(srv, "rlog")
    other = provision(srv, "rlog-other")
    for dialect in ALL_DIALECTS:
        if stream and dialect == "welm":
            continue                                            # WeLM does not stream
        rep = call(dialect, srv.url, ident, "Hello", 3, stream=stream)
        assert rep.outcome == "ok", (dialect, rep.body)
        rid = _body_id(dialect, rep)
        assert rep.headers["x-request-id"] == rid, dialect
        if dialect.startswith("qianfan"):
            assert rid.startswith("as-")
        elif dialect == "openai":
            assert rid.startswith("cmpl-")
        elif dialect == "openai-chat":
            assert rid.startswith("chatcmpl-")
        r = _get(srv, f"/requests/{rid}", ident.api_key)
        assert r.status_code == 200, r.text
        rec = r.json()
        assert rec["request_id"] == rid and rec["account_id"] == ident.account_id
        assert rec["dialect"] == dialect.split("-")[0] and rec["status"] == "ok" and rec["error"] is None
        assert rec["completion_tokens"] >= 1 and rec["latency_ms"] is not None and rec["ttft_ms"] is not None
        assert "prompt" not in rec and "Hello" not in r.text    # no prompt or output is stored
        # Another account's key: not found (the id leaks nothing), in its list neither.
        assert _get(srv, f"/requests/{rid}", other.api_key).status_code == 404
    mine = _get(srv, "/requests", ident.api_key, limit=100).json()["data"]
    assert {e["account_id"] for e in mine} == {ident.account_id}
    assert _get(srv, "/requests", other.api_key).json()["data"] == []
    assert _get(srv, "/requests", other.api_key, account_id=ident.account_id).status_code == 403
    assert _get(srv, "/requests", other.api_key, all="true").json()["data"] == []   # all: admins only


def test_refused_requests_are_found_with_their_error(srv):
    ident = provision(srv, "rlog-err")
    # An OpenAI parameter error after authentication: a record with its error kind.
    r = httpx.post(srv.url + "/v1/completions", json={"model": "smollm2-135m-instruct", "prompt": "x",
                                                      "temperature": 9},
                   headers={"Authorization": f"Bearer {ident.api_key}"}, timeout=30)
    assert r.status_code == 400
    rid = r.headers["x-request-id"]
    rec = _get(srv, f"/requests/{rid}", ident.api_key).json()
    assert rec["status"].startswith("error:") and rec["error"] == rec["status"][6:]
    # Qianfan: a missing prompt, HTTP 200 with error_code; its body id is the record's.
    rep = call("qianfan", srv.url, ident, "", 3)
    assert rep.body["error_code"] == 336003
    rec = _get(srv, f"/requests/{rep.body['id']}", ident.api_key).json()
    assert rep.headers["x-request-id"] == rep.body["id"] == rec["request_id"]
    assert rec["status"] == "error:invalid_param"
    errors = _get(srv, "/requests", ident.api_key, status="error").json()["data"]
    assert len(errors) == 2
    # Failed authentication: a header all the same, and no record.
    r = httpx.post(srv.url + "/v1/completions", json={}, headers={"Authorization": "Bearer wk-nope"}, timeout=30)
    assert r.status_code == 401 and r.headers["x-request-id"]
    assert _get(srv, f"/requests/{r.headers['x-request-id']}", srv.ops_key()).status_code == 404
    # Every route, the admin API and /health included.
    assert httpx.get(srv.url + "/health", timeout=30).headers["x-request-id"]


def _seed(platform, account_id: int, n: int, start: dt.datetime) -> list[str]:
    """n records a minute apart, newest last: dialects, models, statuses and credentials vary."""
    ids = []
    for i in range(n):
        rid = f"seed-{uuid.uuid4().hex[:12]}"
        platform.usage.record_usage(request_id=rid, account_id=account_id, model=("m-a", "m-b")[i % 2],
                                    dialect=("openai", "qianfan", "welm")[i % 3], credential_id=1000 + i % 2,
                                    service_id=None if i % 4 else 77, status="ok" if i % 5 else "error:timeout",
                                    prompt_tokens=i, latency_ms=10 * i, ttft_ms=i,
                                    created_at=start + dt.timedelta(minutes=i))
        ids.append(rid)
    return ids


def test_filters_pages_and_export(srv):
    p = srv.platform
    acct, key = srv.account(f"rlog-seed-{uuid.uuid4().hex[:6]}")
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    ids = _seed(p, acct.id, 23, start)
    # Keyset pages of 5: newest first, each record once, next_cursor null at the end.
    seen, cursor = [], None
    while True:
        page = _get(srv, "/requests", key, limit=5, **({"cursor": cursor} if cursor else {})).json()
        seen += [e["request_id"] for e in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    # Each filter, and a time range [since, until).
    q = _get(srv, "/requests", key, dialect="qianfan", model="m-b", limit=100).json()["data"]
    assert [e["request_id"] for e in q] == [ids[i] for i in range(22, -1, -1) if i % 3 == 1 and i % 2 == 1]
    assert len(_get(srv, "/requests", key, status="error:timeout", limit=100).json()["data"]) == 5
    assert len(_get(srv, "/requests", key, status="ok", limit=100).json()["data"]) == 18
    assert len(_get(srv, "/requests", key, service_id=77, limit=100).json()["data"]) == 6
    assert len(_get(srv, "/requests", key, credential_id=1001, limit=100).json()["data"]) == 11
    window = _get(srv, "/requests", key, since=(start + dt.timedelta(minutes=3)).isoformat(),
                  until="2026-01-01T00:07:00", limit=100).json()["data"]
    assert [e["request_id"] for e in window] == ids[3:7][::-1]
    # Export: CSV and JSON, every match (more than one page of the export's reads).
    r = _get(srv, "/requests/export", key, format="csv", dialect="welm")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert r.headers["content-type"].startswith("text/csv") and len(rows) == 7
    assert rows[0]["request_id"] == ids[20] and rows[0]["dialect"] == "welm"
    data = _get(srv, "/requests/export", key, format="json").json()
    assert [e["request_id"] for e in data] == ids[::-1]
    # Bad input: the admin API's own errors, never a 500.
    assert _get(srv, "/requests", key, cursor="nope").status_code == 400
    assert _get(srv, "/requests", key, cursor="99999999999999999999999.1").status_code == 400
    assert _get(srv, "/requests", key, status="weird").json()["error"]["param"] == "status"
    assert _get(srv, "/requests", key, since="yesterday").status_code == 422
    assert _get(srv, "/requests", key, dialect="grpc").status_code == 422
    assert _get(srv, "/requests/" + "x" * 80, key).status_code == 422
    # Admin: everyone's with all=true, one account's with account_id.
    ops = srv.ops_key()
    other, _ = srv.account(f"rlog-seed2-{uuid.uuid4().hex[:6]}")
    _seed(p, other.id, 1, start)
    mine = _get(srv, "/requests", ops, account_id=acct.id, limit=100).json()["data"]
    assert len(mine) == 23
    everyone = _get(srv, "/requests/export", ops, format="json", all="true").json()
    assert len(everyone) > 23 and {e["account_id"] for e in everyone} > {acct.id}


def _cli(srv, *args, server: bool) -> subprocess.CompletedProcess:
    env = srv.env
    argv = [sys.executable, "-m", "wharf", "requests", *args]
    if server:
        argv += ["--server", srv.url, "--admin-key", srv.ops_key()]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("server", [True, False], ids=["remote", "local"])
def test_cli_list_show_export(srv, tmp_path, server):
    p = srv.platform
    acct, _ = srv.account(f"rlog-cli-{uuid.uuid4().hex[:6]}")
    ids = _seed(p, acct.id, 4, dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc))
    r = _cli(srv, "list", "--account", acct.name, "--limit", "3", "--json", server=server)
    assert r.returncode == 0, r.stderr
    page = json.loads(r.stdout)
    assert [e["request_id"] for e in page["data"]] == ids[::-1][:3] and page["next_cursor"]
    r = _cli(srv, "list", "--account", str(acct.id), "--cursor", page["next_cursor"], "--json", server=server)
    assert [e["request_id"] for e in json.loads(r.stdout)["data"]] == ids[:1]
    r = _cli(srv, "show", ids[2], "--json", server=server)
    assert r.returncode == 0 and json.loads(r.stdout)["request_id"] == ids[2]
    out = tmp_path / "x.csv"
    r = _cli(srv, "export", "--account", acct.name, "--status", "ok", "-o", str(out), server=server)
    assert r.returncode == 0, r.stderr
    assert [row["request_id"] for row in csv.DictReader(out.open())] == [ids[3], ids[2], ids[1]]
    r = _cli(srv, "export", "--account", acct.name, "--format", "json", server=server)
    assert len(json.loads(r.stdout)) == 4
    # Failures (README, CLI exit codes): 3 for an unknown id, with a message; 2 for bad usage.
    r = _cli(srv, "show", "no-such-id", server=server)
    assert r.returncode == 3 and "error" in r.stderr
    assert _cli(srv, "list", "--since", "soon", server=server).returncode == 2
    assert _cli(srv, "list", "--limit", "0", server=server).returncode == 2


def test_retention_deletes_old_records_in_batches(srv):
    p = srv.platform
    acct, _ = srv.account(f"rlog-prune-{uuid.uuid4().hex[:6]}")
    now = dt.datetime.now(dt.timezone.utc)
    old = _seed(p, acct.id, 7, now - dt.timedelta(days=40))
    new = _seed(p, acct.id, 2, now - dt.timedelta(days=1))
    # Every record past a 30-day retention goes, this account's 7 and those the tests
    # before seeded (2026-01, 2026-02); none newer.
    cutoff = now - dt.timedelta(days=30)
    past, _ = p.request_log.page(RequestFilter(until=cutoff), limit=1000)
    assert len(past) >= 7 and set(old) <= {e.request_id for e in past}
    assert p.request_log.prune(retention=dt.timedelta(days=30), batch=3, pause_s=0, now=now) == len(past)
    assert p.request_log.page(RequestFilter(until=cutoff))[0] == []
    left, _ = p.request_log.page(RequestFilter(account_id=acct.id))
    assert [e.request_id for e in left] == new[::-1]
    assert not set(old) & {e.request_id for e in left}


def test_retention_runs_in_the_server(server_factory):
    """WHARF_REQUEST_LOG_RETENTION_DAYS: the server prunes on its own."""
    s = server_factory(extra_env={"WHARF_REQUEST_LOG_RETENTION_DAYS": "30",
                                  "WHARF_REQUEST_LOG_PRUNE_INTERVAL_S": "0.5"})
    acct, key = s.account("rlog-auto")
    old = _seed(s.platform, acct.id, 3, dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=31))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if _get(s, f"/requests/{old[-1]}", key).status_code == 404:
            break
        time.sleep(0.3)
    assert _get(s, "/requests", key).json()["data"] == []
    stop_server(s)


"""The request log at 1 M records: how long a filtered list page takes, on SQLite and PostgreSQL.

    python bench/requests_log.py                      # SQLite in a temp dir, and PostgreSQL
                                                      # in a throwaway cluster (initdb in PATH
                                                      # or /usr/lib/postgresql/15/bin)
    python bench/requests_log.py --rows 200000 --only sqlite
    python bench/requests_log.py --pg-url postgresql+psycopg://user@host/db

Rows go in through the real schema (Alembic migrations, every index), spread over 100
accounts, 4 dialects, 3 models, 30 days, 5 % errors. Each query is what
GET /admin/api/requests runs (RequestLog.page, 50 rows), timed as the median of 20
runs after one warm-up: the first page and a page deep in the list (a cursor half-way
down) for a few filters. Prints one JSON object per database.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert  # noqa: E402

from wharf.platform.models import UsageRecord  # noqa: E402
from wharf.platform.request_log import RequestFilter, RequestLog  # noqa: E402
from wharf.platform.store import Store  # noqa: E402

DIALECTS = ["openai", "qianfan", "welm", "sensenova"]
MODELS = ["smollm2-135m-instruct", "Yi-34B-Chat", "xl"]
START = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
SPAN_S = 30 * 86400


def fill(store: Store, rows: int, batch: int = 10_000) -> float:
    rnd = random.Random(19)
    t0 = time.perf_counter()
    step = SPAN_S / rows
    for base in range(0, rows, batch):
        values = []
        for i in range(base, min(rows, base + batch)):
            at = START + dt.timedelta(seconds=i * step)
            err = rnd.random() < 0.05
            values.append(dict(request_id=f"bench-{i:08d}", account_id=rnd.randrange(1, 101),
                               credential_id=rnd.randrange(1, 301),
                               service_id=rnd.choice([None, rnd.randrange(1, 201)]),
                               model=rnd.choice(MODELS), dialect=rnd.choice(DIALECTS),
                               prompt_tokens=rnd.randrange(1, 2000), completion_tokens=rnd.randrange(0, 500),
                               generated_chars=rnd.randrange(0, 900), n=1,
                               status=rnd.choice(["error:rate_limited", "error:timeout"]) if err else "ok",
                               ttft_ms=rnd.randrange(20, 900), latency_ms=rnd.randrange(100, 9000),
                               created_at=at, day=at.date()))
        with store.write_conn() as conn:
            conn.execute(insert(UsageRecord), values)
    if store.dialect == "postgresql":
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.exec_driver_sql("VACUUM ANALYZE usage_records")
    else:
        with store.engine.connect() as c:
            c.exec_driver_sql("ANALYZE")
    return time.perf_counter() - t0


def timed(fn, runs: int = 20) -> float:
    fn()
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(samples), 2)


def measure(store: Store) -> dict:
    log = RequestLog(store)
    cases = {
        "all (admin)": RequestFilter(),
        "account": RequestFilter(account_id=42),
        "account + status=error": RequestFilter(account_id=42, status="error"),
        "account + dialect + model": RequestFilter(account_id=42, dialect="qianfan", model="xl"),
        "credential": RequestFilter(credential_id=7),
        "service": RequestFilter(service_id=9),
        "time range (1 day)": RequestFilter(since=START + dt.timedelta(days=10), until=START + dt.timedelta(days=11)),
        "account + time range": RequestFilter(account_id=42, since=START + dt.timedelta(days=10),
                                              until=START + dt.timedelta(days=11)),
        "status=error:timeout (rare, no index of its own)": RequestFilter(status="error:timeout"),
    }
    out = {}
    for name, flt in cases.items():
        first = timed(lambda f=flt: log.page(f, limit=50))
        # A cursor half-way down the list: keyset pages cost the same deep down.
        mid_at = START + dt.timedelta(seconds=SPAN_S // 2)
        with store.read() as s:
            from sqlalchemy import select
            row = s.execute(flt.apply(select(UsageRecord.created_at, UsageRecord.id))
                            .where(UsageRecord.created_at < mid_at)
                            .order_by(UsageRecord.created_at.desc(), UsageRecord.id.desc()).limit(1)).first()
        deep = None
        if row is not None:
            from wharf.platform.request_log import encode_cursor
            cur = encode_cursor(row[0], row[1])
            deep = timed(lambda f=flt, c=cur: log.page(f, cursor=c, limit=50))
        out[name] = {"first_page_ms": first, "deep_page_ms": deep}
    return out


def _pg_cluster():
    pgbin = next((d for d in [os.path.dirname(shutil.which("initdb") or ""), "/usr/lib/postgresql/15/bin"]
                  if d and os.path.exists(f"{d}/initdb")), None)
    if pgbin is None:
        raise SystemExit("no initdb found: pass --pg-url or --only sqlite")
    d = tempfile.mkdtemp(prefix="pg-bench-")
    pre = []
    if os.geteuid() == 0:
        import pwd
        pw = pwd.getpwnam("postgres")
        os.chown(d, pw.pw_uid, pw.pw_gid)
        pre = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*a):
        subprocess.run(pre + list(a), check=True, cwd=d, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    run(f"{pgbin}/initdb", "-D", f"{d}/data", "-U", "postgres", "-A", "trust", "-N", "-E", "UTF8", "--no-instructions")
    # Default durability settings except fsync (a benchmark, not a database to keep).
    run(f"{pgbin}/pg_ctl", "-D", f"{d}/data", "-l", f"{d}/log", "-w", "-o",
        f"-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", lambda: (
        run(f"{pgbin}/pg_ctl", "-D", f"{d}/data", "-m", "fast", "-w", "stop"), shutil.rmtree(d, ignore_errors=True))


def bench(url: str, rows: int) -> dict:
    store = Store.open(url)
    try:
        fill_s = fill(store, rows)
        return {"database": store.dialect, "rows": rows, "insert_s": round(fill_s, 1),
                "page_of_50": measure(store)}
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--only", choices=["sqlite", "postgresql"])
    ap.add_argument("--pg-url")
    a = ap.parse_args()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(json.dumps({"cpu": cpu, "cores": os.cpu_count()}))
    if a.only != "postgresql":
        d = tempfile.mkdtemp(prefix="rlog-bench-")
        try:
            print(json.dumps(bench(f"sqlite:///{d}/wharf.db", a.rows)), flush=True)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    if a.only != "sqlite":
        stop = None
        url = a.pg_url
        if url is None:
            url, stop = _pg_cluster()
        try:
            print(json.dumps(bench(url, a.rows)), flush=True)
        finally:
            if stop:
                stop()


if __name__ == "__main__":
    main()

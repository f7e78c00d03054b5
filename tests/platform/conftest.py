"""Fixtures for the platform tests: real SQLite files and a real throwaway PostgreSQL."""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import stop_server
from wharf.platform.core import Platform
from wharf.platform.secretbox import SecretBox
from wharf.platform.store import Store

PGBIN = "/usr/lib/postgresql/15/bin"
MODELS = {"tiny-model", "Yi-34B-Chat", "xl"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_base():
    """A throwaway PostgreSQL cluster for the session; yields (host, port)."""
    if not os.path.exists(f"{PGBIN}/initdb"):
        pytest.skip(f"PostgreSQL binaries not found in {PGBIN} (apt-get install -y postgresql)")
    d = tempfile.mkdtemp(prefix="pg-")
    pre = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(d, pw.pw_uid, pw.pw_gid)
        pre = ["runuser", "-u", "postgres", "--"]

    def run(*a):
        subprocess.run(pre + list(a), check=True, cwd=d, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    port = free_port()
    run(f"{PGBIN}/initdb", "-D", f"{d}/data", "-U", "postgres", "-A", "trust", "-N", "-E", "UTF8",
        "--no-instructions")
    run(f"{PGBIN}/pg_ctl", "-D", f"{d}/data", "-l", f"{d}/log", "-w", "-o",
        f"-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off "
        "-c synchronous_commit=off -c max_connections=200", "start")
    try:
        yield "127.0.0.1", port
    finally:
        run(f"{PGBIN}/pg_ctl", "-D", f"{d}/data", "-m", "immediate", "-w", "stop")
        shutil.rmtree(d, ignore_errors=True)


_dbn = itertools.count()


def new_pg_database(pg_base) -> str:
    import psycopg

    host, port = pg_base
    name = f"t{os.getpid()}_{next(_dbn)}"
    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres", autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return f"postgresql+psycopg://postgres@{host}:{port}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'wharf.db'}"
    return new_pg_database(request.getfixturevalue("pg_base"))


@pytest.fixture
def secret_box() -> SecretBox:
    return SecretBox(SecretBox.generate_key())


@pytest.fixture
def store(db_url):
    s = Store.open(db_url)
    yield s
    s.close()


@pytest.fixture
def platform(store, secret_box) -> Platform:
    return Platform(store, secret_box, model_exists=MODELS.__contains__)


@pytest.fixture
def sqlite_platform(tmp_path, secret_box):
    s = Store.open(f"sqlite:///{tmp_path / 'wharf.db'}")
    yield Platform(s, secret_box, model_exists=MODELS.__contains__)
    s.close()


class Registry:
    """Stands in for the engine's model registry: .names() is all the admin API uses."""

    def names(self) -> list[str]:
        return sorted(MODELS)


class LiveServer:
    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def admin_app(platform: Platform):
    from fastapi import FastAPI

    from wharf.api.admin import build_admin_router

    app = FastAPI()
    app.state.platform = platform
    app.state.registry = Registry()
    app.include_router(build_admin_router())
    return app


@pytest.fixture
def live_admin(platform):
    """The admin router on a bare FastAPI app, served by uvicorn on 127.0.0.1."""
    with LiveServer(admin_app(platform)) as srv:
        yield srv


def file_bytes(path: Path) -> bytes:
    """The SQLite file plus its WAL (recent writes live in the -wal file until a checkpoint)."""
    data = b""
    for p in (path, Path(str(path) + "-wal")):
        if p.exists():
            data += p.read_bytes()
    return data


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def srv(request, server_factory):
    """A live server of its own per module, on SQLite and on a fresh PostgreSQL database."""
    env = {}
    if request.param == "postgresql":
        env["WHARF_DATABASE_URL"] = new_pg_database(request.getfixturevalue("pg_base"))
    s = server_factory(extra_env=env)
    yield s
    stop_server(s)

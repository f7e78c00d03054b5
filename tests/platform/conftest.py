"""Fixtures for the platform tests: real SQLite files and a real throwaway PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.services import free_port, wait_until
from wharf.platform.core import Platform
from wharf.platform.secretbox import SecretBox
from wharf.platform.store import Store

MODELS = {"tiny-model", "Yi-34B-Chat", "xl"}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'wharf.db'}"
    return request.getfixturevalue("pg_cluster").new_database()


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
        wait_until(lambda: self.server.started, "uvicorn", 10, alive=self.thread.is_alive, interval=0.02)
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


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def srv(request, server_factory):
    """A live server on SQLite and one on a fresh PostgreSQL database, shared by the
    platform modules (each provisions accounts of its own): two starts for the session,
    not two per module (~9 s each)."""
    env = {}
    if request.param == "postgresql":
        env["WHARF_DATABASE_URL"] = request.getfixturevalue("pg_cluster").new_database()
    return server_factory(keep=True, extra_env=env)

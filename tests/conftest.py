"""Fixtures shared by every test: a real `wharf serve` process over HTTP, on the real
embedded model, with a real SQLite store that tests provision through the platform."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest.mock
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.services import free_port, running_postgres, running_redis, wait_until

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    """Converted weights, shared by every server of the session (conversion takes ~30 s once)."""
    path = Path(os.environ.get("WHARF_TEST_MODEL_CACHE", Path.home() / ".cache" / "wharf-test-models"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def inproc(model_cache_dir):
    """The in-process app on the scripted engine (tests/inproc.py), one per test module:
    for dialect and policy tests that need no model text."""
    from tests.inproc import in_process_server  # it imports this module

    with in_process_server(model_cache_dir, MODEL) as srv:
        yield srv


def account_with_key(platform, name: str, **limits):
    """A fresh account with an API key: returns (account, key)."""
    acct = platform.accounts.create(name, **limits)
    return acct, platform.credentials.create(acct.id, "api_key", label="test").secret


@dataclass
class LiveServer:
    url: str
    data_dir: Path
    env: dict
    proc: subprocess.Popen
    log_path: Path
    admin_key: str | None = None
    args: list[str] = field(default_factory=list)
    _platform: object = field(default=None, repr=False)

    @property
    def platform(self):
        """The same store the server uses, for provisioning accounts and keys in tests."""
        if self._platform is None:
            from wharf.config import Settings
            from wharf.platform.core import Platform
            settings = Settings(data_dir=self.data_dir, database_url=self.env.get("WHARF_DATABASE_URL"))
            # The server's own secret key, so credentials made here decrypt over there.
            key = {"WHARF_SECRET_KEY": self.env["WHARF_SECRET_KEY"]} if "WHARF_SECRET_KEY" in self.env else {}
            with unittest.mock.patch.dict(os.environ, key):
                self._platform = Platform.open(settings)
        return self._platform

    def account(self, name: str, **limits):
        return account_with_key(self.platform, name, **limits)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ops_key(self) -> str:
        """An admin API key (the one printed at first start, else a new admin account's)."""
        if self.admin_key is None:
            import uuid
            acct = self.platform.accounts.create(f"ops-{uuid.uuid4().hex[:8]}", is_admin=True)
            self.admin_key = self.platform.credentials.create(acct.id, "api_key", label="ops").secret
        return self.admin_key

    def engine_stats(self) -> dict:
        """GET /engine/stats with an admin key: its traffic figures are for admins only."""
        r = httpx.get(self.url + "/engine/stats", timeout=10, headers={"Authorization": f"Bearer {self.ops_key()}"})
        r.raise_for_status()
        return r.json()


def start_server(tmp_root: Path, model_cache: Path, *, extra_env: dict | None = None,
                 args: list[str] | None = None, timeout: float = 240) -> LiveServer:
    port = free_port()
    # A port can come back later in the session: the dir must be new whatever the port.
    tmp_root.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix=f"server-{port}-", dir=tmp_root))
    env = {**os.environ, "WHARF_DATA_DIR": str(data_dir), "WHARF_MODEL_CACHE_DIR": str(model_cache),
           "WHARF_PORT": str(port), "WHARF_HOST": "127.0.0.1",
           # Test servers need no long drain at teardown; tests of SIGTERM set their own.
           "WHARF_SHUTDOWN_GRACE_S": "5", **(extra_env or {})}
    log_path = data_dir / "server.log"
    proc = _launch(env, args or [], log_path, "wb")
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(proc, url, log_path, timeout)
    text = log_path.read_text(errors="replace")
    match = re.search(r"(wk-[A-Za-z0-9_\-]+)", text)
    return LiveServer(url=url, data_dir=data_dir, env=env, proc=proc, log_path=log_path,
                      admin_key=match.group(1) if match else None, args=list(args or []))


def restart_server(server: LiveServer, timeout: float = 240) -> LiveServer:
    """A new process for a server that has stopped (or was killed): same port, data dir,
    settings and store, so its accounts and keys still work. The log is appended to."""
    assert server.proc.poll() is not None, "stop the server before restarting it"
    server.proc = _launch(server.env, server.args, server.log_path, "ab")
    _wait_healthy(server.proc, server.url, server.log_path, timeout)
    return server


def _launch(env: dict, args: list[str], log_path: Path, mode: str) -> subprocess.Popen:
    with open(log_path, mode) as log_file:     # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "wharf", "serve", *args], env=env,
                                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_healthy(proc: subprocess.Popen, url: str, log_path: Path, timeout: float) -> None:
    try:
        wait_until(lambda: healthy(url), "wharf serve", timeout, alive=lambda: proc.poll() is None,
                   log=lambda: log_path.read_text(errors="replace"), interval=0.3)
    except RuntimeError:
        proc.kill()
        raise


def stop_server(server: LiveServer, sig=signal.SIGTERM) -> int:
    if server.proc.poll() is None:
        server.proc.send_signal(sig)
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)
    if server._platform is not None:
        server._platform.close()
    return server.proc.returncode


# Servers started by a test module, stopped when that module ends: each holds ~1.5 GB,
# and kept to the end of the session they once filled this 24 GiB machine (21 servers).
_module_servers: list[LiveServer] = []


@pytest.fixture(scope="session")
def server_factory(model_cache_dir):
    """Start extra servers (other settings, replicas). A server lives until the end of
    the test module that started it; `keep=True` (the shared server) until the session's."""
    root = Path(tempfile.mkdtemp(prefix="wharf-test-"))
    started: list[LiveServer] = []

    def factory(keep: bool = False, **kw) -> LiveServer:
        s = start_server(root, model_cache_dir, **kw)
        started.append(s)
        if not keep:
            _module_servers.append(s)
        return s

    yield factory
    for s in started:
        stop_server(s)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def _stop_module_servers():
    yield
    while _module_servers:
        stop_server(_module_servers.pop())


@pytest.fixture(scope="session")
def server(server_factory) -> LiveServer:
    """The shared server: embedded model, default settings, SQLite."""
    return server_factory(keep=True)


@pytest.fixture(scope="session")
def api_key(server) -> str:
    return server.account("openai-tests")[1]


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL cluster for the session; tests take databases from it."""
    with running_postgres() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_url():
    """A throwaway redis-server for the session."""
    with running_redis() as server:
        yield server.url


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def pytest_collection_modifyitems(config, items):
    """Browser tests last: pytest-playwright keeps an event loop running in the main
    thread for the rest of the session, where `asyncio.run` then refuses to start."""
    items.sort(key=lambda item: "tests/console/" in item.nodeid.replace("\\", "/"))

"""The real services the tests start, one copy of each: a free port, a readiness wait, a
throwaway PostgreSQL cluster and a throwaway redis-server (RECIPES.md sections 2 and 3).
Fixtures in the conftests wrap these; a test that needs an outage stops and starts them."""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

PGBIN = "/usr/lib/postgresql/15/bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready: Callable[[], bool], what: str, timeout: float, *,
               alive: Callable[[], bool] = lambda: True, log: Callable[[], str] = lambda: "",
               interval: float = 0.05) -> None:
    """Poll `ready` until it is true; RuntimeError (with the log's tail) when the process
    behind it dies (`alive` false) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not alive():
            raise RuntimeError(f"{what} exited before it was ready:\n{log()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready in {timeout} s:\n{log()[-3000:]}")
        time.sleep(interval)


class PostgresCluster:
    """A PostgreSQL cluster in a temporary directory on a free port, durability off (it
    is thrown away). Root runs it as the postgres user, as PostgreSQL requires."""

    _names = itertools.count()

    @staticmethod
    def unavailable() -> str | None:
        """Why no cluster can start here, or None."""
        if not os.path.exists(f"{PGBIN}/initdb"):
            return f"PostgreSQL binaries not found in {PGBIN} (apt-get install -y postgresql)"
        return None

    def __init__(self, max_connections: int = 200):
        self.dir = tempfile.mkdtemp(prefix="wharf-pg-")
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as_owner = ["runuser", "-u", "postgres", "--"]
        self.host, self.port = "127.0.0.1", free_port()
        self._options = (f"-p {self.port} -k {self.dir} -c listen_addresses={self.host} -c fsync=off "
                         f"-c full_page_writes=off -c synchronous_commit=off -c max_connections={max_connections}")
        self._pg("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-N", "-E", "UTF8",
                 "--no-instructions")

    @property
    def data(self) -> str:
        return f"{self.dir}/data"

    def _pg(self, tool: str, *args: str, check: bool = True) -> None:
        subprocess.run([*self._as_owner, f"{PGBIN}/{tool}", *args], check=check, cwd=self.dir,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=None if check else subprocess.DEVNULL)

    def start(self) -> None:
        self._pg("pg_ctl", "-D", self.data, "-l", f"{self.dir}/log", "-w", "-o", self._options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def new_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(host=self.host, port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{name}"

    def close(self) -> None:
        self._pg("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_server_binary() -> str | None:
    """redis-server's path, installing the Debian package once where we are root and it is
    missing (RECIPES.md section 3); None when it still is not there."""
    exe = shutil.which("redis-server")
    if exe or os.geteuid() != 0 or not shutil.which("apt-get"):
        return exe
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-q"]
    try:
        subprocess.run(apt + ["update"], env=env, check=True, capture_output=True, timeout=300)
        subprocess.run(apt + ["install", "-y", "--no-install-recommends", "redis-server"],
                       env=env, check=True, capture_output=True, timeout=600)
    except (subprocess.SubprocessError, OSError):
        return None
    return shutil.which("redis-server")


class RedisServer:
    """A redis-server without persistence on a free port; kill() and start() again keep
    the port, so a client configured with `url` reconnects to the new process."""

    def __init__(self, exe: str):
        self.exe = exe
        self.dir = tempfile.mkdtemp(prefix="wharf-redis-")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def _log(self) -> str:
        path = f"{self.dir}/log"
        return open(path, errors="replace").read() if os.path.exists(path) else ""

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url).ping())
        except redis.ConnectionError:
            return False

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                                      "--appendonly", "no", "--dir", self.dir, "--logfile", f"{self.dir}/log"],
                                     stdin=subprocess.DEVNULL)
        wait_until(self._answers, "redis-server", 10, alive=lambda: self.proc.poll() is None, log=self._log)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresCluster]:
    """A started cluster, removed afterwards; the test is skipped where none can start."""
    if reason := PostgresCluster.unavailable():
        pytest.skip(reason)
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    """A started redis-server, removed afterwards; the test is skipped where none can start."""
    exe = redis_server_binary()
    if exe is None:
        pytest.skip("redis-server is not installed and `apt-get install redis-server` failed")
    server = RedisServer(exe)
    try:
        try:
            server.start()
        except RuntimeError as e:
            pytest.skip(f"redis-server could not start: {e}")
        yield server
    finally:
        server.close()

"""Fixtures for the policy primitives: a real, throwaway redis-server.

Follows /work/shared/RECIPES.md section 3. If redis-server is not installed we
try `apt-get install redis-server` once; tests that need Redis are skipped
(with the reason) only if it still cannot start.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_redis_server() -> str | None:
    exe = shutil.which("redis-server")
    if exe:
        return exe
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-q"]
        try:
            subprocess.run(apt + ["update"], env=env, check=True, capture_output=True, timeout=300)
            subprocess.run(apt + ["install", "-y", "--no-install-recommends", "redis-server"],
                           env=env, check=True, capture_output=True, timeout=600)
        except (subprocess.SubprocessError, OSError):
            return None
    return shutil.which("redis-server")


@pytest.fixture(scope="session")
def redis_url():
    import redis

    exe = _ensure_redis_server()
    if exe is None:
        pytest.skip("redis-server is not installed and `apt-get install redis-server` failed")
    d = tempfile.mkdtemp(prefix="wharf-redis-")
    port = _free_port()
    proc = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", d, "--logfile", f"{d}/log"],
                            stdin=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = open(f"{d}/log").read()[-2000:] if os.path.exists(f"{d}/log") else ""
                    pytest.skip(f"redis-server could not start: {log}")
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(d, ignore_errors=True)

"""`wharf serve` runs its HTTP thread below the model threads' CPU priority (serve.py,
lower_this_threads_priority), and the setting's range is checked."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pydantic
import pytest

from wharf.config import Settings


def _nice_of_threads(pid: int) -> dict[int, int]:
    """Thread id -> nice, from /proc (field 19 of stat, after the command's parentheses)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rpartition(")")[2].split()
        out[int(task.name)] = int(fields[16])
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_http_thread_runs_below_the_model_threads(server):
    nice = _nice_of_threads(server.proc.pid)
    base = os.getpriority(os.PRIO_PROCESS, 0)      # what the server inherited from this process
    assert nice[server.proc.pid] == min(base + Settings().server_nice, 19)   # the main thread: HTTP, SSE
    assert sum(n == base for n in nice.values()) >= 1, nice                  # the model thread and its team


@pytest.mark.parametrize("bad", [-1, 20])
def test_server_nice_out_of_range_is_refused(bad):
    with pytest.raises(pydantic.ValidationError):
        Settings(server_nice=bad)

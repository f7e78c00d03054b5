"""The app factory: mounts the dialects, the admin API and the console on one pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import importlib
import logging
import re
import secrets

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import JSONResponse, Response

from wharf import __version__
from wharf.api.body_limit import BodyLimit
from wharf.api.common import bearer_token
from wharf.api.errors import openai_error
from wharf.api.path_errors import DIALECTS, error_for_path
from wharf.api.pipeline import Pipeline
from wharf.api.request_ids import RequestIds
from wharf.api.throttle import ControlThrottle, control_limits
from wharf.config import Settings
from wharf.errors import Overloaded, WharfError
from wharf.platform.core import Platform
from wharf.platform.lexicon_store import LexiconSync
from wharf.platform.limits import make_limiter
from wharf.platform.metrics import Metrics
from wharf.platform.safety import SafetyPolicy, load_terms
from wharf.platform.tenancy import LimitValues

log = logging.getLogger("wharf")

# Routers added by other parts of the code base; each is optional so the app still
# starts while one is being built. (module, attribute that builds or is the router)
_OPTIONAL_ROUTERS = [
    ("wharf.api.admin", "build_admin_router"),
    ("wharf.api.admin_requests", "build_requests_router"),
    ("wharf.api.admin_keys", "build_keys_router"),
    ("wharf.api.admin_audit", "build_audit_router"),
    ("wharf.api.admin_stats", "build_stats_router"),
    ("wharf.api.admin_content", "build_content_router"),
    ("wharf.console", "build_console_router"),
]


def _mount_optional(app: FastAPI) -> None:
    for module_name, attr in _OPTIONAL_ROUTERS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        router = getattr(module, attr, None)
        if router is None:
            continue
        app.include_router(router() if callable(router) and attr.startswith("build") else router)


def create_app(settings: Settings, registry, platform: Platform | None = None) -> FastAPI:
    """`registry` is a loaded ModelRegistry (the caller owns its lifetime)."""
    platform = platform or Platform.open(settings, model_exists=lambda name: name in registry.names())
    metrics = Metrics()
    lexicon_path = settings.resolved_lexicon_path      # WHARF_LEXICON_PATH, else data_dir/lexicon.txt
    safety = SafetyPolicy()
    # The shared store holds the lexicon; the file only seeds a store that has none yet.
    lexicon = LexiconSync(platform.lexicon, safety)
    lexicon.start(lambda: load_terms(lexicon_path) if lexicon_path.exists() else [])
    limiter = make_limiter(settings.redis_url)

    async def reconcile_forever(every: float) -> None:
        """Give back reservations of requests that died with another process (a replica
        killed mid-request): none outlives its deadline, so older ones are leftovers."""
        while True:
            await asyncio.sleep(every)
            try:
                n = await asyncio.to_thread(platform.reconcile, older_than_s=settings.request_timeout_s + 60)
                if n:
                    log.warning("released %d stale quota reservation(s)", n)
            except Exception as exc:        # the store may be down for a moment; try again later
                log.warning("quota reconcile failed: %s", exc)

    async def refresh_lexicon_forever(every: float) -> None:
        """Follow lexicon changes made on other replicas (one tiny SELECT per interval,
        off the request path)."""
        failing = False
        while True:
            await asyncio.sleep(every)
            try:
                if await asyncio.to_thread(lexicon.refresh):
                    log.info("safety lexicon: now version %s (%d terms)", lexicon.version, len(safety.terms))
                if failing:
                    log.info("safety lexicon: store reachable again")
                failing = False
            except Exception as exc:        # keep enforcing the lexicon we have; log once per outage
                if not failing:
                    log.warning("safety lexicon refresh failed (keeping the current one): %s",
                                str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                failing = True

    async def prune_tokens_forever(every: float) -> None:
        """Expired OAuth tokens out of the store, a few hundred rows per transaction."""
        from wharf.platform.token_prune import prune_expired_tokens
        while True:
            await asyncio.sleep(every)
            try:
                n = await asyncio.to_thread(prune_expired_tokens, platform.store)
                if n:
                    log.info("deleted %d expired OAuth token(s)", n)
            except Exception as exc:        # the store may be down for a moment; try again later
                log.warning("expired-token prune failed: %s", str(exc).splitlines()[0] if str(exc) else exc)

    async def prune_request_log_forever(every: float, retention) -> None:
        """Request-log records past their retention out of the store, in small batches."""
        while True:
            await asyncio.sleep(every)
            try:
                n = await asyncio.to_thread(platform.request_log.prune, retention=retention)
                if n:
                    log.info("deleted %d request-log record(s) past retention", n)
            except Exception as exc:        # the store may be down for a moment; try again later
                log.warning("request-log prune failed: %s", str(exc).splitlines()[0] if str(exc) else exc)

    async def prune_contents_forever(every: float) -> None:
        """Stored request contents past their account's retention, or of an account that opted out."""
        while True:
            await asyncio.sleep(every)
            try:
                n = await asyncio.to_thread(platform.request_contents.prune)
                if n:
                    log.info("deleted %d stored request content(s) past retention", n)
            except Exception as exc:        # the store may be down for a moment; try again later
                log.warning("request-content prune failed: %s", str(exc).splitlines()[0] if str(exc) else exc)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        access = logging.getLogger("uvicorn.access")       # configured by now
        if not any(isinstance(f, RedactSecrets) for f in access.filters):
            access.addFilter(RedactSecrets())
        every = getattr(settings, "reconcile_interval_s", 0) or 0
        task = asyncio.create_task(reconcile_forever(every)) if every > 0 else None
        lexicon_every = getattr(settings, "lexicon_refresh_s", 0) or 0
        lexicon_task = asyncio.create_task(refresh_lexicon_forever(lexicon_every)) if lexicon_every > 0 else None
        prune_every = settings.token_prune_interval_s
        prune_task = asyncio.create_task(prune_tokens_forever(prune_every)) if prune_every > 0 else None
        retention_days, log_every = settings.request_log_retention_days, settings.request_log_prune_interval_s
        log_task = (asyncio.create_task(prune_request_log_forever(log_every, dt.timedelta(days=retention_days)))
                    if retention_days > 0 and log_every > 0 else None)
        # Stored prompts / outputs past each account's own retention (none unless one opted in).
        content_task = asyncio.create_task(prune_contents_forever(log_every)) if log_every > 0 else None
        yield
        for t in (task, lexicon_task, prune_task, log_task, content_task):
            if t is not None:
                t.cancel()
        limiter.close()

    app = FastAPI(title="Wharf", version=__version__, lifespan=lifespan,
                  description="Open models behind the Qianfan, WeLM, SenseNova and OpenAI APIs.")
    app.state.settings = settings
    app.state.registry = registry
    app.state.platform = platform
    app.state.metrics = metrics
    app.state.safety = safety
    app.state.lexicon = lexicon                         # PUT /admin/api/safety/lexicon writes through it
    app.state.lexicon_path = lexicon_path               # where PUT /admin/api/safety/lexicon persists
    app.state.limiter = limiter
    # Middleware runs outermost-last-added: the throttle, then the body limit, then routes.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.state.console_proxy_token = secrets.token_urlsafe(32)   # the console's own admin calls (throttle.py)
    per_key = control_limits(settings.control_rpm, settings.control_qps)
    app.add_middleware(ControlThrottle, limiter=limiter,
                       per_credential={"admin": per_key, "console": per_key,
                                       "oauth": control_limits(settings.oauth_token_rpm, 0)},
                       per_ip=control_limits(settings.control_ip_rpm, settings.control_ip_qps),
                       proxy_token=app.state.console_proxy_token)
    app.add_middleware(RequestIds)       # outermost: every answer, throttled ones too, has X-Request-Id
    app.state.pipeline = Pipeline(registry, platform, limiter, safety, metrics,
                                  timeout_s=settings.request_timeout_s,
                                  # None: no limit, 0: nothing allowed (README "Limits").
                                  default_limits=LimitValues(rpm=settings.default_rpm, tpm=settings.default_tpm,
                                                             qps=settings.default_qps,
                                                             max_concurrency=settings.default_max_concurrency))

    engines = list(registry.engines.values())
    metrics.bind_engine_stats(queue_depth=lambda: sum(e.stats().waiting for e in engines),
                              running_batch=lambda: sum(e.stats().running for e in engines))
    kv_engines = [e for e in engines if e.stats().kv_cache_usage is not None]
    if kv_engines:          # the vLLM backend: its KV cache in use, per model
        metrics.bind_kv_cache_usage(lambda: [(e.info.name, e.stats().kv_cache_usage or 0.0) for e in kv_engines])
    if any(e.info.backend == "vllm" for e in engines):
        metrics.bind_foreign("vllm:")   # and vLLM's own series (its PrometheusStatLogger's)
    if engines and engines[0].stats().upstreams is not None:
        # The upstream backend: one pool of replicas shared by every model.
        metrics.bind_upstream_stats(lambda: engines[0].stats().upstreams or [])

    for dialect in DIALECTS:
        if dialect.router is not None:
            app.include_router(dialect.router)
    _mount_optional(app)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in err["loc"] if p != "body")
        return JSONResponse({"error": {"message": f"{param}: {err['msg']}", "type": "invalid_request_error",
                                       "param": param or None, "code": None}}, status_code=400)

    # The store or Redis unavailable for a moment: a retryable "unavailable" answer in the
    # caller's dialect (never a bare 500 with a traceback); service resumes by itself once
    # they are back (pool_pre_ping / redis-py reconnect).
    from sqlalchemy.exc import DBAPIError
    unavailable_types: list[type] = [DBAPIError]
    try:
        from redis.exceptions import RedisError
        unavailable_types.append(RedisError)
    except ImportError:
        pass

    async def _unavailable(request: Request, exc: Exception):
        log.warning("%s %s: backing service unavailable: %s", request.method, request.url.path,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return unavailable_response(request.url.path)

    for exc_type in unavailable_types:
        app.add_exception_handler(exc_type, _unavailable)

    @app.get("/health", tags=["ops"])
    async def health():
        return {"status": "ok", "models": [e.info.name for e in engines]}

    @app.get("/metrics", tags=["ops"])
    async def prometheus():
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/engine/stats", tags=["ops"])
    async def engine_stats(request: Request):
        """Per model, what it is; and for an admin key its live traffic (queue, batch, rates,
        prefix-cache and upstream counters), which tells of every account's use. Any other
        valid key sees the model facts only. /health and /metrics stay open for probes."""
        try:
            principal = platform.authenticator.bearer(bearer_token(request))
        except WharfError as exc:
            return openai_error(exc)
        out = {}
        for e in engines:
            stats = e.stats()
            traffic = engine_stats_fields(stats) if principal.is_admin else {"max_batch_size": stats.max_batch_size}
            out[e.info.name] = {**traffic, "context_length": e.info.context_length, "backend": e.info.backend,
                                "identity": e.info.identity}
        return out

    return app


def engine_stats_fields(stats) -> dict:
    """An EngineStats as JSON fields; `upstreams` (the upstream backend's replicas) only
    where there are any, so other backends' stats keep their shape."""
    fields = dataclasses.asdict(stats)
    for name in ("upstreams", "kv_cache_usage"):    # only the backends that have them
        if fields.get(name) is None:
            fields.pop(name, None)
    return fields


class RedactSecrets(logging.Filter):
    """Access-log lines carry the query string, where Qianfan clients put their secrets
    (?access_token=..., /oauth/2.0/token?client_secret=...): log them as ***."""

    PATTERN = re.compile(r"((?:access_token|client_secret|refresh_token|api_key|secret_key|token)=)[^&\s\"]*",
                         re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.PATTERN.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = self.PATTERN.sub(r"\1***", record.msg)
        return True


def unavailable_response(path: str) -> Response:
    """'Try again shortly' in the dialect that owns `path` (the store or Redis is down):
    Qianfan HTTP 200 + 336100 (the SDK retries it), OAuth temporarily_unavailable, 503s."""
    return error_for_path(path, Overloaded("a backing service (database or rate limiter) is unavailable; "
                                           "retry shortly"))

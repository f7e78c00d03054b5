"""Prometheus metrics for the gateway, on a registry of their own.

Each `Metrics()` owns a fresh CollectorRegistry (never the global one), so an
app factory can build one per app and tests can create apps repeatedly::

    metrics = Metrics()
    metrics.bind_engine_stats(queue_depth=lambda: sched.waiting, running_batch=lambda: sched.running)
    metrics.observe_request("openai", "ok", prompt_tokens=12, completion_tokens=40,
                            ttft=0.08, tpot=0.02, latency=0.9)
    body, content_type = metrics.render()                 # for GET /metrics

Series (all prefixed `wharf_`):
    requests_total{dialect,status}       tokens_total{direction=in|out,dialect}
    ttft_seconds, tpot_seconds, request_latency_seconds   (histograms, label dialect)
    queue_depth, running_batch           (gauges; set directly or via a callback)
    rate_limited_total{reason}           quota_rejections_total
    content_blocked_total{stage=input|output}
    upstream_up{url}, upstream_in_flight{url}, upstream_requests_total{url},
    upstream_failures_total{url}         (replicas behind the upstream backend; read at
                                         scrape time from bind_upstream_stats)
    kv_cache_usage{model}                (share of the engine's KV cache in use, 0-1, for the
                                         engines that report one: the vLLM backend; read at
                                         scrape time from bind_kv_cache_usage)
Behind the vLLM backend (bind_foreign("vllm:")), vLLM's own series as well, from the
process-wide registry its PrometheusStatLogger writes to: vllm:num_requests_running,
vllm:num_requests_waiting, vllm:kv_cache_usage_perc, vllm:prompt_tokens_total, ...
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

log = logging.getLogger(__name__)

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.0, 2.5)
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _safe(fn: Callable[[], float]) -> Callable[[], float]:
    """A scrape must never fail because the engine's stats callback did."""

    def call() -> float:
        try:
            return float(fn())
        except Exception:
            log.debug("metrics callback failed", exc_info=True)
            return math.nan

    return call


class ReplicaRow(Protocol):
    """What the replica series read of one upstream replica (engine.types.UpstreamStats)."""

    url: str
    healthy: bool
    in_flight: int
    requests: int
    failures: int


class _ScrapeTimeCollector:
    """Series built from live figures at every scrape (a custom collector: the figures
    live in the engines, not in this registry). A scrape never fails because the
    callback did: it then reports no rows."""

    what = "stats"

    def __init__(self, namespace: str, rows: Callable[[], Iterable]):
        self.ns, self.rows = namespace, rows

    def describe(self):
        return list(self._families([]))

    def collect(self):
        try:
            rows = list(self.rows())
        except Exception:
            log.debug("%s callback failed", self.what, exc_info=True)
            rows = []
        return self._families(rows)

    def _families(self, rows) -> list:
        raise NotImplementedError


class _ReplicaCollector(_ScrapeTimeCollector):
    """The upstream replicas' series, from the pool's live counts."""

    what = "upstream stats"

    def _families(self, rows):
        ns = self.ns
        up = GaugeMetricFamily(f"{ns}_upstream_up", "1 while the upstream replica takes requests.",
                               labels=["url"])
        busy = GaugeMetricFamily(f"{ns}_upstream_in_flight", "Requests in flight to the replica from "
                                 "this gateway.", labels=["url"])
        sent = CounterMetricFamily(f"{ns}_upstream_requests", "Attempts sent to the replica (a "
                                   "failed-over request counts on each).", labels=["url"])
        failed = CounterMetricFamily(f"{ns}_upstream_failures", "Attempts the replica failed "
                                     "(unreachable, 5xx/429, broken stream).", labels=["url"])
        for r in rows:
            up.add_metric([r.url], 1.0 if r.healthy else 0.0)
            busy.add_metric([r.url], r.in_flight)
            sent.add_metric([r.url], r.requests)
            failed.add_metric([r.url], r.failures)
        return [up, busy, sent, failed]


class _KvCacheCollector(_ScrapeTimeCollector):
    """kv_cache_usage{model}, read from the engines."""

    what = "kv cache stats"

    def _families(self, rows):
        usage = GaugeMetricFamily(f"{self.ns}_kv_cache_usage", "Share of the engine's KV cache in use "
                                  "(0-1; the vLLM backend's own figure).", labels=["model"])
        for model, value in rows:
            usage.add_metric([model], value)
        return [usage]


class _ForeignCollector:
    """Another registry's families whose names start with `prefix`, read at every scrape
    (vLLM's own series, which it registers in prometheus_client's global registry)."""

    def __init__(self, registry, prefix: str):
        self.source, self.prefix = registry, prefix

    def describe(self):
        return []                      # no names claimed up front: they are vLLM's to choose

    def collect(self):
        try:
            families = [m for m in self.source.collect() if m.name.startswith(self.prefix)]
        except Exception:              # a scrape must never fail because the other registry did
            log.debug("foreign registry collect failed", exc_info=True)
            families = []
        return families


class Metrics:
    def __init__(self, namespace: str = "wharf", registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.namespace = namespace
        r, ns = self.registry, namespace
        self.requests = Counter("requests", "Requests finished, by dialect and status.",
                                ["dialect", "status"], namespace=ns, registry=r)
        self.tokens = Counter("tokens", "Tokens processed: in = prompt, out = completion.",
                              ["direction", "dialect"], namespace=ns, registry=r)
        self.ttft = Histogram("ttft_seconds", "Time to first token.", ["dialect"],
                              buckets=TTFT_BUCKETS, namespace=ns, registry=r)
        self.tpot = Histogram("tpot_seconds", "Time per output token after the first.", ["dialect"],
                              buckets=TPOT_BUCKETS, namespace=ns, registry=r)
        self.latency = Histogram("request_latency_seconds", "Whole request latency.", ["dialect"],
                                 buckets=LATENCY_BUCKETS, namespace=ns, registry=r)
        self.queue_depth = Gauge("queue_depth", "Requests waiting for admission to the engine.",
                                 namespace=ns, registry=r)
        self.running_batch = Gauge("running_batch", "Sequences in the engine's running batch.",
                                   namespace=ns, registry=r)
        self.rate_limited_total = Counter("rate_limited", "Requests refused by a rate limit.", ["reason"],
                                          namespace=ns, registry=r)
        self.quota_rejections = Counter("quota_rejections", "Requests refused because quota is spent.",
                                        namespace=ns, registry=r)
        self.content_blocked_total = Counter("content_blocked", "Requests stopped by the safety lexicon.",
                                             ["stage"], namespace=ns, registry=r)

    # ---------------------------------------------------------------- requests

    def observe_request(self, dialect: str, status: str | int, prompt_tokens: int = 0,
                        completion_tokens: int = 0, ttft: float | None = None,
                        tpot: float | None = None, latency: float | None = None) -> None:
        """Record one finished request. `status` is free-form ("ok", an error
        kind such as "rate_limited", or an HTTP code); None timings are skipped."""
        self.requests.labels(dialect=dialect, status=str(status)).inc()
        self.observe_tokens(dialect, prompt_tokens, completion_tokens)
        if ttft is not None:
            self.ttft.labels(dialect=dialect).observe(ttft)
        if tpot is not None:
            self.tpot.labels(dialect=dialect).observe(tpot)
        if latency is not None:
            self.latency.labels(dialect=dialect).observe(latency)

    def observe_tokens(self, dialect: str, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        if prompt_tokens:
            self.tokens.labels(direction="in", dialect=dialect).inc(prompt_tokens)
        if completion_tokens:
            self.tokens.labels(direction="out", dialect=dialect).inc(completion_tokens)

    # ---------------------------------------------------------------- policy

    def rate_limited(self, reason: str) -> None:
        """reason: "rpm", "tpm", "qps" or "concurrency" (RateLimited.reason)."""
        self.rate_limited_total.labels(reason=reason or "unknown").inc()

    def quota_rejected(self) -> None:
        self.quota_rejections.inc()

    def content_blocked(self, stage: str) -> None:
        """stage: "input" or "output" (ContentBlocked.reason)."""
        self.content_blocked_total.labels(stage=stage).inc()

    def count_error(self, exc: BaseException) -> None:
        """Bump the policy counter matching a wharf error, if any (by its `kind`)."""
        kind = getattr(exc, "kind", None)
        if kind == "rate_limited":
            self.rate_limited(getattr(exc, "reason", None) or "unknown")
        elif kind == "quota_exceeded":
            self.quota_rejected()
        elif kind == "content_blocked":
            self.content_blocked(getattr(exc, "reason", None) or "unknown")

    # ---------------------------------------------------------------- engine gauges

    def set_queue_depth(self, n: float) -> None:
        self.queue_depth.set(n)

    def set_running_batch(self, n: float) -> None:
        self.running_batch.set(n)

    def bind_engine_stats(self, queue_depth: Callable[[], float] | None = None,
                          running_batch: Callable[[], float] | None = None) -> None:
        """Read the gauges from callbacks at scrape time (errors read as NaN)."""
        if queue_depth is not None:
            self.queue_depth.set_function(_safe(queue_depth))
        if running_batch is not None:
            self.running_batch.set_function(_safe(running_batch))

    def bind_kv_cache_usage(self, rows: Callable[[], Iterable[tuple[str, float]]]) -> None:
        """Export kv_cache_usage{model} from (model, usage) pairs read at scrape time."""
        self.registry.register(_KvCacheCollector(self.namespace, rows))

    def bind_foreign(self, prefix: str, registry=None) -> None:
        """Also export another registry's series named `prefix`... (default: the global one)."""
        from prometheus_client import REGISTRY
        self.registry.register(_ForeignCollector(REGISTRY if registry is None else registry, prefix))

    def bind_upstream_stats(self, rows: Callable[[], Iterable[ReplicaRow]]) -> None:
        """Export the upstream backend's replicas (read from `rows` at scrape time)."""
        self.registry.register(_ReplicaCollector(self.namespace, rows))

    # ---------------------------------------------------------------- exposition

    def render(self) -> tuple[bytes, str]:
        """(body, content type) for a GET /metrics response."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

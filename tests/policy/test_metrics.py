"""Prometheus metrics on a private registry."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from wharf.errors import ContentBlocked, QuotaExceeded, RateLimited
from wharf.platform.metrics import Metrics


def samples(m: Metrics) -> dict[tuple, float]:
    body, ctype = m.render()
    assert ctype.startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_observations_appear_in_render():
    m = Metrics()
    m.observe_request("openai", "ok", prompt_tokens=12, completion_tokens=40, ttft=0.08, tpot=0.02, latency=0.9)
    m.observe_request("openai", "ok", prompt_tokens=3, completion_tokens=5, ttft=0.2, tpot=0.01, latency=0.3)
    m.observe_request("qianfan", 429)
    m.rate_limited("rpm")
    m.count_error(RateLimited("x", reason="tpm"))
    m.count_error(QuotaExceeded("x", reason="daily"))
    m.quota_rejected()
    m.content_blocked("input")
    m.count_error(ContentBlocked("x", reason="output"))
    m.count_error(ValueError("not ours"))
    m.set_queue_depth(4)
    m.set_running_batch(7)
    s = samples(m)
    assert s[("wharf_requests_total", (("dialect", "openai"), ("status", "ok")))] == 2
    assert s[("wharf_requests_total", (("dialect", "qianfan"), ("status", "429")))] == 1
    assert s[("wharf_tokens_total", (("dialect", "openai"), ("direction", "in")))] == 15
    assert s[("wharf_tokens_total", (("dialect", "openai"), ("direction", "out")))] == 45
    assert ("wharf_tokens_total", (("dialect", "qianfan"), ("direction", "in"))) not in s
    assert s[("wharf_ttft_seconds_count", (("dialect", "openai"),))] == 2
    assert math.isclose(s[("wharf_ttft_seconds_sum", (("dialect", "openai"),))], 0.28)
    assert s[("wharf_ttft_seconds_bucket", (("dialect", "openai"), ("le", "0.1")))] == 1
    assert s[("wharf_tpot_seconds_count", (("dialect", "openai"),))] == 2
    assert s[("wharf_request_latency_seconds_count", (("dialect", "openai"),))] == 2
    assert ("wharf_request_latency_seconds_count", (("dialect", "qianfan"),)) not in s
    assert s[("wharf_rate_limited_total", (("reason", "rpm"),))] == 1
    assert s[("wharf_rate_limited_total", (("reason", "tpm"),))] == 1
    assert s[("wharf_quota_rejections_total", ())] == 2
    assert s[("wharf_content_blocked_total", (("stage", "input"),))] == 1
    assert s[("wharf_content_blocked_total", (("stage", "output"),))] == 1
    assert s[("wharf_queue_depth", ())] == 4
    assert s[("wharf_running_batch", ())] == 7


def test_gauges_from_callbacks_and_failing_callback():
    m = Metrics()
    state = {"q": 1, "b": 2}
    m.bind_engine_stats(queue_depth=lambda: state["q"], running_batch=lambda: state["b"])
    s = samples(m)
    assert s[("wharf_queue_depth", ())] == 1 and s[("wharf_running_batch", ())] == 2
    state["q"] = 9
    assert samples(m)[("wharf_queue_depth", ())] == 9
    m.bind_engine_stats(running_batch=lambda: 1 / 0)
    assert math.isnan(samples(m)[("wharf_running_batch", ())])


def test_private_registries_are_independent():
    a, b = Metrics(), Metrics()                 # would raise "Duplicated timeseries" on a shared registry
    a.quota_rejected()
    assert samples(a)[("wharf_quota_rejections_total", ())] == 1
    assert samples(b)[("wharf_quota_rejections_total", ())] == 0
    from prometheus_client import REGISTRY
    assert REGISTRY.get_sample_value("wharf_quota_rejections_total") is None


def test_upstream_replica_series_are_read_at_scrape_time_and_never_break_a_scrape():
    from wharf.engine.types import UpstreamStats

    replicas = [UpstreamStats(url="http://a:8000", healthy=True, in_flight=2, requests=10, failures=1)]
    m = Metrics()
    m.bind_upstream_stats(lambda: replicas)
    text = m.render()[0].decode()
    assert 'wharf_upstream_up{url="http://a:8000"} 1.0' in text
    assert 'wharf_upstream_requests_total{url="http://a:8000"} 10.0' in text
    replicas[0] = UpstreamStats(url="http://a:8000", healthy=False, failures=3)
    text = m.render()[0].decode()                       # the next scrape sees the change
    assert 'wharf_upstream_up{url="http://a:8000"} 0.0' in text
    assert 'wharf_upstream_failures_total{url="http://a:8000"} 3.0' in text
    broken = Metrics()
    broken.bind_upstream_stats(lambda: 1 / 0)
    body = broken.render()[0].decode()                  # a failing pool: no exception, no rows
    assert "# TYPE wharf_upstream_up gauge" in body and "wharf_upstream_up{" not in body

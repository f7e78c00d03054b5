"""docs/grafana/wharf.json against real servers: every series its PromQL reads exists in
the /metrics of a real `wharf serve` (the embedded engine, and a gateway with the upstream
backend in front of it for the replica series), with the labels it filters on; a name
ending in _bucket / _count / _sum resolves to its histogram. compose.yaml provisions it.

The one series neither of those serves is wharf_kv_cache_usage (the vLLM backend's KV
cache): it is checked on the collector the app binds for that backend (api/app.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import MODEL

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana" / "wharf.json"
VLLM_BACKEND_ONLY = {"wharf_kv_cache_usage"}
# Labels Prometheus adds at scrape time, never in /metrics itself.
SCRAPE_LABELS = {"instance", "job"}
SELECTOR = re.compile(r"\b(wharf_[a-z0-9_]+)(?:\{([^}]*)\})?")
HISTOGRAM_PARTS = ("_bucket", "_count", "_sum")


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _queries(dash: dict) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        q = var.get("query")
        if isinstance(q, dict):
            exprs.append(q["query"])
    return exprs


def _selectors(dash: dict) -> dict[str, set[str]]:
    """Each series the dashboard reads -> the label names it filters on."""
    out: dict[str, set[str]] = {}
    for expr in _queries(dash):
        for name, matchers in SELECTOR.findall(expr):
            labels = {m.split("=")[0].strip().rstrip("!~") for m in matchers.split(",") if "=" in m}
            out.setdefault(name, set()).update(labels)
    return out


class Exposition:
    """The families (by # TYPE) and the label names seen on each sample name of /metrics text."""

    def __init__(self, text: str):
        self.types: dict[str, str] = {}
        self.labels: dict[str, set[str]] = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                self.types[name] = kind
            elif line and not line.startswith("#"):
                head = line.split(" ", 1)[0]
                name, _, rest = head.partition("{")
                found = self.labels.setdefault(name, set())
                found.update(m.split("=", 1)[0] for m in re.findall(r'(\w+)="', rest))

    def resolve(self, name: str) -> str | None:
        """The family a queried name reads: itself, or the histogram of a _bucket/_count/_sum."""
        if name in self.types or name in self.labels:
            return name
        for part in HISTOGRAM_PARTS:
            if name.endswith(part) and self.types.get(name[: -len(part)]) == "histogram":
                return name[: -len(part)]
        return None


@pytest.fixture(scope="module")
def expositions(server, server_factory, model_cache_dir) -> list[Exposition]:
    """/metrics of the shared server and of an upstream gateway in front of it, each after
    one answered request (so labelled series have samples)."""
    from wharf.engine.loader import embedded_model_path, model_folder

    _, up_key = server.account("dash-upstream")
    gateway = server_factory(extra_env={
        "WHARF_BACKEND": "upstream", "WHARF_UPSTREAM_URL": server.url, "WHARF_UPSTREAM_API_KEY": up_key,
        "WHARF_UPSTREAM_TOKENIZER": str(model_folder(embedded_model_path(), model_cache_dir))})
    out = []
    for srv in (server, gateway):
        _, key = srv.account("dash-client")
        r = httpx.post(srv.url + "/v1/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                       json={"model": MODEL, "prompt": "你好，今天天气", "max_tokens": 3})
        assert r.status_code == 200, r.text
        out.append(Exposition(httpx.get(srv.url + "/metrics", timeout=30).text))
    return out


def test_every_series_the_dashboard_reads_exists(expositions):
    wanted = _selectors(_dashboard())
    assert len(wanted) >= 15, wanted
    missing, bad_labels = [], []
    for name, labels in sorted(wanted.items()):
        if name in VLLM_BACKEND_ONLY:
            continue
        hits = [(e, e.resolve(name)) for e in expositions if e.resolve(name)]
        if not hits:
            missing.append(name)
            continue
        # The labels it filters on are on the series (where the series has samples here).
        sampled = [e.labels[name] for e, _ in hits if name in e.labels]
        seen = set().union(*sampled)
        if sampled and not labels - SCRAPE_LABELS <= seen:
            bad_labels.append((name, sorted(labels - SCRAPE_LABELS - seen)))
    assert missing == [], f"the dashboard queries series no server exports: {missing}"
    assert bad_labels == [], f"the dashboard filters on labels these series lack: {bad_labels}"


def test_the_vllm_backend_series_exist_on_its_collector():
    from wharf.platform.metrics import Metrics

    m = Metrics()
    m.bind_kv_cache_usage(lambda: [(MODEL, 0.25)])          # what api/app.py binds for --backend vllm
    exposed = Exposition(m.render()[0].decode())
    for name in VLLM_BACKEND_ONLY:
        assert exposed.resolve(name) == name and "model" in exposed.labels[name]
    assert VLLM_BACKEND_ONLY <= set(_selectors(_dashboard()))


def test_dashboard_is_well_formed():
    dash = _dashboard()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "instance", "dialect"}
    for p in dash["panels"]:
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}" and t["expr"].count("(") == t["expr"].count(")")
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("requests", "error", "tokens", "first token", "latency", "engine",
                  "kv cache", "quota", "rate-limited", "upstream"):
        assert topic in titles, topic


def test_compose_provisions_the_dashboard():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = {c["source"]: c["target"] for c in grafana["configs"]}
    configs = compose["configs"]
    assert (ROOT / configs["grafana_dashboard_wharf"]["file"]).resolve() == DASHBOARD.resolve()
    provider = yaml.safe_load(configs["grafana_dashboards"]["content"])["providers"][0]
    assert Path(mounts["grafana_dashboard_wharf"]).parent == Path(provider["options"]["path"])
    source = yaml.safe_load(configs["grafana_datasource"]["content"])["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    scrape = yaml.safe_load(configs["prometheus"]["content"])["scrape_configs"]
    wharf_job = next(j for j in scrape if j["job_name"] == "wharf")
    assert "gateway-a:8000" in wharf_job["static_configs"][0]["targets"]

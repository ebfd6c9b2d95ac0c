"""deploy/prometheus and deploy/grafana: valid for promtool, the alerts fire when (and only when) they should,
and every query names series, and labels, that the app really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from captioner.observability.gpu_metrics import GpuCollector
from captioner.observability.metrics import Metrics
from tests.support.fakes import FakeNvml
from tests.support.images import photo
from tests.support.model import tiny_settings
from tests.support.paths import REPO_ROOT
from tests.support.servers import LiveServer

ROOT = REPO_ROOT
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "captioner-dashboard.json"
# Series Prometheus itself adds to every scrape target.
PROMETHEUS_OWN = {"up"}
# Labels every scraped series gets from Prometheus, plus the histogram's bucket label.
SCRAPE_LABELS = {"instance", "job", "le"}
PNG = {"Content-Type": "image/png"}
ALERTS = {
    "CaptionerLatencyP99High",
    "CaptionerErrorRatioHigh",
    "CaptionerQueueNearlyFull",
    "CaptionerDrift",
    "CaptionerNotReady",
    "CaptionerDown",
}


@pytest.fixture(scope="module")
def exported(tiny_model_dir: Path) -> dict[str, set[str]]:
    """Every sample name the app exports after some traffic, with its label names: read from a live server's
    /metrics (drift scores included), plus the GPU series from a fake NVML (this machine has no GPU)."""
    settings = tiny_settings(
        tiny_model_dir,
        generation={"num_beams": 1, "max_length": 6, "min_length": 1},
        drift={"window": 10, "reference_size": 10, "min_window": 10},
    )
    with LiveServer(settings) as server:
        for seed in range(20):
            response = httpx.post(server.url + "/api/v1/caption", content=photo(seed), headers=PNG, timeout=60)
            assert response.status_code == 200
        httpx.post(server.url + "/api/v1/caption", content=photo(0), headers=PNG)  # a cache hit
        assert httpx.post(server.url + "/api/v1/caption", content=b"junk", headers=PNG).status_code == 400
        text = httpx.get(server.url + "/metrics").text
    gpu = Metrics(gpu=GpuCollector(FakeNvml(), uuid_of=lambda index: "GPU-aaaa"))
    assert gpu.watch_gpu("cuda:0")
    text += generate_latest(gpu.registry).decode()
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    # Series the app declares but shows only once a feature has been used (Redis errors, callbacks, canary
    # rollbacks, watchdog kills...): a labelled metric has no sample before its first labels are set.
    for metric in vars(Metrics()).values():
        name, labels, kind = (
            getattr(metric, "_name", None),
            getattr(metric, "_labelnames", None),
            getattr(metric, "_type", None),
        )
        if not isinstance(name, str) or labels is None:
            continue
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(kind, [""])
        for suffix in suffixes:
            series.setdefault(name + suffix, set()).update(labels, {"le"} if suffix == "_bucket" else set())
    assert "captioner_drift_psi" in series and "captioner_gpu_memory_bytes" in series
    return series


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names) for each series selector in a PromQL expression."""
    found = []
    for match in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?", expr):
        name, braces = match.group(1), match.group(2) or ""
        if name.startswith("captioner_") or name in PROMETHEUS_OWN:
            found.append((name, set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", braces))))
    return found


def check_exprs(exprs: list[str], series: dict[str, set[str]]) -> set[str]:
    used = set()
    for expr in exprs:
        for name, labels in selectors(expr):
            used.add(name)
            if name in PROMETHEUS_OWN:
                continue
            assert name in series, f"{name} in {expr!r} is not exported by the app"
            unknown = labels - series[name] - SCRAPE_LABELS
            assert not unknown, f"{name} has no label {unknown} (it has {series[name]}), in {expr!r}"
    return used


def test_selector_parsing_finds_names_and_labels(exported: dict[str, set[str]]) -> None:
    expr = 'sum by (code) (rate(captioner_errors_total{instance=~"$i", code!="x"}[5m])) / up{job="captioner"}'
    assert selectors(expr) == [("captioner_errors_total", {"instance", "code"}), ("up", {"job"})]
    with pytest.raises(AssertionError, match="not exported"):
        check_exprs(["rate(captioner_made_up_total[5m])"], exported)
    with pytest.raises(AssertionError, match="has no label"):
        check_exprs(['captioner_gpu_memory_bytes{type="used"}'], exported)


# ---- Prometheus rules ----


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make system-deps` installs it (Debian package prometheus)"
    return path


@pytest.mark.parametrize(
    "args",
    [["check", "rules", "alerts.yaml"], ["check", "config", "prometheus.yml"], ["test", "rules", "alerts_test.yaml"]],
    ids=["check-rules", "check-config", "unit-test-rules"],
)
def test_promtool_accepts_and_unit_tests_the_rules(args: list[str]) -> None:
    result = subprocess.run([promtool(), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_rules_structure_and_series(exported: dict[str, set[str]]) -> None:
    document = yaml.safe_load((PROMETHEUS / "alerts.yaml").read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert {rule["alert"] for rule in rules} == ALERTS
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert "{{ $labels.instance }}" in rule["annotations"]["summary"]  # says which node
    used = check_exprs([rule["expr"] for rule in rules], exported)
    assert {"captioner_request_seconds_bucket", "captioner_requests_total", "captioner_queue_depth",
            "captioner_queue_capacity", "captioner_drift_psi", "captioner_drift_psi_threshold",
            "captioner_ready", "up"} <= used  # fmt: skip
    by_name = {rule["alert"]: rule["expr"] for rule in rules}
    assert (
        "histogram_quantile(0.99" in by_name["CaptionerLatencyP99High"] and "> 1" in by_name["CaptionerLatencyP99High"]
    )
    assert "> 0.01" in by_name["CaptionerErrorRatioHigh"] and "> 0.8" in by_name["CaptionerQueueNearlyFull"]
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yaml").read_text())
    tested = {
        case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"] if case.get("exp_alerts")
    }
    assert tested == ALERTS  # each alert has a unit test in which it fires


# ---- Grafana dashboard ----


def dashboard_panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] == "captioner" and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert "captioner_ready" in variables["instance"]["definition"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
    for panel in dashboard_panels():
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert 'instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])


def test_dashboard_queries_name_only_exported_series_and_cover_the_questions(exported: dict[str, set[str]]) -> None:
    exprs = [t["expr"] for p in dashboard_panels() for t in p["targets"]]
    used = check_exprs(exprs, exported)
    text = "\n".join(exprs)
    for phi in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({phi}, sum by (le) (rate(captioner_request_seconds_bucket" in text
    assert {
        "captioner_requests_total", "captioner_images_total", "captioner_errors_total", "captioner_queue_depth",
        "captioner_queue_capacity", "captioner_batch_size_sum", "captioner_batch_size_count",
        "captioner_batch_wait_seconds_bucket", "captioner_inference_seconds_bucket", "captioner_cache_hits_total",
        "captioner_cache_misses_total", "captioner_gpu_utilization_ratio", "captioner_gpu_memory_bytes",
        "captioner_drift_psi", "captioner_drift_psi_threshold", "captioner_ready", "captioner_model_info",
    } <= used  # fmt: skip


def test_grafana_provisioning_points_at_the_dashboard_folder_and_prometheus() -> None:
    provisioning = DASHBOARD.parent / "provisioning"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "captioner.yaml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True

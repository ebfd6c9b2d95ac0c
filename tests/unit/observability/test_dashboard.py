"""deploy/grafana/captioner-dashboard.json against the series the server exports: every metric family of
``Metrics`` (the registry /metrics serves) is drawn by some panel, every series a panel queries exists, and the
queries are the sensible kind (counters and histograms through rate/increase, histograms as quantiles).

Pure: the registry is built in memory, GPU and drift series from a fake NVML and fake scores; no server, no model.
(tests/system/test_alert_rules.py checks the label names too, against a live server's /metrics.)
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from captioner.observability.gpu_metrics import GpuCollector
from captioner.observability.metrics import Metrics
from tests.support.paths import REPO_ROOT

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "captioner-dashboard.json"
SERIES = re.compile(r"\bcaptioner_[a-z0-9_]+")
# The sample names Prometheus scrapes for each kind of family (prometheus_client's text format); `_created` is
# exported too but carries no signal worth a panel, so it may be queried but need not be.
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}
CREATED = {"counter", "histogram", "summary"}
RATED = re.compile(r"\b(?:rate|irate|increase)\(\s*$")


class FakeNvml:
    """The part of pynvml that GpuCollector calls: one GPU, so that the GPU families are collected."""

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        return "gpu0"

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return "gpu0"

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> Any:
        return SimpleNamespace(gpu=40, memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> Any:
        return SimpleNamespace(total=16 * 2**30, used=2**30, free=15 * 2**30)


def exported_families() -> dict[str, tuple[str, set[str]]]:
    """Family name -> (type, the sample names scraped for it), for every family /metrics can serve.

    The collectors that export only when something is watched (GPU, drift) are given something to watch.
    """
    metrics = Metrics(CollectorRegistry(), gpu=GpuCollector(FakeNvml(), uuid_of=lambda index: "GPU-aaaa"))
    assert metrics.watch_gpu("cuda:0")
    metrics.watch_drift(lambda: {"width": 0.05, "confidence": 0.3}, psi_alert=0.2)
    families: dict[str, tuple[str, set[str]]] = {}
    for family in metrics.registry.collect():
        assert family.type in SUFFIXES, f"{family.name}: no rule for a {family.type}"
        names = {family.name + suffix for suffix in SUFFIXES[family.type]}
        optional = {family.name + "_created"} if family.type in CREATED else set()
        # The rule above is what the exposition format does: check it on the samples present.
        for sample in family.samples:
            assert sample.name in names | optional, (family.name, sample.name)
        families[family.name] = (family.type, names)
    return families


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for each target of each panel."""
    return [
        (panel["title"], target["expr"])
        for panel in all_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


def referenced(dashboard: dict[str, Any]) -> set[str]:
    return {name for _, expr in queries(dashboard) for name in SERIES.findall(expr)}


def uncovered(dashboard: dict[str, Any], families: dict[str, tuple[str, set[str]]]) -> list[str]:
    """Families no panel queries (a histogram counts only when its buckets are queried: its quantiles)."""
    used = referenced(dashboard)
    missing = []
    for name, (kind, samples) in families.items():
        wanted = {name + "_bucket"} if kind == "histogram" else samples
        if not wanted & used:
            missing.append(name)
    return sorted(missing)


def unknown(dashboard: dict[str, Any], families: dict[str, tuple[str, set[str]]]) -> list[str]:
    """Series the dashboard queries that the server does not export (under that exact sample name)."""
    exported = set()
    for name, (kind, samples) in families.items():
        exported |= samples | ({name + "_created"} if kind in CREATED else set())
    return sorted(referenced(dashboard) - exported)


def unrated(dashboard: dict[str, Any], families: dict[str, tuple[str, set[str]]]) -> list[tuple[str, str]]:
    """(title, series) where a counter or a histogram's sample is read raw instead of through rate()/increase()."""
    cumulative = {s for kind, samples in families.values() if kind in {"counter", "histogram"} for s in samples}
    bad = []
    for title, expr in queries(dashboard):
        for match in SERIES.finditer(expr):
            if match.group() in cumulative and not RATED.search(expr[: match.start()]):
                bad.append((title, match.group()))
    return bad


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def families() -> dict[str, tuple[str, set[str]]]:
    return exported_families()


def test_every_exported_family_has_a_panel(dashboard: dict[str, Any], families: dict[str, Any]) -> None:
    assert {"captioner_gpu_memory_bytes", "captioner_drift_psi", "captioner_requests"} <= set(families)
    assert uncovered(dashboard, families) == []


def test_every_queried_series_is_exported(dashboard: dict[str, Any], families: dict[str, Any]) -> None:
    assert unknown(dashboard, families) == []


def test_counters_and_histograms_are_read_through_rate(dashboard: dict[str, Any], families: dict[str, Any]) -> None:
    assert unrated(dashboard, families) == []


def test_panels_are_well_formed(dashboard: dict[str, Any]) -> None:
    panels = list(all_panels(dashboard["panels"]))
    ids = [panel.get("id") for panel in panels]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids))
    for panel in panels:
        assert isinstance(panel.get("title"), str) and panel["title"].strip(), panel
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        # One data source for all: the dashboard's `datasource` variable.
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert target["expr"].strip() and target["refId"], panel["title"]
            # Every series selector honours the instance picker.
            for match in SERIES.finditer(target["expr"]):
                after = target["expr"][match.end() :]
                assert after.startswith('{instance=~"$instance"'), (panel["title"], target["expr"])


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        for y in range(grid["y"], grid["y"] + grid["h"]):
            for x in range(grid["x"], grid["x"] + grid["w"]):
                assert (x, y) not in taken, (panel["title"], taken.get((x, y)))
                taken[(x, y)] = panel["title"]


def test_variables_use_the_datasource_variable_and_exported_series(
    dashboard: dict[str, Any], families: dict[str, Any]
) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert "instance" in variables
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, variable["name"]
            as_panel = {"panels": [{"title": variable["name"], "targets": [{"expr": variable["definition"]}]}]}
            assert referenced(as_panel) and unknown(as_panel, families) == [], variable["name"]


def test_the_checks_catch_a_missing_panel_an_unknown_series_and_a_raw_counter(
    dashboard: dict[str, Any], families: dict[str, Any]
) -> None:
    broken = copy.deepcopy(dashboard)
    broken["panels"] = [p for p in broken["panels"] if p["title"] not in {"GPU memory", "Automatic rollbacks"}]
    assert uncovered(broken, families) == ["captioner_gpu_memory_bytes", "captioner_rollbacks"]

    broken = copy.deepcopy(dashboard)
    target = broken["panels"][-1]["targets"][0]
    target["expr"] = 'rate(captioner_made_up_total{instance=~"$instance"}[5m]) + captioner_requests{}'
    assert unknown(broken, families) == ["captioner_made_up_total", "captioner_requests"]

    target["expr"] = 'sum(captioner_requests_total{instance=~"$instance"}) + rate(captioner_jobs_total{}[5m])'
    assert unrated(broken, families) == [(broken["panels"][-1]["title"], "captioner_requests_total")]

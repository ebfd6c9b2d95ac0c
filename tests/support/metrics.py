"""Reading Prometheus text: the value of a series, summed over the label sets that include the wanted labels."""

from __future__ import annotations

import re

from prometheus_client import generate_latest

from captioner.observability.metrics import Metrics


def metric_value(text: str, name: str, labels: str = "") -> float:
    """The sum of the series called ``name`` in ``text`` whose labels include ``labels`` (0 when none).

    ``labels`` is Prometheus syntax, e.g. ``'status="200"'``; series with further labels (such as ``variant``)
    are summed, so a test names only the labels it cares about.
    """
    wanted = set(re.findall(r'(\w+="[^"]*")', labels))
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if match is None or match.group(1) != name:
            continue
        have = set(re.findall(r'(\w+="[^"]*")', match.group(2) or ""))
        if wanted <= have:
            total += float(match.group(3))
    return total


def metrics_text(metrics: Metrics) -> str:
    """What ``/metrics`` would serve for this ``Metrics``, without a server."""
    return generate_latest(metrics.registry).decode()


def registry_value(metrics: Metrics, name: str, labels: str = "") -> float:
    return metric_value(metrics_text(metrics), name, labels)

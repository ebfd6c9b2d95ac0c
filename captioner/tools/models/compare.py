"""``captioner models compare NAME [--server URL]``: production and canary side by side.

Always the registry's side: the versions, the canary's weight and their stored gate scores. With ``--server``
also the live side, from that server's ``GET /api/v1/variants``: each variant's requests, error ratio, p95
latency and mean confidence, and the canary analysis' state and last verdict.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import httpx

from captioner.config import Settings
from captioner.registry.gate import side_by_side
from captioner.registry.store import Registry

_LIVE_ROWS = (
    ("weight", "weight", "{:g}%"),
    ("requests", "requests", "{:d}"),
    ("error ratio", "error_ratio", "{:.4f}"),
    ("p95 latency", "p95_s", "{:.3f} s"),
    ("confidence", "mean_confidence", "{:.3f}"),
)


def compare(args: argparse.Namespace, registry: Registry, settings: Settings) -> int:
    name = args.name
    aliases = registry.aliases(name)
    if aliases.production is None:
        print(f"{name} has no production version in {registry.root}", file=sys.stderr)
        return 1
    columns: list[tuple[str, Any]] = [
        (f"production v{aliases.production}", registry.version(name, aliases.production).scores)
    ]
    if aliases.canary is not None:
        canary = registry.version(name, aliases.canary.version)
        columns.append((f"canary v{canary.number} ({aliases.canary.weight:g}%)", canary.scores))
    else:
        print(f"{name}: no canary is running")
    print("registry (gate scores):")
    print(side_by_side(columns))
    if args.server:
        return _live(args.server.rstrip("/"), args.api_key or os.environ.get("CAPTIONER_API_KEY"))
    return 0


def _live(server: str, api_key: str | None) -> int:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{server}/api/v1/variants", headers=headers, timeout=10)
        response.raise_for_status()
        report = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        print(f"{server}: cannot read the live variants ({exc})", file=sys.stderr)
        return 1
    variants = report["variants"]
    print(f"\nlive ({server}):")
    print(f"{'':<12}" + "".join(f"{v['variant'] + ' ' + v['model']:>26}" for v in variants))
    for label, key, form in _LIVE_ROWS:
        cells = []
        for variant in variants:
            value = variant["weight"] if key == "weight" else variant["stats"].get(key)
            cells.append(f"{'-' if value is None else form.format(value):>26}")
        print(f"{label:<12}" + "".join(cells))
    canary = report.get("canary") or {}
    print(
        f"canary analysis: {canary.get('state', 'none')}" + (f" ({canary['reason']})" if canary.get("reason") else "")
    )
    if canary.get("detail"):
        print(f"  {canary['detail']}")
    last = canary.get("last_rollback")
    if last:
        print(f"last automatic rollback: {last.get('model')} ({last.get('reason')}): {last.get('detail')}")
    return 0

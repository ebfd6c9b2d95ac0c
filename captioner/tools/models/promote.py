"""``captioner models promote NAME VERSION [--canary P] [--force]``: the deploy gate, then the alias change.

The candidate and the current production version are scored on the same gate set (``gate_eval``), the
decision is ``registry.gate.decide``, and the report puts both columns side by side. Every gate run is
recorded on the candidate (``gate_runs``), refused ones too; a promotion is recorded in ``promotions`` and,
when the gate did not pass and ``--force`` overrode it, in ``forced`` as well. The gate runs without the lock;
the alias change then checks that production is still the version it was compared with (else: run it again).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from captioner.config import Settings
from captioner.registry.aliases import AliasError, Aliases, now_iso
from captioner.registry.gate import GateDecision, decide, side_by_side
from captioner.registry.store import Registry
from captioner.tools.eval.gate import GateUnavailable, ScoringFailed, gate_set, score


def promote(args: argparse.Namespace, registry: Registry, settings: Settings) -> int:
    name, number, weight = args.name, args.version, args.canary
    candidate = registry.version(name, number)
    aliases = registry.aliases(name)
    if weight is not None and not 0 < weight < 100:
        print(f"--canary is a percentage above 0 and below 100, got {weight:g}", file=sys.stderr)
        return 2
    target = "canary" if weight is not None else "production"
    if weight is None and aliases.production == number:
        print(f"{candidate.ref} is production already")
        return 0
    try:  # a change the aliases can't take (a canary without production, ...) is refused before the gate runs
        _change(aliases, number, weight, by=args.by, forced=False)
    except AliasError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    production = aliases.production if aliases.production != number else None
    decision: GateDecision | None = None
    failure = ""
    try:
        gate = gate_set(settings)
        print(f"gate set: {gate.annotations} ({gate.num_images} images) in {gate.images}", file=sys.stderr)
        columns: list[tuple[str, Any]] = []
        scored = score(registry, candidate, settings, gate, rescore=args.rescore)
        columns.append((f"candidate v{number}", scored.metrics))
        _note_stored(f"candidate v{number}", scored.stored_at)
        baseline = None
        if production is not None:
            baseline = score(registry, registry.version(name, production), settings, gate, rescore=args.rescore)
            columns.append((f"production v{production}", baseline.metrics))
            _note_stored(f"production v{production}", baseline.stored_at)
        decision = decide(scored.metrics, baseline.metrics if baseline else None, settings.gate)
        print(side_by_side(columns))
        print("\n".join(decision.checks))
    except (GateUnavailable, ScoringFailed) as exc:
        failure = str(exc)
        print(f"gate: {failure}", file=sys.stderr)
        if not args.force:
            print("pass --force to promote without a passing gate (the registry records it)", file=sys.stderr)
            if isinstance(exc, GateUnavailable):
                return 2
    passed = decision is not None and decision.passed
    run = {
        "time": now_iso(),
        "target": target,
        "against": production,
        "decision": decision.to_json() if decision is not None else None,
        "error": failure or None,
        "by": args.by,
    }
    registry.update_meta(name, number, lambda meta: meta.setdefault("gate_runs", []).append(run))
    if not passed and not args.force:
        reasons = "; ".join(decision.reasons) if decision is not None else failure
        print(f"gate: REFUSED {candidate.ref} as {target} (failed: {reasons})")
        return 1
    forced = not passed
    if forced:
        print(f"gate: did not pass; promoting {candidate.ref} anyway (--force, recorded)")
    else:
        print("gate: passed")

    def change(current: Aliases) -> Aliases:
        if current.production != aliases.production:
            raise AliasError(
                f"production changed from {aliases.production} to {current.production} while the gate ran: run again"
            )
        return _change(current, number, weight, by=args.by, forced=forced)

    updated = registry.update_aliases(name, change)
    record = {**run, "alias": target, "weight": weight, "forced": forced}

    def remember(meta: dict[str, Any]) -> None:
        meta.setdefault("promotions", []).append(record)
        if forced:
            meta.setdefault("forced", []).append(record)

    registry.update_meta(name, number, remember)
    if weight is not None:
        print(f"{name}: version {number} is the canary at {weight:g}% (production {updated.production} keeps the rest)")
    else:
        print(f"{name}: version {number} is production (was {aliases.production or 'none'})")
    return 0


def _note_stored(label: str, stored_at: str | None) -> None:
    if stored_at is not None:
        print(f"{label}: scores stored at {stored_at} on this same gate set (--rescore to run again)", file=sys.stderr)


def _change(aliases: Aliases, number: int, weight: float | None, *, by: str, forced: bool) -> Aliases:
    if weight is not None:
        return aliases.with_canary(number, weight, by=by, forced=forced)
    return aliases.promoted(number, by=by, forced=forced)

"""The aliases of one model name: which version is ``production``, which is the ``canary`` and at what weight.

Plain data with pure transitions (``promoted``, ``with_canary``, ``rolled_back``, ``canary_cleared``); the store
reads, transforms and writes it under the name's lock. ``previous`` is the stack of earlier production versions,
so ``rolled_back`` goes back one step each time; ``history`` is the audit trail of every change (newest last,
the last ``HISTORY_LIMIT`` kept), each entry with its time, the action, the versions and who did it.

The file, ``<registry>/<name>/aliases.json``::

    {"production": 3, "canary": {"version": 4, "weight": 10.0}, "previous": [1, 2], "history": [...]}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

PRODUCTION = "production"
CANARY = "canary"
HISTORY_LIMIT = 500


class AliasError(ValueError):
    """The change asked for makes no sense for the aliases as they are; the message says why."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Canary:
    version: int
    weight: float  # percent of the traffic (production keeps the rest)


@dataclass(frozen=True)
class Aliases:
    production: int | None = None
    canary: Canary | None = None
    previous: tuple[int, ...] = ()  # earlier production versions, oldest first
    history: tuple[dict[str, Any], ...] = ()

    def of(self, version: int) -> list[str]:
        """The aliases that point at ``version``."""
        names = [PRODUCTION] if self.production == version else []
        if self.canary is not None and self.canary.version == version:
            names.append(CANARY)
        return names

    def _logged(self, action: str, by: str, **details: Any) -> tuple[dict[str, Any], ...]:
        entry = {"time": now_iso(), "action": action, **details, "by": by}
        return (*self.history, entry)[-HISTORY_LIMIT:]

    def promoted(self, version: int, *, by: str, forced: bool = False) -> Aliases:
        """``version`` becomes production; the one it replaces goes on the rollback stack.

        A canary of the same version has graduated and is cleared; any other canary keeps running.
        """
        if self.production == version:
            raise AliasError(f"version {version} is production already")
        previous = self.previous if self.production is None else (*self.previous, self.production)
        canary = None if self.canary is not None and self.canary.version == version else self.canary
        history = self._logged("promote", by, alias=PRODUCTION, version=version, replaced=self.production,
                               forced=forced)  # fmt: skip
        return dataclasses.replace(self, production=version, canary=canary, previous=previous, history=history)

    def with_canary(self, version: int, weight: float, *, by: str, forced: bool = False) -> Aliases:
        if self.production is None:
            raise AliasError("there is no production version to run a canary against: promote one first")
        if self.production == version:
            raise AliasError(f"version {version} is production; a canary must be another version")
        if not 0 < weight < 100:
            raise AliasError(f"a canary's weight is a percentage above 0 and below 100, got {weight:g}")
        replaced = self.canary.version if self.canary is not None else None
        history = self._logged("canary", by, alias=CANARY, version=version, weight=weight, replaced=replaced,
                               forced=forced)  # fmt: skip
        return dataclasses.replace(self, canary=Canary(version, float(weight)), history=history)

    def rolled_back(self, *, by: str, reason: str = "") -> Aliases:
        """Production goes back to the version before it; a canary is cleared as well."""
        if not self.previous:
            raise AliasError("there is no earlier production version to roll back to")
        target = self.previous[-1]
        history = self._logged("rollback", by, alias=PRODUCTION, version=target, replaced=self.production,
                               reason=reason)  # fmt: skip
        return Aliases(production=target, canary=None, previous=self.previous[:-1], history=history)

    def canary_cleared(self, *, by: str, reason: str, automatic: bool = False) -> Aliases:
        if self.canary is None:
            raise AliasError("there is no canary to clear")
        action = "canary_rollback" if automatic else "canary_cleared"
        history = self._logged(action, by, alias=CANARY, version=self.canary.version, reason=reason)
        return dataclasses.replace(self, canary=None, history=history)

    def to_json(self) -> dict[str, Any]:
        return {
            "production": self.production,
            "canary": None if self.canary is None else {"version": self.canary.version, "weight": self.canary.weight},
            "previous": list(self.previous),
            "history": list(self.history),
        }

    @classmethod
    def from_json(cls, data: Any) -> Aliases:
        if not isinstance(data, dict):
            raise ValueError("aliases must be a JSON object")
        production = data.get("production")
        if production is not None and (not isinstance(production, int) or isinstance(production, bool)):
            raise ValueError(f"production must be a version number, got {production!r}")
        canary = data.get("canary")
        if canary is not None:
            canary = Canary(int(canary["version"]), float(canary["weight"]))
        previous = tuple(int(v) for v in data.get("previous", []))
        history = tuple(e for e in data.get("history", []) if isinstance(e, dict))
        return cls(production=production, canary=canary, previous=previous, history=history)

"""``captioner usage export --since YYYY-MM-DD [--until YYYY-MM-DD] [--format csv|jsonl] [--out FILE]``: images per
tenant per day, for billing, from the counters every replica keeps in Redis (guard/usage.py).

One row per day (UTC) and tenant that sent anything, oldest first: ``date``, ``tenant``, ``images`` (counted against
the daily quota: admitted, less those the server failed), then how they went: ``captioned``, ``cached``,
``rejected`` (4xx), ``failed`` (5xx), ``quota_exceeded`` (refused at the door, not in ``images``). A day's counts
are kept 400 days. The Redis is the one the servers use, per the same config (``jobs.redis_url``, else
``rate_limit.redis_url``, else ``cache.redis_url``); without one there is nothing to export (each replica counted
alone).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import sys
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from captioner.config import ConfigError, Settings
from captioner.guard.usage import COUNTERS, RETENTION_S, usage_redis_url, utc_day
from captioner.shared_state.redis_client import RedisClient, RedisUnavailable
from captioner.shared_state.redis_usage import RedisUsage
from captioner.tools.command_line import add_command, runs

FORMATS = ("csv", "jsonl")
COLUMNS = ("date", "tenant", *COUNTERS)


def add_usage_commands(commands: Any) -> None:
    """Register ``usage export`` on the top-level subparsers ``commands``."""
    usage = commands.add_parser("usage", help="images per tenant per day (for billing)")
    actions = usage.add_subparsers(dest="usage_command", required=True, metavar="ACTION")
    export = add_command(actions, "export", help="per-tenant daily usage as CSV or JSON Lines", doc=__doc__)
    export.add_argument("--since", required=True, type=_day, help="first day (UTC), YYYY-MM-DD")
    export.add_argument("--until", type=_day, help="last day (UTC), YYYY-MM-DD (default: today)")
    export.add_argument("--format", choices=FORMATS, default="csv")
    export.add_argument("--out", type=Path, help="file to write (default: standard output)")
    runs(export, run)


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date as YYYY-MM-DD: {text!r}") from None


def days(since: date, until: date) -> Iterator[str]:
    day = since
    while day <= until:
        yield day.isoformat()
        day += timedelta(days=1)


def rows(by_day: dict[str, dict[str, dict[str, int]]]) -> list[dict[str, Any]]:
    """One row per day and tenant, oldest day first, tenants by name; a counter never seen is 0."""
    found: list[dict[str, Any]] = []
    for day in sorted(by_day):
        for tenant in sorted(by_day[day]):
            counts = by_day[day][tenant]
            found.append({"date": day, "tenant": tenant, **{c: counts.get(c, 0) for c in COUNTERS}})
    return found


def render(found: list[dict[str, Any]], form: str) -> str:
    if form == "jsonl":
        return "".join(json.dumps(row) + "\n" for row in found)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(found)
    return text.getvalue()


async def read_usage(settings: Settings, since: date, until: date) -> dict[str, dict[str, dict[str, int]]]:
    url = usage_redis_url(settings)
    if not url:
        raise ConfigError(
            "config: usage export reads the servers' Redis (jobs.redis_url, rate_limit.redis_url or cache.redis_url), "
            "and none is set"
        )
    store = RedisUsage(RedisClient(url, name="usage", timeout_s=5.0), ttl_s=RETENTION_S)
    try:
        return {day: await store.day(day) for day in days(since, until)}
    finally:
        await store.aclose()


def run(args: argparse.Namespace, settings: Settings) -> int:
    until = args.until or date.fromisoformat(utc_day(time.time()))
    if until < args.since:
        print(f"--until {until} is before --since {args.since}", file=sys.stderr)
        return 2
    try:
        found = rows(asyncio.run(read_usage(settings, args.since, until)))
    except RedisUnavailable as exc:
        print(f"usage export: Redis can't be read ({exc})", file=sys.stderr)
        return 1
    text = render(found, args.format)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"{len(found)} rows ({args.since} .. {until}) in {args.out}", file=sys.stderr)
    return 0

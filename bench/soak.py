"""Soak test: N concurrent clients for T seconds against a running server, mixing valid and invalid requests.

    python bench/soak.py --url http://127.0.0.1:8000 --clients 16 --duration 60 [--pid PID] [--json out.json]

Each client loops: pick a request kind at random (seeded), send it, check the answer. Valid kinds send a fresh
photo (a unique JPEG, so a cache miss) as a raw body, base64 JSON or multipart, plus some repeats (cache hits).
Invalid kinds send the bodies a hostile or careless client would: text, a truncated JPEG, a decompression bomb,
broken JSON and base64, a bad num_captions, a wrong content type, an empty body, a private-network URL.

It reports the status counts by HTTP status and error code, latency percentiles, and the server's resident
memory before and after (from /proc; the server's pid comes from --pid or is found by its listening port). Any
answer outside the kind's expected status, any 5xx and any transport error count as "unexpected"; the exit
status is 1 if there was one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import struct
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.images import photo, request_body, unique

CAPTION = "/api/v1/caption"
MB = 1024 * 1024


@dataclass(frozen=True)
class Request:
    content: bytes
    content_type: str
    query: str = ""


@dataclass(frozen=True)
class Kind:
    name: str
    expected: frozenset[int]
    make: Callable[[random.Random, int], Request]
    valid: bool = False


def _png_bomb_header() -> bytes:
    """The head of a 30000x30000 PNG: refused from its header alone, before any pixel is decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 30_000, 30_000, 1, 0, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(bytes(4096)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def build_kinds(pool_size: int) -> list[tuple[Kind, float]]:
    """Every request kind with its weight among the valid or the invalid ones."""
    pool = [photo(seed, 320, 240) for seed in range(pool_size)]
    truncated = pool[0][: len(pool[0]) // 2]
    bomb = _png_bomb_header()

    def fresh(body_format: str) -> Callable[[random.Random, int], Request]:
        def make(rng: random.Random, serial: int) -> Request:
            content, content_type = request_body(unique(rng.choice(pool), serial), body_format)
            return Request(content, content_type)

        return make

    def repeat(rng: random.Random, serial: int) -> Request:
        return Request(pool[rng.randrange(min(4, pool_size))], "image/jpeg")

    def fixed(content: bytes, content_type: str, query: str = "") -> Callable[[random.Random, int], Request]:
        return lambda rng, serial: Request(content, content_type, query)

    ok = frozenset({200})
    valid = [
        (Kind("raw-jpeg", ok, fresh("raw"), True), 4.0),
        (Kind("json-base64", ok, fresh("json"), True), 2.0),
        (Kind("multipart", ok, fresh("multipart"), True), 2.0),
        (Kind("repeat (cache hit)", ok, repeat, True), 1.0),
    ]
    invalid = [
        (Kind("text", frozenset({400}), fixed(b"not an image " * 40, "image/png")), 1.0),
        (Kind("truncated-jpeg", frozenset({400}), fixed(truncated, "image/jpeg")), 1.0),
        (Kind("empty", frozenset({400}), fixed(b"", "image/jpeg")), 1.0),
        (Kind("bomb-30000x30000", frozenset({413}), fixed(bomb, "image/png")), 1.0),
        (Kind("bad-json", frozenset({422}), fixed(b'{"image": "abc', "application/json")), 1.0),
        (Kind("bad-base64", frozenset({422}), fixed(b'{"image": "*not base64*"}', "application/json")), 1.0),
        (Kind("num_captions=0", frozenset({422}), fixed(pool[1], "image/jpeg", "?num_captions=0")), 1.0),
        (Kind("text/plain", frozenset({415}), fixed(b"hello", "text/plain")), 1.0),
        (
            Kind(
                "private-url",
                frozenset({400}),
                fixed(json.dumps({"url": "http://169.254.169.254/latest/meta-data/"}).encode(), "application/json"),
            ),
            1.0,
        ),
    ]
    return valid + invalid


@dataclass
class Results:
    by_status: Counter[int] = field(default_factory=Counter)
    by_code: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    ok_latencies_ms: list[float] = field(default_factory=list)
    rss_samples: list[int] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def client(
    http: httpx.AsyncClient,
    kinds: list[tuple[Kind, float]],
    *,
    seed: int,
    invalid_share: float,
    end: float,
    results: Results,
    serials: list[int],
) -> None:
    rng = random.Random(seed)
    valid = [(k, w) for k, w in kinds if k.valid]
    invalid = [(k, w) for k, w in kinds if not k.valid]
    while time.monotonic() < end:
        group = invalid if rng.random() < invalid_share else valid
        kind = rng.choices([k for k, _ in group], weights=[w for _, w in group])[0]
        serials[0] += 1
        request = kind.make(rng, serials[0] + seed * 1_000_000)
        started = time.perf_counter()
        try:
            response = await http.post(
                CAPTION + request.query, content=request.content, headers={"Content-Type": request.content_type}
            )
        except httpx.HTTPError as exc:
            results.unexpected[f"{kind.name}: {type(exc).__name__}"] += 1
            continue
        elapsed = (time.perf_counter() - started) * 1000
        results.latencies_ms.append(elapsed)
        results.by_status[response.status_code] += 1
        results.by_kind[kind.name] += 1
        if response.status_code == 200:
            results.ok_latencies_ms.append(elapsed)
        else:
            try:
                results.by_code[response.json()["error"]["code"]] += 1
            except (ValueError, KeyError, TypeError):
                results.unexpected[f"{kind.name}: {response.status_code} without a JSON error body"] += 1
        if response.status_code not in kind.expected:
            results.unexpected[f"{kind.name}: {response.status_code}"] += 1


def listening_pid(port: int) -> int | None:
    """The pid of the process listening on ``port`` (TCP, v4 or v6), found through /proc; None if not found."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return int(pid)
        except OSError:
            continue
    return None


def rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


async def sample_rss(pid: int | None, results: Results, end: float, every_s: float = 1.0) -> None:
    while time.monotonic() < end:
        value = rss(pid)
        if value is not None:
            results.rss_samples.append(value)
        await asyncio.sleep(every_s)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    kinds = build_kinds(args.pool)
    pid = args.pid or listening_pid(urlsplit(args.url).port or 80)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=args.url, timeout=args.timeout, limits=limits, headers=headers) as http:
        (await http.get("/readyz")).raise_for_status()
        rss_before = rss(pid)
        results = Results()
        started = time.monotonic()
        end = started + args.duration
        serials = [0]
        await asyncio.gather(
            sample_rss(pid, results, end),
            *(
                client(
                    http,
                    kinds,
                    seed=args.seed + i,
                    invalid_share=args.invalid_share,
                    end=end,
                    results=results,
                    serials=serials,
                )
                for i in range(args.clients)
            ),
        )
        elapsed = time.monotonic() - started
        await asyncio.sleep(1.0)  # let the server finish what the last requests started
        alive = (await http.get("/healthz")).status_code == 200
        rss_after = rss(pid)
    total = sum(results.by_status.values())
    summary: dict[str, Any] = {
        "url": args.url,
        "clients": args.clients,
        "duration_s": round(elapsed, 1),
        "invalid_share": args.invalid_share,
        "requests": total,
        "requests_per_s": round(total / elapsed, 1),
        "by_status": dict(sorted(results.by_status.items())),
        "by_error_code": dict(sorted(results.by_code.items())),
        "by_kind": dict(sorted(results.by_kind.items())),
        "unexpected": dict(results.unexpected),
        "server_errors_5xx": sum(n for status, n in results.by_status.items() if status >= 500),
        "latency_ms_all": {q: round(percentile(results.latencies_ms, q), 1) for q in (50, 95, 99)},
        "latency_ms_200": {q: round(percentile(results.ok_latencies_ms, q), 1) for q in (50, 95, 99)},
        "server_alive_after": alive,
        "server_pid": pid,
    }
    if rss_before is not None and rss_after is not None:
        summary["rss_mb"] = {
            "before": round(rss_before / MB, 1),
            "after": round(rss_after / MB, 1),
            "growth": round((rss_after - rss_before) / MB, 1),
            "peak": round(max([*results.rss_samples, rss_after]) / MB, 1),
        }
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    print(f"soak: {summary['clients']} clients x {summary['duration_s']} s against {summary['url']}")
    print(f"  requests: {summary['requests']} ({summary['requests_per_s']}/s)")
    print(f"  by status: {summary['by_status']}")
    print(f"  by error code: {summary['by_error_code']}")
    print(f"  unexpected: {summary['unexpected'] or 'none'} (5xx: {summary['server_errors_5xx']})")
    for name in ("all", "200"):
        lat = summary[f"latency_ms_{name}"]
        print(f"  latency ms ({name}): p50 {lat[50]}  p95 {lat[95]}  p99 {lat[99]}")
    if "rss_mb" in summary:
        r = summary["rss_mb"]
        print(f"  server RSS MB: before {r['before']}, after {r['after']}, growth {r['growth']}, peak {r['peak']}")
    else:
        print("  server RSS: unknown (pass --pid, or run on the server's machine)")
    print(f"  server alive after: {summary['server_alive_after']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--duration", type=float, default=60, help="seconds of load (default 60)")
    parser.add_argument("--invalid-share", type=float, default=0.3, help="share of invalid requests (default 0.3)")
    parser.add_argument("--pool", type=int, default=32, help="distinct photos to draw from (default 32)")
    parser.add_argument("--pid", type=int, help="the server's pid, for RSS (default: found by the URL's port)")
    parser.add_argument("--api-key", help="sent as Authorization: Bearer <key>")
    parser.add_argument("--timeout", type=float, default=60, help="per-request timeout in seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)
    summary = asyncio.run(soak(args))
    print_summary(summary)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if summary["unexpected"] or not summary["server_alive_after"] else 0


if __name__ == "__main__":
    raise SystemExit(main())

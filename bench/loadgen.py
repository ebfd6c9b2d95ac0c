"""Load generator for any server that speaks the caption API: closed loop (N clients) or open loop (Poisson).

    python -m bench.loadgen --url http://127.0.0.1:8000 --concurrency 16 --duration 20
    python -m bench.loadgen --url http://127.0.0.1:8000 --rate 12 --duration 30 --format raw

The client is raw asyncio HTTP/1.1 with keep-alive (uvloop when installed), not httpx: on a 2-core box the load
generator shares the CPU with the server, so every microsecond it spends per request is taken from the server
(most visibly on the cache-hit benchmark, at thousands of requests per second). Every request carries a
distinct image (``bench.images.unique``) unless ``--repeat`` asks for one image over and over (the cache-hit
path).

Closed loop: each of N clients sends its next request when the last one is answered. Open loop: arrivals at
exponential intervals at a mean rate R whatever the server does, latency counted from the scheduled send time
(so a slow server cannot hide its queueing: no coordinated omission). Requests sent during ``--warmup`` are not
counted. Mean batch size comes from the server's ``/metrics`` (``captioner_batch_size`` sum/count deltas over
the measured window), when it has that series.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from bench.images import BODY_FORMATS, photo, request_body, unique

CAPTION_PATH = "/api/v1/caption"


class HttpError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects once when a reused connection turns out closed."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"", content_type: str = "") -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        message = (head + "\r\n").encode() + body
        reused = self._writer is not None
        try:
            return await self._exchange(message)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.close()
            if not reused:
                raise
            # The server closed an idle keep-alive connection under us: one retry on a fresh one.
            return await self._exchange(message)

    async def _exchange(self, message: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        self._writer.write(message)
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self._reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._read_chunked()
        else:
            body = await self._reader.read()
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body

    async def _read_chunked(self) -> bytes:
        assert self._reader is not None
        parts = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


class BodySource:
    """The request bodies: a pool of distinct photos, each request stamped unique (or one body repeated)."""

    def __init__(
        self,
        *,
        body_format: str = "json",
        pool: int = 64,
        width: int = 640,
        height: int = 480,
        repeat: bool = False,
        first_serial: int = 0,
        photos: list[bytes] | None = None,
    ) -> None:
        self.body_format = body_format
        self.repeat = repeat
        self.photos = photos if photos is not None else [photo(seed, width, height) for seed in range(pool)]
        self.serial = first_serial
        self._fixed = request_body(self.photos[0], body_format)

    def next(self) -> tuple[bytes, str]:
        if self.repeat:
            return self._fixed
        self.serial += 1
        jpeg = unique(self.photos[self.serial % len(self.photos)], self.serial)
        return request_body(jpeg, self.body_format)


@dataclass
class LoadResult:
    mode: str
    concurrency: int | None
    offered_rps: float | None
    duration_s: float
    completed: int  # answered inside the measured window, any status
    ok: int
    throughput_rps: float  # 200s per second inside the window
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    errors: dict[str, int] = field(default_factory=dict)
    mean_batch_size: float | None = None

    def summary(self) -> str:
        load = f"c={self.concurrency}" if self.mode == "closed" else f"rate={self.offered_rps:g}/s"
        batch = f" batch={self.mean_batch_size:.1f}" if self.mean_batch_size else ""
        errors = f" errors={self.errors}" if self.errors else ""
        return (
            f"{self.mode:6} {load:>12}: {self.throughput_rps:8.2f} req/s  p50 {_ms(self.p50_ms)}  "
            f"p95 {_ms(self.p95_ms)}  p99 {_ms(self.p99_ms)}{batch}{errors}"
        )


def _ms(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:7.1f} ms"


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on an already sorted list."""
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


class _Recorder:
    def __init__(self, measure_from: float, measure_to: float) -> None:
        self.measure_from, self.measure_to = measure_from, measure_to
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.completed_in_window = 0
        self.ok_in_window = 0

    def record(self, sent: float, done: float, status: str) -> None:
        if self.measure_from <= done <= self.measure_to:
            self.completed_in_window += 1
            if status == "200":
                self.ok_in_window += 1
        if self.measure_from <= sent < self.measure_to:
            self.statuses[status] += 1
            if status == "200":
                self.latencies.append(done - sent)


async def _send(conn: Connection, source: BodySource) -> str:
    body, content_type = source.next()
    try:
        status, _ = await conn.request("POST", CAPTION_PATH, body, content_type)
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        conn.close()
        return type(exc).__name__
    return str(status)


async def batch_counters(host: str, port: int) -> tuple[float, float] | None:
    """(sum, count) of ``captioner_batch_size`` from /metrics, or None if the server has no such series."""
    conn = Connection(host, port)
    try:
        status, body = await conn.request("GET", "/metrics")
    except (OSError, asyncio.IncompleteReadError):
        return None
    finally:
        conn.close()
    if status != 200:
        return None
    # Summed over label sets (the series may be labelled, e.g. by model variant).
    values: dict[str, float] = {}
    for line in body.decode().splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in ("captioner_batch_size_sum", "captioner_batch_size_count"):
            values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    if len(values) < 2:
        return None
    return values["captioner_batch_size_sum"], values["captioner_batch_size_count"]


async def run_load(
    url: str,
    source: BodySource,
    *,
    concurrency: int | None = None,
    rate: float | None = None,
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    seed: int = 0,
    max_outstanding: int = 2048,
) -> LoadResult:
    """One measurement: closed loop with ``concurrency`` clients, or open loop at ``rate`` requests/s."""
    if (concurrency is None) == (rate is None):
        raise ValueError("give exactly one of concurrency (closed loop) and rate (open loop)")
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    start = loop.time()
    recorder = _Recorder(start + warmup_s, start + warmup_s + duration_s)
    counters: list[tuple[float, float] | None] = []

    async def snapshot(at: float) -> None:
        await asyncio.sleep(max(0.0, at - loop.time()))
        counters.append(await batch_counters(host, port))

    snapshots = [asyncio.create_task(snapshot(at)) for at in (recorder.measure_from, recorder.measure_to)]
    if concurrency is not None:
        await asyncio.gather(*(_closed_client(host, port, source, recorder, loop) for _ in range(concurrency)))
    else:
        assert rate is not None
        await _open_loop(host, port, source, recorder, loop, rate, random.Random(seed), max_outstanding)
    await asyncio.gather(*snapshots)

    latencies = sorted(recorder.latencies)
    mean_batch = None
    if len(counters) == 2 and counters[0] is not None and counters[1] is not None:
        batches = counters[1][1] - counters[0][1]
        if batches > 0:
            mean_batch = (counters[1][0] - counters[0][0]) / batches

    def pick(q: float) -> float | None:
        return percentile(latencies, q) * 1000 if latencies else None

    return LoadResult(
        mode="closed" if concurrency is not None else "open",
        concurrency=concurrency,
        offered_rps=rate,
        duration_s=duration_s,
        completed=recorder.completed_in_window,
        ok=recorder.ok_in_window,
        throughput_rps=recorder.ok_in_window / duration_s,
        p50_ms=pick(0.50),
        p95_ms=pick(0.95),
        p99_ms=pick(0.99),
        mean_ms=sum(latencies) / len(latencies) * 1000 if latencies else None,
        errors={status: n for status, n in sorted(recorder.statuses.items()) if status != "200"},
        mean_batch_size=mean_batch,
    )


async def _closed_client(
    host: str, port: int, source: BodySource, recorder: _Recorder, loop: asyncio.AbstractEventLoop
) -> None:
    conn = Connection(host, port)
    try:
        while (sent := loop.time()) < recorder.measure_to:
            status = await _send(conn, source)
            recorder.record(sent, loop.time(), status)
    finally:
        conn.close()


async def _open_loop(
    host: str,
    port: int,
    source: BodySource,
    recorder: _Recorder,
    loop: asyncio.AbstractEventLoop,
    rate: float,
    rng: random.Random,
    max_outstanding: int,
) -> None:
    idle: list[Connection] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        conn = idle.pop() if idle else Connection(host, port)
        status = await _send(conn, source)
        recorder.record(scheduled, loop.time(), status)
        idle.append(conn)

    for scheduled in _arrivals(loop.time(), rate, recorder.measure_to, rng):
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= max_outstanding:
            recorder.record(scheduled, loop.time(), "client_overflow")
            continue
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    for conn in idle:
        conn.close()


def _arrivals(start: float, rate: float, end: float, rng: random.Random) -> Iterator[float]:
    t = start
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            return
        yield t


def asyncio_run(main: object) -> object:
    """asyncio.run with uvloop when it is installed (less client CPU per request)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)  # type: ignore[arg-type]
    return uvloop.run(main)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", "-c", type=int, help="closed loop: this many clients (default 8)")
    load.add_argument("--rate", "-r", type=float, help="open loop: Poisson arrivals at this mean rate per second")
    parser.add_argument("--duration", "-d", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--format", choices=BODY_FORMATS, default="json", help="how the image is sent")
    parser.add_argument("--size", default="640x480", help="photo size WxH")
    parser.add_argument("--pool", type=int, default=64, help="distinct photos to cycle through")
    parser.add_argument("--repeat", action="store_true", help="send one image over and over (cache hits)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    source = BodySource(body_format=args.format, pool=args.pool, width=width, height=height, repeat=args.repeat)
    concurrency = args.concurrency if args.rate is None else None
    if args.rate is None and concurrency is None:
        concurrency = 8

    async def go() -> LoadResult:
        return await run_load(
            args.url, source, concurrency=concurrency, rate=args.rate, duration_s=args.duration, warmup_s=args.warmup
        )

    result = asyncio_run(go())
    assert isinstance(result, LoadResult)
    print(json.dumps(asdict(result)) if args.json else result.summary())
    return 0 if result.ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

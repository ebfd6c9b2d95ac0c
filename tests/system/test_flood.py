"""The flood (issue 13): 5,000 async URL jobs against a slow HTTP server plus 200 slow-decoding large PNGs, all
at once from 200 connections, against one replica (the real ``python -m captioner serve``).

What must hold:
- memory stays bounded: RSS grows by less than ``RSS_BOUND_MB`` over its idle baseline (sampled every 50 ms),
  a bound computed from the budget, not from what this flood happens to need;
- every refusal is a 503 ``overloaded`` (the admission budget) or a 429 ``rate_limited`` (one caller's running
  jobs), each with a Retry-After; nothing else fails (no other 5xx, no dropped connection);
- the replica never opens more than ``url_input.max_concurrent_fetches`` connections to the third party;
- ``captioner_admission_in_use`` shows the load (it reaches the capacity), and is back to 0 afterwards;
- once the flood stops, a normal request is answered 200 within seconds.

The slow server and every address are on 127.0.0.1 (``url_input.allow_private_networks: true`` here only).
"""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.images import photo
from tests.support.metrics import metric_value
from tests.support.processes import ServerProcess

CAPTION = "/api/v1/caption"
MB = 1024 * 1024
# Two callers flood with URL jobs (together they can fill the budget, each only half of it), a third sends the
# PNGs, and a fourth is the normal caller afterwards.
FLOOD_KEYS = ["flood-key-a", "flood-key-b"]
PNG_KEY = "png-key"
NORMAL_KEY = "normal-key"
URL_JOBS = 5000
BIG_PNGS = 200
CONNECTIONS = 200
CAPACITY = 24  # limits.max_in_flight
JOBS_PER_CALLER = 12  # jobs.max_running_per_principal
FETCHES = 8  # url_input.max_concurrent_fetches
SLOW_S = 0.5  # the third party answers each request after this long
PNG_SIDE = 1200  # 1.4 MP: ~0.2 s each to decode and resize on this machine
BODY_LIMIT = 8 * MB  # limits.max_body_bytes
# What the budget lets the replica hold at once: every ticket with a body at the limit, each decoding thread
# with its image in RGB plus the resize's copies, and 300 MB for allocator pools, sockets and thread stacks.
# The flood itself stays far below it (its bodies are ~1 MB), so this is the bound any flood must keep to.
RSS_BOUND_MB = (CAPACITY * BODY_LIMIT + 2 * 4 * 3 * PNG_SIDE**2) // MB + 300


class SlowImageServer:
    """A third-party image host that takes ``SLOW_S`` per request; counts connections and the most at once."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.active = 0
        self.peak = 0
        self.served = 0
        self.port = 0
        self._started = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SlowImageServer:
        self._thread.start()
        assert self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024))
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(SLOW_S)
            head = f"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {len(self.body)}\r\n\r\n"
            writer.write(head.encode() + self.body)
            await writer.drain()
            self.served += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.active -= 1
            writer.close()


def big_png(index: int, base: bytes) -> bytes:
    """The same large PNG with a tEXt chunk naming ``index``: a different SHA-256 each, the same decoding cost."""
    text = b"Comment\x00flood " + str(index).encode()
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
    return base[:33] + chunk + base[33:]  # after the signature (8) and IHDR (25)


@pytest.fixture(scope="module")
def base_png() -> bytes:
    y, x = np.mgrid[0:PNG_SIDE, 0:PNG_SIDE]
    rgb = np.stack([x * 255 // PNG_SIDE, y * 255 // PNG_SIDE, (x + y) * 127 // PNG_SIDE], axis=-1).astype(np.uint8)
    rgb[::7, ::5] ^= 0x1F  # texture: real filtering and inflating work
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def replica(tiny_model_dir: Path) -> Iterator[ServerProcess]:
    env = {
        "CAPTIONER_URL_INPUT__ALLOW_PRIVATE_NETWORKS": "true",  # the slow server is on 127.0.0.1
        "CAPTIONER_AUTH__API_KEYS": f"[{', '.join([*FLOOD_KEYS, PNG_KEY, NORMAL_KEY])}]",
        "CAPTIONER_URL_INPUT__MAX_CONCURRENT_FETCHES": str(FETCHES),
        "CAPTIONER_URL_INPUT__TIMEOUT_S": "10",
        "CAPTIONER_LIMITS__MAX_IN_FLIGHT": str(CAPACITY),
        "CAPTIONER_JOBS__MAX_RUNNING_PER_PRINCIPAL": str(JOBS_PER_CALLER),
        "CAPTIONER_LIMITS__MAX_BODY_BYTES": str(BODY_LIMIT),
        # Room for the flood's 200 connections (the connection limit has its own test in test_hardening.py).
        "CAPTIONER_SERVER__LIMIT_CONCURRENCY": str(2 * CONNECTIONS),
        "CAPTIONER_GENERATION__NUM_BEAMS": "1",
        "CAPTIONER_GENERATION__MAX_LENGTH": "8",
        "CAPTIONER_GENERATION__MIN_LENGTH": "1",
        "CAPTIONER_BATCHING__MAX_WAIT_MS": "10",
    }
    with ServerProcess(tiny_model_dir, env=env) as process:
        yield process


class Sampler(threading.Thread):
    """RSS every 50 ms, and the admission gauge every 250 ms, until stopped."""

    def __init__(self, process: ServerProcess) -> None:
        super().__init__(daemon=True)
        self.process = process
        self.rss: list[int] = []
        self.in_use: list[float] = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()

    def run(self) -> None:
        ticks = 0
        try:
            while not self.stop.is_set():
                self.rss.append(self.process.rss())
                if ticks % 5 == 0:
                    text = httpx.get(self.process.url + "/metrics", timeout=10).text
                    self.in_use.append(metric_value(text, "captioner_admission_in_use"))
                ticks += 1
                self.stop.wait(0.05)
        except BaseException as exc:  # collected and asserted by the test
            self.errors.append(exc)


async def flood(url: str, image_url: str, base: bytes) -> tuple[Counter[str], list[str], int]:
    """Every request as fast as 200 connections allow; answers counted by status and code, Retry-After checked.

    200 workers share 20 clients of 10 connections each: httpx's pool scans all its waiting requests for every
    connection it hands out, so one pool with thousands queued would make the client, not the server, the
    bottleneck.
    """
    outcomes: Counter[str] = Counter()
    problems: list[str] = []
    requests: list[tuple[str, dict[str, object]]] = [
        ("url-job", {"params": {"mode": "async"}, "json": {"url": image_url}, "headers": bearer(FLOOD_KEYS[i % 2])})
        for i in range(URL_JOBS)
    ]
    step = URL_JOBS // BIG_PNGS
    for index in range(BIG_PNGS):  # spread through the flood, not bunched at one end
        headers = {"Content-Type": "image/png", **bearer(PNG_KEY)}
        requests.insert(index * (step + 1), ("png", {"content": big_png(index, base), "headers": headers}))
    pending = iter(requests)
    per_client = 10
    # A long keepalive_expiry: the server closes idle connections (5 s), and httpx notices before reusing one. A
    # short one makes httpx's pool close connections under requests it has just assigned to them when its event
    # loop stalls (ReadError(ClosedResourceError), a client-side race).
    limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client, keepalive_expiry=30.0)
    clients = [httpx.AsyncClient(base_url=url, limits=limits, timeout=120) for _ in range(CONNECTIONS // per_client)]

    async def worker(client: httpx.AsyncClient) -> None:
        for kind, request in pending:  # the workers share one iterator: each request is sent once
            try:
                response = await client.post(CAPTION, **request)  # type: ignore[arg-type]
            except httpx.HTTPError as exc:
                problems.append(f"{kind}: {type(exc).__name__}: {exc}")
                continue
            code = response.json().get("error", {}).get("code", "") if response.status_code >= 400 else ""
            outcomes[f"{kind} {response.status_code} {code}".strip()] += 1
            if response.status_code in (429, 503) and not response.headers.get("retry-after", "").isdigit():
                problems.append(f"{kind}: {response.status_code} without Retry-After")

    try:
        await asyncio.gather(*(worker(clients[i % len(clients)]) for i in range(CONNECTIONS)))
    finally:
        for client in clients:
            await client.aclose()
    return outcomes, problems, len(requests)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_flood_is_refused_at_the_door_memory_stays_bounded_and_service_resumes(
    replica: ServerProcess, base_png: bytes
) -> None:
    with SlowImageServer(photo(11)) as slow:
        image_url = f"http://127.0.0.1:{slow.port}/cat.png"
        warm = httpx.post(replica.url + CAPTION, json={"url": image_url}, headers=bearer(NORMAL_KEY), timeout=60)
        assert warm.status_code == 200, warm.text
        baseline = replica.rss()
        sampler = Sampler(replica)
        sampler.start()
        started = time.monotonic()
        try:
            outcomes, problems, sent = asyncio.run(flood(replica.url, image_url, base_png))
        finally:
            flood_s = time.monotonic() - started
            sampler.stop.set()
            sampler.join(30)
        flood_ended = time.monotonic()

        # Service resumes: a normal request (a fresh image) is answered 200.
        recovered_s, answer = None, None
        while time.monotonic() - flood_ended < 60:
            answer = httpx.post(
                replica.url + CAPTION, content=photo(int(time.monotonic() * 1000)), timeout=60,
                headers={"Content-Type": "image/png", **bearer(NORMAL_KEY)},
            )  # fmt: skip
            if answer.status_code == 200:
                recovered_s = time.monotonic() - flood_ended
                break
            assert answer.status_code == 503, answer.text
            time.sleep(0.1)
        # Every accepted job ends, and every ticket comes back.
        deadline = time.monotonic() + 60
        while replica.metric("captioner_admission_in_use") > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        in_use_after = replica.metric("captioner_admission_in_use")
        peak_fetches = slow.peak

    peak_mb = (max(sampler.rss) - baseline) / MB
    print(
        f"\nflood: {sent} requests in {flood_s:.1f} s; {dict(sorted(outcomes.items()))}; RSS baseline "
        f"{baseline / MB:.0f} MB, peak +{peak_mb:.0f} MB (bound +{RSS_BOUND_MB} MB); admission in use peak "
        f"{max(sampler.in_use, default=0):.0f}/{CAPACITY}; third-party connections at once: {peak_fetches} "
        f"(cap {FETCHES}); a normal request answered 200 {recovered_s:.2f} s after the flood"
        if recovered_s is not None
        else f"no recovery: {answer.text if answer else None}"
    )
    assert not sampler.errors, sampler.errors
    assert not problems, problems[:10]
    assert sum(outcomes.values()) == sent == URL_JOBS + BIG_PNGS
    allowed = {"url-job 202", "url-job 429 rate_limited", "url-job 503 overloaded", "png 200", "png 503 overloaded"}
    assert set(outcomes) <= allowed, outcomes
    assert outcomes["url-job 503 overloaded"] + outcomes["png 503 overloaded"] > 0  # the budget refused some
    assert outcomes["url-job 429 rate_limited"] > 0  # one caller may not hold every ticket
    assert outcomes["url-job 202"] > 0 and outcomes["png 200"] > 0  # and work got done throughout
    assert peak_mb < RSS_BOUND_MB
    assert peak_fetches <= FETCHES
    assert 0 < max(sampler.in_use) <= CAPACITY  # the HPA sees the load, whatever kind of work it is
    assert in_use_after == 0
    assert recovered_s is not None and recovered_s < 30
    assert replica.alive()

"""Tenants end to end: two ``python -m captioner serve`` replicas sharing one real redis-server and one keys file.

- Two tenants with different rates, hammered over both replicas at once, each get their own limit (shared through
  Redis: the slow one is refused on both replicas).
- A key added to the file works on both replicas within seconds, and one removed stops working as fast, while a
  third tenant's requests go on throughout without a single failure; a bad file changes nothing. SIGHUP re-reads
  the file at once.
- A caption-scope key gets 403 ``forbidden`` on every admin endpoint (variants, drift, drift reference), and on the
  job and feedback endpoints it has no scope for; an admin key reads them.
- Tenant B is not told that tenant A's image was cached (though it was served from the cache), on either replica.
- A daily quota is shared by the replicas (429 ``quota_exceeded`` + Retry-After until midnight UTC), and
  ``captioner usage export`` reads the counts back from Redis.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.support.images import photo
from tests.support.processes import ServerProcess, with_repo_on_path
from tests.support.redis import RedisServer
from tests.support.servers import replicas
from tests.support.waits import wait_for

CAPTION = "/api/v1/caption"
NOT_AN_IMAGE = b"not an image"  # through the gate, then 400
PNG = {"Content-Type": "image/png"}
SLOW_RATE, FAST_RATE = 2.0, 10.0  # per second, each with a burst of the same size
WINDOW_S = 3.0
SLACK = 1.10
QUOTA = 2


def key() -> str:
    return "k-" + secrets.token_hex(16)


KEYS = {name: key() for name in ("slow", "fast", "viewer", "ops", "alpha", "beta", "quota", "steady", "rot1", "rot2")}


def tenant(name: str, keys: list[str], scopes: list[str], **limits: float) -> str:
    hashes = ", ".join(f'"sha256:{hashlib.sha256(k.encode()).hexdigest()}"' for k in keys)
    extra = "".join(f"\n    {field}: {value}" for field, value in limits.items())
    return f"  - name: {name}\n    keys: [{hashes}]\n    scopes: [{', '.join(scopes)}]{extra}\n"


def keys_file(rotating: list[str]) -> str:
    """The file, with the ``rotating`` tenant's keys as given."""
    everything = ["caption", "jobs", "feedback"]
    return "tenants:\n" + "".join(
        [
            tenant("slow", [KEYS["slow"]], ["caption"], rate_per_s=SLOW_RATE, burst=int(SLOW_RATE)),
            tenant("fast", [KEYS["fast"]], ["caption"], rate_per_s=FAST_RATE, burst=int(FAST_RATE)),
            tenant("viewer", [KEYS["viewer"]], ["caption"]),
            tenant("ops", [KEYS["ops"]], ["admin"]),
            tenant("alpha", [KEYS["alpha"]], everything),
            tenant("beta", [KEYS["beta"]], everything),
            tenant("quota", [KEYS["quota"]], ["caption"], max_images_per_day=QUOTA),
            tenant("steady", [KEYS["steady"]], ["caption"]),
            tenant("rotating", [KEYS[k] for k in rotating], ["caption"]),
        ]
    )


def write_atomically(path: Path, text: str) -> None:
    """As a config-management tool (or a Kubernetes volume) replaces a file: a new one renamed over the old."""
    staged = path.with_suffix(".new")
    staged.write_text(text)
    os.replace(staged, path)


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def not_an_image(http: httpx.Client, url: str, name: str, path: str = CAPTION) -> httpx.Response:
    return http.post(url + path, content=NOT_AN_IMAGE, headers={**bearer(name), **PNG})


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def keys_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.yaml"
    path.write_text(keys_file(rotating=["rot1"]))
    return path


@pytest.fixture(scope="module")
def pair(redis: RedisServer, keys_path: Path, tiny_model_dir: Path) -> Iterator[list[ServerProcess]]:
    env = {
        "CAPTIONER_AUTH__KEYS_FILE": str(keys_path),
        "CAPTIONER_AUTH__KEYS_FILE_POLL_S": "0.2",
        "CAPTIONER_CACHE__REDIS_URL": redis.url,  # the shared cache, rate limits, usage counters, seen answers
        # A busy test machine must not look like a dead Redis.
        "CAPTIONER_CACHE__REDIS_TIMEOUT_S": "2",
        "CAPTIONER_RATE_LIMIT__REDIS_TIMEOUT_S": "2",
        "CAPTIONER_LOGGING__LEVEL": "info",
    }
    with replicas(*(ServerProcess(tiny_model_dir, env=env) for _ in range(2))) as servers:
        yield list(servers)


# ---------------------------------------------------------------------------------------------- rates


@dataclass
class Tally:
    accepted: int = 0  # through the limiter (400: not an image)
    limited: dict[str, int] = field(default_factory=dict)  # per replica: 429
    unexpected: list[str] = field(default_factory=list)


def hammer(tenants: list[str], urls: list[str], seconds: float) -> tuple[dict[str, Tally], float]:
    """A thread per tenant and replica, each sending as fast as it can for ``seconds``; the tallies and the time
    from the first request sent to the last answer."""
    tallies = {name: Tally(limited=dict.fromkeys(urls, 0)) for name in tenants}
    lock = threading.Lock()
    times: list[float] = []

    def client(name: str, url: str) -> None:
        with httpx.Client(timeout=30) as http:
            stop_at = time.monotonic() + seconds
            while time.monotonic() < stop_at:
                sent = time.monotonic()
                response = not_an_image(http, url, name)
                with lock:
                    times.extend((sent, time.monotonic()))
                    if response.status_code == 429:
                        tallies[name].limited[url] += 1
                    elif response.status_code == 400:
                        tallies[name].accepted += 1
                    else:
                        tallies[name].unexpected.append(f"{response.status_code} {response.text[:200]}")

    with ThreadPoolExecutor(len(tenants) * len(urls)) as pool:
        for future in [pool.submit(client, name, url) for name in tenants for url in urls]:
            future.result()
    return tallies, max(times) - min(times)


def test_two_tenants_with_different_rates_each_get_their_own_limit_over_two_replicas(
    pair: list[ServerProcess],
) -> None:
    urls = [server.url for server in pair]
    tallies, elapsed = hammer(["slow", "fast"], urls, WINDOW_S)
    slow, fast = tallies["slow"], tallies["fast"]
    assert not slow.unexpected and not fast.unexpected, (slow, fast)
    slow_bound = SLOW_RATE + SLOW_RATE * elapsed  # burst + rate x time, for both replicas together
    fast_bound = FAST_RATE + FAST_RATE * elapsed
    assert SLOW_RATE <= slow.accepted <= slow_bound * SLACK, (slow, slow_bound)
    assert all(n > 0 for n in slow.limited.values()), slow  # one limit, shared: it bit on both replicas
    assert fast.accepted <= fast_bound * SLACK, (fast, fast_bound)
    assert fast.accepted > slow_bound * SLACK, (fast, slow_bound)  # more than the slow tenant's limit: its own
    assert sum(fast.limited.values()) > 0, fast  # and that limit bit too


# ---------------------------------------------------------------------------------------------- rotation


def status_for(url: str, name: str) -> int:
    with httpx.Client(timeout=30) as http:
        return not_an_image(http, url, name).status_code


def on_every_replica(pair: list[ServerProcess], name: str, status: int) -> bool:
    return all(status_for(server.url, name) == status for server in pair)


class Steady:
    """Another tenant's requests, one after the other on alternate replicas, for as long as the block runs."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.answered = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self._stop.is_set():
                url = self.urls[self.answered % len(self.urls)]
                try:
                    response = not_an_image(http, url, "steady")
                    if response.status_code != 400:
                        self.failures.append(f"{url}: {response.status_code} {response.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{url}: {exc!r}")
                self.answered += 1
                self._stop.wait(0.02)

    def __enter__(self) -> Steady:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def test_keys_added_and_removed_apply_on_both_replicas_within_seconds_with_no_failed_request(
    pair: list[ServerProcess], keys_path: Path
) -> None:
    assert on_every_replica(pair, "rot1", 400) and on_every_replica(pair, "rot2", 401)
    with Steady([server.url for server in pair]) as steady:
        write_atomically(keys_path, keys_file(rotating=["rot1", "rot2"]))  # the new key, beside the old
        started = time.monotonic()
        wait_for(lambda: on_every_replica(pair, "rot2", 400), "the added key to work on both replicas", 30)
        added_s = time.monotonic() - started
        assert on_every_replica(pair, "rot1", 400)  # the old key still works: overlap

        write_atomically(keys_path, keys_file(rotating=["rot2"]))  # the old key revoked
        started = time.monotonic()
        wait_for(lambda: on_every_replica(pair, "rot1", 401), "the removed key to stop working on both replicas", 30)
        removed_s = time.monotonic() - started

        write_atomically(keys_path, "tenants: [\n")  # a broken file: refused, the keys in force stay
        wait_for(
            lambda: all(s.metric("captioner_keys_file_reloads_total", 'result="refused"') >= 1 for s in pair),
            "both replicas to refuse the broken file",
        )
        assert on_every_replica(pair, "rot2", 400) and on_every_replica(pair, "rot1", 401)
        write_atomically(keys_path, keys_file(rotating=["rot2"]))
        wait_for(lambda: steady.answered > 20, "the steady tenant's requests")
    assert not steady.failures, steady.failures[:5]
    # "Within a few seconds": the file is polled every 0.2 s; a loaded machine is given plenty.
    assert added_s < 10 and removed_s < 10, (added_s, removed_s)
    for server in pair:
        log = server.log(200_000)
        assert "keys file refused" in log and "keys file loaded" in log
        assert all(k not in log for k in KEYS.values())  # never a key in the log
        assert all(hashlib.sha256(k.encode()).hexdigest() not in log for k in KEYS.values())


# ---------------------------------------------------------------------------------------------- scopes


def test_a_caption_scope_key_is_forbidden_the_admin_endpoints_and_an_admin_key_is_not(
    pair: list[ServerProcess],
) -> None:
    url = pair[0].url
    for path in ("/api/v1/variants", "/api/v1/drift", "/api/v1/drift/reference"):
        refused = httpx.get(url + path, headers=bearer("viewer"), timeout=30)
        assert refused.status_code == 403, (path, refused.text)
        assert refused.json()["error"]["code"] == "forbidden"
        assert "model" not in refused.text  # nothing of the models in the refusal
        allowed = httpx.get(url + path, headers=bearer("ops"), timeout=30)
        assert allowed.status_code == 200, (path, allowed.text)
        assert httpx.get(url + path, headers={"Authorization": "Bearer nobody"}, timeout=30).status_code == 401
    # Nor the scopes it lacks: jobs (async), feedback.
    with httpx.Client(timeout=30) as http:
        job = not_an_image(http, url, "viewer", CAPTION + "?mode=async")
    assert job.status_code == 403 and job.json()["error"]["code"] == "forbidden"
    rating = {"image_sha256": "0" * 64, "caption": "a cat", "rating": 5}
    assert httpx.post(url + "/api/v1/feedback", headers=bearer("viewer"), json=rating, timeout=30).status_code == 403
    assert status_for(url, "viewer") == 400  # its own scope: through the gate (then not an image)
    assert httpx.get(url + "/api/v1/variants", headers=bearer("ops"), timeout=30).json()["variants"]


# ---------------------------------------------------------------------------------------------- privacy


def caption(server: ServerProcess, name: str, image: bytes) -> dict[str, object]:
    response = httpx.post(
        server.url + CAPTION, headers={**bearer(name), "Content-Type": "image/png"}, content=image, timeout=120
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_tenant_b_is_not_told_that_tenant_as_image_was_cached(pair: list[ServerProcess]) -> None:
    first, second = pair
    image = photo(2411)
    assert caption(first, "alpha", image)["cached"] is False
    assert caption(second, "alpha", image)["cached"] is True  # alpha's own image, from the shared cache
    hits = second.metric("captioner_cache_hits_total")
    beta = caption(second, "beta", image)
    assert second.metric("captioner_cache_hits_total") == hits + 1  # served from the cache all the same...
    assert beta["cached"] is False  # ...but beta never sent it: it is not told
    assert caption(first, "beta", image)["cached"] is True  # its own second time, on the other replica too
    assert caption(first, "alpha", image)["cached"] is True


# ---------------------------------------------------------------------------------------------- quota and usage


def test_the_daily_quota_is_shared_by_the_replicas_and_usage_export_reads_it(
    pair: list[ServerProcess], redis: RedisServer, tmp_path: Path
) -> None:
    first, second = pair
    assert status_for(first.url, "quota") == 400  # admitted (counted), then not an image
    assert status_for(second.url, "quota") == 400
    with httpx.Client(timeout=30) as http:
        refused = not_an_image(http, first.url, "quota")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "quota_exceeded"
    now = datetime.now(UTC)
    until_midnight = 86400 - (now.hour * 3600 + now.minute * 60 + now.second)
    assert abs(int(refused.headers["Retry-After"]) - until_midnight) <= 5
    assert first.metric("captioner_tenant_images_total", 'tenant="quota",outcome="quota_exceeded"') == 1
    assert sum(s.metric("captioner_tenant_images_total", 'tenant="quota",outcome="rejected"') for s in pair) == 2

    out = tmp_path / "usage.jsonl"
    today = now.strftime("%Y-%m-%d")

    def counted(counter: str) -> bytes:  # counts are written in the background, off the request's path
        return redis.command("HGET", f"captioner:usage:{today}", f"quota:{counter}")

    wait_for(lambda: counted("quota_exceeded").startswith(b"$1\r\n1") and counted("rejected").startswith(b"$1\r\n2"))
    env = with_repo_on_path({**os.environ, "CAPTIONER_CACHE__REDIS_URL": redis.url})
    args = [sys.executable, "-m", "captioner", "usage", "export", "--since", today, "--format", "jsonl", "--out"]
    done = subprocess.run([*args, str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {row["tenant"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert rows["quota"] == {
        "date": today, "tenant": "quota", "images": QUOTA, "captioned": 0, "cached": 0, "rejected": QUOTA,
        "failed": 0, "quota_exceeded": 1,
    }  # fmt: skip
    assert rows["alpha"]["images"] >= 1 and rows["alpha"]["captioned"] + rows["alpha"]["cached"] >= 1
    csv_out = subprocess.run(
        [sys.executable, "-m", "captioner", "usage", "export", "--since", today],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert csv_out.returncode == 0, csv_out.stderr
    lines = csv_out.stdout.splitlines()
    assert lines[0] == "date,tenant,images,captioned,cached,rejected,failed,quota_exceeded"
    assert f"{today},quota,2,0,0,2,0,1" in lines


# ---------------------------------------------------------------------------------------------- SIGHUP


def test_sighup_re_reads_the_keys_file_at_once(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A replica that would not look at the file for an hour takes a new key on SIGHUP (``kill -HUP``)."""
    keys_path = tmp_path / "keys.yaml"
    keys_path.write_text("tenants:\n" + tenant("rotating", [KEYS["rot1"]], ["caption"]))
    env = {"CAPTIONER_AUTH__KEYS_FILE": str(keys_path), "CAPTIONER_AUTH__KEYS_FILE_POLL_S": "3600",
           "CAPTIONER_LOGGING__LEVEL": "info"}  # fmt: skip
    with ServerProcess(tiny_model_dir, env=env) as server:
        assert status_for(server.url, "rot1") == 400 and status_for(server.url, "rot2") == 401
        write_atomically(keys_path, "tenants:\n" + tenant("rotating", [KEYS["rot2"]], ["caption"]))
        assert status_for(server.url, "rot2") == 401  # not polled for an hour
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: status_for(server.url, "rot2") == 400, "the new key to work after SIGHUP")
        assert status_for(server.url, "rot1") == 401
        assert server.alive()

"""Feedback kept in Redis (a real ``redis-server``): shared by two replicas, trimmed to its bounds, exported from
there; while Redis is down a rating is refused with 503 + Retry-After, never dropped silently."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from captioner.cli import main
from captioner.client import Client, Overloaded
from captioner.feedback.redis_store import STREAM
from captioner.tools.eval.command import load_annotations
from tests.support.images import photo
from tests.support.model import tiny_settings
from tests.support.redis import RedisServer
from tests.support.servers import LiveServer, replicas

MAX_RECORDS = 4


@pytest.fixture
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def pair(tiny_model_dir: Path, redis: RedisServer) -> Iterator[tuple[LiveServer, ...]]:
    settings = tiny_settings(
        tiny_model_dir,
        cache={"redis_url": redis.url, "redis_timeout_s": 0.5},
        feedback={"max_records": MAX_RECORDS, "path": "/nonexistent/never-used"},
    )
    with replicas(LiveServer(settings), LiveServer(settings)) as servers:
        yield servers


def test_two_replicas_share_one_bounded_feedback_stream(
    pair: tuple[LiveServer, ...],
    redis: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = pair
    with Client(a.url) as first, Client(b.url) as second:
        result = first.caption(photo(61))
        for n in range(6):  # alternate replicas; only the newest MAX_RECORDS stay
            (first, second)[n % 2].feedback(
                image_sha256=result.image_sha256, caption=result.text, rating=1 + n % 5, correction=f"fix {n}"
            )

    assert redis.command("XLEN", STREAM).strip() == f":{MAX_RECORDS}".encode()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CAPTIONER_CACHE__REDIS_URL", redis.url)
    assert main(["feedback", "export", "--out", "coco.json"]) == 0
    images, _ = load_annotations(tmp_path / "coco.json")
    assert [image.references for image in images] == [("fix 2", "fix 3", "fix 4", "fix 5")]
    assert a.metric("captioner_feedback_total") + b.metric("captioner_feedback_total") == 6


def test_with_redis_down_a_rating_is_refused_to_be_retried(pair: tuple[LiveServer, ...], redis: RedisServer) -> None:
    a, _ = pair
    with Client(a.url, max_retries=0) as client:
        result = client.caption(photo(62))
        redis.kill()
        with pytest.raises(Overloaded) as refused:
            client.feedback(image_sha256=result.image_sha256, caption=result.text, rating=5)

    assert refused.value.status_code == 503 and refused.value.retry_after_s is not None
    assert a.metric("captioner_feedback_store_errors_total") >= 1
    assert a.metric("captioner_feedback_total") == 0

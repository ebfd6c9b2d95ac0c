"""Feedback counting shared through Redis (a real ``redis-server``, issue 21 item 5.4): a caption served by one
replica and rated through another counts, once for the fleet; the keys expire."""

from __future__ import annotations

import asyncio
from pathlib import Path

from captioner.config import load_settings
from captioner.feedback.collector import build_feedback
from captioner.feedback.served import RATED_PREFIX, SERVED_PREFIX, Credit, ServedImages, pair_key
from captioner.observability.metrics import Metrics
from captioner.shared_state.redis_client import RedisClient
from tests.support.redis import RedisServer

IMAGE = "c" * 64


def test_two_replicas_share_what_was_served_and_who_rated_it(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as redis:

        async def scenario() -> None:
            a, b = (
                ServedImages(
                    served_ttl_s=600, rated_ttl_s=3600, max_entries=100,
                    redis=RedisClient(redis.url, name="feedback", timeout_s=1.0),
                )
                for _ in range(2)
            )  # fmt: skip
            a.remember("key:alice", IMAGE, "canary")
            await a.aclose()  # the background write has landed
            assert await b.credit("key:mallory", IMAGE) == Credit(None, False, "not_served")
            assert await b.credit("key:alice", IMAGE) == Credit("canary", True)
            assert (await a.credit("key:alice", IMAGE)).why_not == "repeated"  # through the other replica: once
            assert (await b.credit("key:alice", IMAGE)).why_not == "repeated"

        asyncio.run(scenario())
        key = pair_key("key:alice", IMAGE)
        served_ttl = int(redis.command("PTTL", SERVED_PREFIX + key).strip()[1:])
        rated_ttl = int(redis.command("PTTL", RATED_PREFIX + key).strip()[1:])
        assert 0 < served_ttl <= 600_000 and 600_000 < rated_ttl <= 3_600_000
        assert b"alice" not in redis.command("KEYS", "*")  # callers are hashed into the key names


def test_a_redis_feedback_store_shares_its_client_with_the_served_memory(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as redis:
        settings = load_settings(None, {}).replace("cache", redis_url=redis.url)
        feedback = build_feedback(settings, Metrics())
        assert feedback.served._redis is feedback.store.redis  # type: ignore[attr-defined]
        asyncio.run(feedback.aclose())

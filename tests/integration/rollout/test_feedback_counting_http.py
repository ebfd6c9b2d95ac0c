"""Feedback on a live server (issue 21, item 5.4): one caller's rating counts once per image, and only for an image
captioned for that caller; every rating is still kept and answered ``202 {"status": "accepted"}``."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import httpx

from captioner.feedback.store import FeedbackRecord
from tests.support.images import photo
from tests.support.model import tiny_settings
from tests.support.servers import LiveServer

ALICE, MALLORY = "alice-key", "mallory-key"


def test_ratings_count_once_per_caller_and_image_and_only_for_served_images(tiny_model_dir: Path) -> None:
    settings = tiny_settings(
        tiny_model_dir, auth={"api_keys": [ALICE, MALLORY]}, generation={"num_beams": 1, "max_length": 8}
    )
    with (
        LiveServer(settings) as server,
        httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ALICE}"}, timeout=60) as alice,
        httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {MALLORY}"}, timeout=60) as mallory,
    ):
        stats = server.app.state.captioner.feedback.stats

        def rate(client: httpx.Client, **target: str) -> None:
            answer = client.post("/api/v1/feedback", json={**target, "caption": "a thing", "rating": 1})
            assert (answer.status_code, answer.json()) == (202, {"status": "accepted"})

        image = photo(7)
        sha = alice.post("/api/v1/caption", content=image, headers={"Content-Type": "image/png"}).json()["image_sha256"]
        rate(alice, image_sha256=sha)
        assert stats.approval("default") == (1, 0.0)
        for _ in range(3):
            rate(alice, image_sha256=sha)  # the same caller again
            rate(mallory, image_sha256=sha)  # another caller, never served this image
        rate(mallory, image_sha256=hashlib.sha256(b"never captioned").hexdigest())
        assert stats.approval("default") == (1, 0.0)

        job = mallory.post("/api/v1/caption?mode=async", content=photo(8), headers={"Content-Type": "image/png"})
        deadline = time.monotonic() + 60
        while mallory.get(job.headers["Location"]).json()["status"] == "processing":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        rate(mallory, job_id=job.json()["job_id"])
        rate(mallory, job_id=job.json()["job_id"])
        assert stats.approval("default") == (2, 0.0)

        records: list[FeedbackRecord] = asyncio.run(server.app.state.captioner.feedback.store.records())
        assert [r.counted for r in records] == [True] + [False] * 7 + [True, False]
        assert server.metric("captioner_feedback_total") == 10  # every rating received is counted there

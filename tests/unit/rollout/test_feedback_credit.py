"""Which ratings count toward the canary analysis (issue 21, item 5.4): a caller's first rating of an image that
was captioned for them; every other rating is still kept, marked ``counted: false``.

The rule (``credit``, pure), the in-process memory (``ServedImages`` without Redis, on a fake clock), and
``Feedback.add`` with a fake store. Redis' shared memory: tests/system/test_feedback_served_redis.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from captioner.errors import Overloaded
from captioner.feedback.collector import Feedback
from captioner.feedback.served import NOT_SERVED, REPEATED, Credit, ServedImages, credit
from captioner.feedback.store import FeedbackRecord
from captioner.observability.metrics import Metrics

A, B = "a" * 64, "b" * 64
ALICE, MALLORY = "key:alice", "ip:203.0.113.9"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_rule() -> None:
    assert credit("canary", first_rating=True) == Credit("canary", counted=True)
    assert credit("canary", first_rating=False) == Credit("canary", counted=False, why_not=REPEATED)
    assert credit(None, first_rating=True) == Credit(None, counted=False, why_not=NOT_SERVED)


@pytest.mark.anyio
async def test_a_caller_counts_once_per_image_and_only_for_an_image_served_to_them() -> None:
    served = ServedImages(served_ttl_s=3600, rated_ttl_s=86400, max_entries=100)
    assert await served.credit(ALICE, A) == Credit(None, False, NOT_SERVED)  # never captioned for anyone
    served.remember(ALICE, A, "canary")
    assert await served.credit(MALLORY, A) == Credit(None, False, NOT_SERVED)  # captioned for someone else
    assert await served.credit(ALICE, A) == Credit("canary", True)
    for _ in range(5):
        assert await served.credit(ALICE, A) == Credit("canary", False, REPEATED)
    served.remember(ALICE, A, "canary")  # captioning it again doesn't buy another vote
    assert (await served.credit(ALICE, A)).counted is False


@pytest.mark.anyio
async def test_an_unserved_rating_leaves_no_mark_so_a_later_caption_can_count() -> None:
    served = ServedImages(served_ttl_s=3600, rated_ttl_s=86400, max_entries=100)
    assert (await served.credit(ALICE, B)).counted is False
    served.remember(ALICE, B, "production")
    assert await served.credit(ALICE, B) == Credit("production", True)


@pytest.mark.anyio
async def test_a_served_pair_is_remembered_for_its_ttl_and_the_memory_is_bounded() -> None:
    clock = Clock()
    served = ServedImages(served_ttl_s=60, rated_ttl_s=86400, max_entries=2, clock=clock)
    served.remember(ALICE, A, "canary")
    clock.now = 61
    assert (await served.credit(ALICE, A)).why_not == NOT_SERVED  # too late to count
    for image in ("1" * 64, "2" * 64, "3" * 64):
        served.remember(ALICE, image, "production")
    assert (await served.credit(ALICE, "1" * 64)).why_not == NOT_SERVED  # the oldest went first
    assert (await served.credit(ALICE, "3" * 64)).counted is True


@pytest.mark.anyio
async def test_a_job_proves_its_image_was_served_but_still_counts_once() -> None:
    served = ServedImages(served_ttl_s=60, rated_ttl_s=86400, max_entries=10)
    assert await served.credit(ALICE, A, proven_variant="canary") == Credit("canary", True)
    assert (await served.credit(ALICE, A, proven_variant="canary")).why_not == REPEATED
    served.remember(ALICE, A, "canary")
    assert (await served.credit(ALICE, A)).why_not == REPEATED  # by image_sha256 after the job_id: once in all


class Store:
    def __init__(self) -> None:
        self.records: list[FeedbackRecord] = []
        self.fail = False

    async def add(self, record: FeedbackRecord, image: bytes | None) -> None:
        if self.fail:
            raise Overloaded("down", retry_after_s=1)
        self.records.append(record)

    async def aclose(self) -> None:
        pass


def feedback_with(store: Store) -> Feedback:
    served = ServedImages(served_ttl_s=3600, rated_ttl_s=86400, max_entries=100)
    return Feedback(store, Metrics(), keep_images=False, served=served)  # type: ignore[arg-type]


def rating(variant: str = "production", rating: int = 1, **fields: Any) -> FeedbackRecord:
    return FeedbackRecord(image_sha256=A, caption="a cat", rating=rating, variant=variant, **fields)


@pytest.mark.anyio
async def test_every_rating_is_kept_and_only_counted_ones_reach_the_approval() -> None:
    store = Store()
    feedback = feedback_with(store)
    await feedback.add(rating(), None, caller=MALLORY)  # never served to mallory
    feedback.served.remember(ALICE, A, "canary")
    # The variant remembered serving it wins over the one routing names now (the weights may have moved).
    await feedback.add(rating(variant="production", rating=5), None, caller=ALICE)
    for _ in range(10):
        await feedback.add(rating(variant="production"), None, caller=ALICE)
    assert len(store.records) == 12
    assert [r.counted for r in store.records] == [False, True] + [False] * 10
    assert store.records[1].variant == "canary"
    assert feedback.stats.approval("canary") == (1, 1.0) and feedback.stats.approval("production") == (0, 0.0)


@pytest.mark.anyio
async def test_a_counted_rating_the_store_refused_counts_when_retried() -> None:
    store = Store()
    feedback = feedback_with(store)
    feedback.served.remember(ALICE, A, "canary")
    store.fail = True
    with pytest.raises(Overloaded):
        await feedback.add(rating(), None, caller=ALICE)
    store.fail = False
    assert (await feedback.add(rating(), None, caller=ALICE)).counted is True
    assert feedback.stats.approval("canary")[0] == 1

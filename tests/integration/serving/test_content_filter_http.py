"""Blocked words end to end, with the tiny model's real captions: a word of an image's top caption (and of no other
suggestion) is blocked; the sync API then answers the next suggestions, and every way out that answers one caption
(sync, Hugging Face's ``POST /``, an async job) answers the fallback instead. Hits too: the cache keeps the model's
captions, the filter applies on the way out."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.images import photo
from tests.support.jobs import job_result, submit_job
from tests.support.model import tiny_settings
from tests.support.servers import LiveServer

CAPTION = "/api/v1/caption"
PNG = {"Content-Type": "image/png"}
FALLBACK = "nothing to see"


def words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"\w+", text)}


def captions(server: LiveServer, image: bytes, n: int) -> list[str]:
    answer = httpx.post(f"{server.url}{CAPTION}?num_captions={n}", content=image, headers=PNG, timeout=60)
    assert answer.status_code == 200, answer.text
    return [c["text"] for c in answer.json()["captions"]]


@pytest.fixture(scope="module")
def case(tiny_model_dir: Path) -> tuple[bytes, list[str], str]:
    """An image, its three unfiltered captions, and a word of the first that the other two don't have."""
    with LiveServer(tiny_settings(tiny_model_dir)) as plain:
        for seed in range(30):
            image = photo(900 + seed)
            found = captions(plain, image, 3)
            unique = words(found[0]) - words(found[1]) - words(found[2]) - words(FALLBACK)
            if len(found) == 3 and unique:
                assert captions(plain, image, 1) == found[:1]  # the top suggestion is the same alone
                return image, found, sorted(unique)[0]
    raise AssertionError("no image of 30 has a top caption with a word of its own")


@pytest.fixture(scope="module")
def filtered(tiny_model_dir: Path, case: tuple[bytes, list[str], str]) -> Iterator[LiveServer]:
    blocked = case[2].upper()  # any case blocks
    settings = tiny_settings(tiny_model_dir, content={"blocked_words": [blocked], "fallback_caption": FALLBACK})
    with LiveServer(settings) as server:
        yield server


def test_the_next_suggestions_take_a_blocked_captions_place(
    filtered: LiveServer, case: tuple[bytes, list[str], str]
) -> None:
    image, found, _ = case
    assert captions(filtered, image, 3) == found[1:]
    assert captions(filtered, image, 3) == found[1:]  # a cache hit is filtered too
    assert filtered.metric("captioner_filtered_captions_total") == 2


def test_an_answer_with_every_caption_blocked_is_the_fallback_on_every_way_out(
    filtered: LiveServer, case: tuple[bytes, list[str], str]
) -> None:
    image = case[0]
    fallbacks = filtered.metric("captioner_filtered_fallbacks_total")
    sync = httpx.post(filtered.url + CAPTION, content=image, headers=PNG, timeout=60).json()
    assert [c["text"] for c in sync["captions"]] == [FALLBACK]
    assert 0 < sync["captions"][0]["confidence"] < 0.01  # says nothing about the image
    hf = httpx.post(filtered.url + "/", content=image, timeout=60)
    assert hf.json() == [{"generated_text": FALLBACK}]
    accepted = submit_job(filtered, image)
    assert accepted.status_code == 202, accepted.text
    job = job_result(filtered, accepted.json()["job_id"]).json()
    assert [c["text"] for c in job["captions"]] == [FALLBACK]
    assert filtered.metric("captioner_filtered_fallbacks_total") == fallbacks + 3

"""``batching.mode: continuous`` end to end through real HTTP with the tiny model on a thread (no mocks): the
captions static mode gives, concurrent requests, an async job, and the decode metrics."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from captioner.config import Settings
from tests.support.images import photo
from tests.support.jobs import job_result, submit_job
from tests.support.model import tiny_settings
from tests.support.servers import LiveServer

CAPTION = "/api/v1/caption"
IMAGES = [photo(700 + seed) for seed in range(6)]


def settings(model_dir: Path, mode: str) -> Settings:
    # No cache: every request reaches the model.
    return tiny_settings(model_dir, batching={"mode": mode, "max_wait_ms": 5}, cache={"max_entries": 0})


@pytest.fixture(scope="module")
def continuous(tiny_model_dir: Path) -> Iterator[LiveServer]:
    with LiveServer(settings(tiny_model_dir, "continuous")) as live:
        yield live


def captions_from(server: LiveServer) -> list[list[tuple[str, float]]]:
    def ask(index: int) -> list[tuple[str, float]]:
        response = httpx.post(
            server.url + CAPTION + f"?num_captions={1 + index % 3}",
            content=IMAGES[index],
            headers={"Content-Type": "image/png"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        return [(c["text"], c["confidence"]) for c in response.json()["captions"]]

    with ThreadPoolExecutor(len(IMAGES)) as pool:  # concurrent: images join while others decode
        return list(pool.map(ask, range(len(IMAGES))))


def test_concurrent_requests_get_the_captions_static_mode_gives(continuous: LiveServer, tiny_model_dir: Path) -> None:
    got = captions_from(continuous)
    with LiveServer(settings(tiny_model_dir, "static")) as static:
        want = captions_from(static)
    for mine, theirs in zip(got, want, strict=True):
        assert [text for text, _ in mine] == [text for text, _ in theirs]
        assert [c for _, c in mine] == pytest.approx([c for _, c in theirs], abs=1e-5)
    assert continuous.metric("captioner_decode_steps_total", 'variant="default"') > 0
    assert continuous.metric("captioner_decode_first_token_seconds_count", 'variant="default"') >= len(IMAGES)
    assert continuous.metric("captioner_decode_rows", 'variant="default"') == 0  # nothing left running


def test_an_async_job_is_captioned_in_continuous_mode(continuous: LiveServer) -> None:
    accepted = submit_job(continuous, photo(799))
    assert accepted.status_code == 202, accepted.text
    done = job_result(continuous, accepted.json()["job_id"])
    assert done.status_code == 200 and done.json()["status"] == "success"


def test_each_ab_variant_decodes_in_its_own_running_set(tiny_model_dir: Path, tmp_path: Path) -> None:
    import yaml

    from captioner.config import load_settings

    config = tmp_path / "config.yaml"
    model = {"path": str(tiny_model_dir), "name": "test/tiny-blip", "device": "cpu", "worker": "thread"}
    variants = [{"variant": "a", "weight": 50}, {"variant": "b", "weight": 50, "name": "test/tiny-b"}]
    sections = {"model": model, "models": variants, "batching": {"mode": "continuous"}, "cache": {"max_entries": 0}}
    sections["feedback"] = {"path": str(tmp_path / "feedback")}  # never the working directory
    config.write_text(yaml.safe_dump(sections))
    with LiveServer(load_settings(config, {})) as server:
        served: set[str] = set()
        for seed in range(40):
            response = httpx.post(
                server.url + CAPTION,
                content=photo(900 + seed),
                headers={"Content-Type": "image/png", "X-Request-ID": f"user-{seed}"},
                timeout=60,
            )
            assert response.status_code == 200, response.text
            served.add(response.json()["variant"])
            if served == {"a", "b"}:
                break
        assert served == {"a", "b"}
        for variant in served:
            assert server.metric("captioner_decode_steps_total", f'variant="{variant}"') > 0

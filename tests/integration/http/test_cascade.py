"""The confidence cascade served for real: two untrained tiny models (seeds 0 and 1: different captions and
confidences), the seed-1 one first. Threshold 0 accepts every first answer; threshold 1 escalates every image
(an untrained model is never certain). The rule itself, failures and the drain: tests/unit/serving/test_cascade.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.images import photo
from tests.support.model import MODEL_NAME, tiny_settings
from tests.support.servers import LiveServer


@pytest.fixture(scope="module")
def first_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from captioner.tools.init_model import write_untrained_model

    return write_untrained_model(tmp_path_factory.mktemp("cascade") / "student", size="tiny", seed=1)


@pytest.fixture(scope="module", params=[0.0, 1.0], ids=["accepting", "escalating"])
def cascade_server(request: pytest.FixtureRequest, tiny_model_dir: Path, first_model: Path) -> Iterator[LiveServer]:
    settings = tiny_settings(
        tiny_model_dir, cascade={"enabled": True, "first": str(first_model), "threshold": request.param}
    )
    with LiveServer(settings) as server:
        yield server


def test_the_answer_says_whose_captions_it_carries(cascade_server: LiveServer) -> None:
    accepting = cascade_server.settings.cascade.threshold == 0.0
    image = photo(seed=7)
    answer = httpx.post(cascade_server.url + "/api/v1/caption", files={"image": ("a.png", image)}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["cascade"] == ("accepted" if accepting else "escalated")
    assert body["model"] == ("student" if accepting else MODEL_NAME)
    assert body["cached"] is False and 0 < body["captions"][0]["confidence"] < 1
    again = httpx.post(cascade_server.url + "/api/v1/caption", files={"image": ("a.png", image)}, timeout=60).json()
    assert (again["cached"], again["cascade"], again["model"], again["captions"]) == (
        True, body["cascade"], body["model"], body["captions"],
    )  # fmt: skip
    outcome = "accepted" if accepting else "escalated"
    assert cascade_server.metric("captioner_cascade_total", f'outcome="{outcome}"') == 1
    other = "escalated" if accepting else "accepted"
    assert cascade_server.metric("captioner_cascade_total", f'outcome="{other}"') == 0


def test_the_two_models_caption_differently(cascade_server: LiveServer, live_server: LiveServer) -> None:
    """Behind the cascade at threshold 0 the first model answers: not what the main model alone says."""
    image = photo(seed=8)
    cascaded = httpx.post(
        cascade_server.url + "/api/v1/caption", content=image, headers={"Content-Type": "image/png"}, timeout=60
    )
    plain = httpx.post(
        live_server.url + "/api/v1/caption", content=image, headers={"Content-Type": "image/png"}, timeout=60
    )
    assert "cascade" not in plain.json()
    same = cascaded.json()["captions"] == plain.json()["captions"]
    assert same is (cascade_server.settings.cascade.threshold == 1.0)

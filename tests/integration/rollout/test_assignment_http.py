"""A/B assignment end to end (issue 21, item 5.1): a live server with two variants at 90/10 and one API key.

Which variant answers each image is known in advance (``pick`` over the image's SHA-256), so a handful of chosen
images checks the rule exactly: the one key reaches both variants, ``X-Assignment-Key`` overrides the image for
sync, async and feedback alike, and a malformed one is a 422.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx

from captioner.serving.assignment import sticky_key
from captioner.serving.variants import pick
from tests.support.images import photo
from tests.support.model import tiny_settings
from tests.support.servers import LiveServer

KEY = "the-only-service-key"
WEIGHTS = [("production", 90.0), ("canary", 10.0)]
AUTH = {"Authorization": f"Bearer {KEY}"}


def images_for(variant: str, count: int) -> list[bytes]:
    found = []
    for seed in range(1000):
        image = photo(seed, size=(32, 32))
        if pick(WEIGHTS, sticky_key(hashlib.sha256(image).hexdigest(), None)) == variant:
            found.append(image)
            if len(found) == count:
                return found
    raise AssertionError(f"no {count} images for {variant}")


def user_for(variant: str) -> str:
    return next(u for u in (f"user-{n}" for n in range(1000)) if pick(WEIGHTS, sticky_key("", u)) == variant)


def test_one_api_key_reaches_both_variants_and_an_assignment_key_overrides_the_image(tiny_model_dir: Path) -> None:
    settings = tiny_settings(
        tiny_model_dir,
        auth={"api_keys": [KEY]},
        generation={"num_beams": 1, "max_length": 8, "min_length": 1},
    ).replace("models", variants=[{"variant": name, "weight": weight} for name, weight in WEIGHTS])
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:

        def caption(image: bytes, **headers: str) -> httpx.Response:
            return client.post("/api/v1/caption", content=image, headers={"Content-Type": "image/png", **headers})

        for variant in ("production", "canary"):
            for image in images_for(variant, 2):
                answer = caption(image)
                assert answer.status_code == 200, answer.text
                assert answer.json()["variant"] == variant  # by image, whatever the key

        canary_user = user_for("canary")
        production_image = images_for("production", 1)[0]
        pinned = caption(production_image, **{"X-Assignment-Key": canary_user})
        assert pinned.status_code == 200 and pinned.json()["variant"] == "canary"

        job = client.post(
            "/api/v1/caption?mode=async",
            content=production_image,
            headers={"Content-Type": "image/png", "X-Assignment-Key": canary_user},
        )
        assert job.status_code == 202, job.text
        deadline = time.monotonic() + 60
        while (result := client.get(job.headers["Location"]).json())["status"] == "processing":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert result["status"] == "success" and result["variant"] == "canary"

        before = server.metric("captioner_feedback_total", 'variant="canary"')
        rating = {"image_sha256": pinned.json()["image_sha256"], "caption": "a thing", "rating": 5}
        rated = client.post("/api/v1/feedback", json=rating, headers={"X-Assignment-Key": canary_user})
        assert rated.status_code == 202 and rated.json() == {"status": "accepted"}
        assert server.metric("captioner_feedback_total", 'variant="canary"') == before + 1

        for bad in ("", "x" * 256):
            refused = caption(production_image, **{"X-Assignment-Key": bad})
            assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_request"
            refused = client.post("/api/v1/feedback", json=rating, headers={"X-Assignment-Key": bad})
            assert refused.status_code == 422

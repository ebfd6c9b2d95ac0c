"""The real ``huggingface_hub.InferenceClient`` against a real server subprocess, as an HF user would call it.

Both ways the client reaches an endpoint (``base_url=`` and ``model=``), with an open server and with one that
wants an API key (which the client sends as ``Authorization: Bearer``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from tests.support.images import photo
from tests.support.processes import ServerProcess

IMAGE = photo(31, fmt="JPEG")
KEY = "hf-client-key"


@pytest.fixture(scope="module")
def open_server(tiny_model_dir: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tiny_model_dir) as server:
        yield server


@pytest.fixture(scope="module")
def keyed_process(tiny_model_dir: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tiny_model_dir, env={"CAPTIONER_AUTH__API_KEYS": f'["{KEY}"]'}) as server:
        yield server


def api_caption(server: ServerProcess, **headers: str) -> str:
    response = httpx.post(
        server.url + "/api/v1/caption", content=IMAGE, headers={"Content-Type": "image/jpeg", **headers}, timeout=60
    )
    assert response.status_code == 200, response.text
    text: str = response.json()["captions"][0]["text"]
    return text


@pytest.mark.parametrize("way", ["base_url", "model"])
def test_inference_client_gets_the_top_caption(open_server: ServerProcess, way: str) -> None:
    client = InferenceClient(**{way: open_server.url})  # type: ignore[arg-type]

    assert client.image_to_text(IMAGE).generated_text == api_caption(open_server)


@pytest.mark.parametrize("way", ["base_url", "model"])
def test_inference_client_with_an_api_key(keyed_process: ServerProcess, way: str) -> None:
    client = InferenceClient(**{way: keyed_process.url}, api_key=KEY)  # type: ignore[arg-type]

    assert client.image_to_text(IMAGE).generated_text == api_caption(keyed_process, Authorization=f"Bearer {KEY}")
    with pytest.raises(HfHubHTTPError) as refused:
        InferenceClient(**{way: keyed_process.url}).image_to_text(IMAGE)  # type: ignore[arg-type]
    assert refused.value.response is not None and refused.value.response.status_code == 401
    assert refused.value.response.json()["error"]["code"] == "unauthorized"

"""Tenants in one in-process server, without Redis: ``cache.scope: tenant`` keeps each tenant's answers apart (the
model runs again for another tenant's identical image), and the daily quota holds on this replica's own counts."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.images import photo
from tests.support.model import tiny_settings
from tests.support.servers import LiveServer

CAPTION = "/api/v1/caption"
KEYS = {"alpha": "alpha-key-1", "beta": "beta-key-1", "quota": "quota-key-1"}
QUOTAS = {"quota": 2}


def headers(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}", "Content-Type": "image/png"}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    keys_file = tmp_path_factory.mktemp("keys") / "keys.yaml"
    rows = "".join(
        f"  - name: {name}\n    keys: ['sha256:{hashlib.sha256(key.encode()).hexdigest()}']\n"
        f"    scopes: [caption]\n    max_images_per_day: {QUOTAS.get(name, 0)}\n"
        for name, key in KEYS.items()
    )
    keys_file.write_text("tenants:\n" + rows)
    settings = tiny_settings(tiny_model_dir, auth={"keys_file": str(keys_file)}, cache={"scope": "tenant"})
    with LiveServer(settings) as live:
        yield live


def caption(server: LiveServer, name: str, image: bytes) -> httpx.Response:
    return httpx.post(server.url + CAPTION, content=image, headers=headers(name), timeout=60)


def test_with_scope_tenant_another_tenants_identical_image_is_captioned_again(server: LiveServer) -> None:
    image = photo(4242)
    assert caption(server, "alpha", image).json()["cached"] is False
    assert caption(server, "alpha", image).json()["cached"] is True
    images = server.metric("captioner_images_total")
    beta = caption(server, "beta", image).json()
    assert beta["cached"] is False
    assert server.metric("captioner_images_total") == images + 1  # a model call of its own: not even timing tells


def test_the_daily_quota_holds_without_redis(server: LiveServer) -> None:
    assert [caption(server, "quota", b"not an image").status_code for _ in range(2)] == [400, 400]  # counted
    refused = caption(server, "quota", b"not an image")
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "quota_exceeded" and int(refused.headers["Retry-After"]) >= 1
    assert caption(server, "alpha", b"not an image").status_code == 400  # 0: unlimited

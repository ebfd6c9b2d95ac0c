"""Property-based fuzzing of the whole HTTP API from its own ``/openapi.json`` (schemathesis + hypothesis).

A live server with the tiny BLIP answers a bounded number of generated requests per operation, valid and
invalid. Every answer must be a non-5xx whose status, content type, headers and body the schema declares.
Image bodies are drawn from a strategy that makes real small pictures (and random bytes), so the 200 path is
fuzzed too, not only the error paths.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import LiveServer, tiny_settings

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@st.composite
def images(draw: Any) -> bytes:
    """A small real picture in a random format and mode, or (sometimes) plain random bytes."""
    if draw(st.integers(0, 4)) == 0:
        return bytes(draw(st.binary(max_size=256)))
    width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    colour = tuple(draw(st.integers(0, 255)) for _ in range(3))
    mode = draw(st.sampled_from(["RGB", "RGBA", "L", "P"]))
    image = Image.new("RGB", (width, height), colour).convert(mode)  # type: ignore[arg-type]
    fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP", "GIF", "BMP"] if mode != "RGBA" else ["PNG", "WEBP"]))
    if fmt == "JPEG" and mode == "P":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


schemathesis.openapi.media_type("image/*", images(), aliases=["image/png", "image/jpeg"])


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    settings_ = tiny_settings(tiny_model_dir, batching={"max_wait_ms": 5})
    with LiveServer(settings_) as live:
        yield live


@pytest.fixture(scope="module")
def api_schema(server: LiveServer) -> Any:
    # The document the server really serves, not the function that builds it.
    return schemathesis.openapi.from_url(server.url + "/openapi.json")


OPERATIONS = [("POST", "/api/v1/caption"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")]
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


def test_every_operation_is_fuzzed(api_schema: Any) -> None:
    served = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert served == set(OPERATIONS)


# schemathesis.pytest.from_fixture does not work with pytest 9.2 (it writes Function._nodeid), so each
# operation and mode is its own parametrized test driving the operation's strategy with hypothesis directly.
@pytest.mark.parametrize("mode", MODES, ids=str)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_api_conforms_to_its_schema(
    api_schema: Any, server: LiveServer, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]
    examples = 30 if path == "/api/v1/caption" else 5

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,  # the same examples every run: a failure here is reproducible, never flaky
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def run(case: Any) -> None:
        case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=60)

    run()

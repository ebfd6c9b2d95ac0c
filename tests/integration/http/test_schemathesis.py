"""Property-based fuzzing of the whole HTTP API from its own ``/openapi.json`` (schemathesis + hypothesis).

A live server with the tiny BLIP answers a bounded number of generated requests per operation, valid and
invalid. Every answer must be a non-5xx whose status, content type, headers and body the schema declares.
Image bodies are drawn from a strategy that makes real small pictures (and random bytes), so the 200 path is
fuzzed too, not only the error paths.
"""

from __future__ import annotations

import io
from collections import Counter
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

from captioner.config import load_settings
from captioner.http.openapi import openapi_schema
from tests.support.model import tiny_settings
from tests.support.servers import LiveServer

CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Schema-violating requests must be refused. Not checked for multipart bodies: there a violation can vanish on the
# wire (an "invalid" empty array of num_captions is sent as no field at all), and the request is then valid.
CHECKS = [*CONFORMANCE, negative_data_rejection]


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


schemathesis.openapi.media_type("image/*", images(), aliases=["application/octet-stream"])
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


# URL input off: generated URLs must not send the server out to the network. The served schema then has no
# "url" field, so nothing generates one.
OVERRIDES: dict[str, dict[str, Any]] = {"batching": {"max_wait_ms": 5}, "url_input": {"enabled": False}}


def _operations() -> list[tuple[str, str, bool]]:
    """(method, path, has inputs) for every operation the schema declares, so new routes get fuzzed too."""
    spec = openapi_schema(load_settings(None, {}).replace("url_input", enabled=False))
    found = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            # An unconstrained string parameter (a job id) admits no invalid value: nothing negative to send.
            constrained = [p for p in operation.get("parameters", []) if p.get("schema") != {"type": "string"}]
            found.append((method.upper(), path, bool(constrained or operation.get("requestBody"))))
    return found


OPERATIONS = _operations()
CAPTION = ("POST", "/api/v1/caption")
# Negative data only exists where there are inputs. The caption operation, where the bugs would be, gets most.
RUNS = [
    (method, path, mode, 150 if (method, path) == CAPTION else 25 if has_inputs else 3)
    for method, path, has_inputs in OPERATIONS
    for mode in (MODES if has_inputs else MODES[:1])
]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    with LiveServer(tiny_settings(tiny_model_dir, **OVERRIDES)) as live:
        yield live


@pytest.fixture(scope="module")
def api_schema(server: LiveServer) -> Any:
    # The document the server really serves, not the function that builds it.
    return schemathesis.openapi.from_url(server.url + "/openapi.json")


def test_every_operation_is_fuzzed(api_schema: Any) -> None:
    served = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert served == {(method, path) for method, path, _ in OPERATIONS}
    assert CAPTION in served


# schemathesis.pytest.from_fixture does not work with pytest 9.2 (it writes Function._nodeid), so each
# operation and mode is its own parametrized test driving the operation's strategy with hypothesis directly.
@pytest.mark.parametrize(("method", "path", "mode", "examples"), RUNS, ids=[f"{m} {p} {g}" for m, p, g, _ in RUNS])
def test_api_conforms_to_its_schema(
    api_schema: Any, server: LiveServer, method: str, path: str, mode: GenerationMode, examples: int
) -> None:
    operation = api_schema[path][method]
    statuses: Counter[int] = Counter()

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
        checks = CONFORMANCE if case.media_type == "multipart/form-data" else CHECKS
        response = case.call_and_validate(base_url=server.url, checks=checks, timeout=60)
        statuses[response.status_code] += 1

    run()
    print(f"{method} {path} {mode}: {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) > 0
    if (method, path) == CAPTION and mode is GenerationMode.POSITIVE:
        assert statuses[200] >= 5, statuses  # the fuzzing reached the model, not only the validators
    if (method, path) == CAPTION and mode is GenerationMode.NEGATIVE:
        # Mostly refused; the few 2xx are cases whose only "invalid" part is an unknown query parameter, which
        # OpenAPI lets a server ignore (negative_data_rejection knows that and stays quiet about them).
        assert statuses[422] > sum(statuses.values()) // 2, statuses

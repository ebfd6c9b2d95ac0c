"""Property-based fuzzing of the whole HTTP API from its own ``/openapi.json`` (schemathesis + hypothesis).

A live server with the tiny BLIP answers a bounded number of generated requests per operation and mode, and the
document must hold both ways:
- positive (requests the document allows): never refused for their form. The only refusals allowed are those
  about content no schema can state: an image that doesn't decode (400 ``invalid_image``, 415), an id that names
  nothing (404), the gate (401, 403, 429);
- negative (requests the document forbids): never accepted (a 4xx; ``negative_data_rejection``);
- every answer, either way: no 5xx, and a status, content type, headers and body the document declares.
Image bodies are drawn from a strategy that makes real small pictures (and random bytes), so the 200 path is
fuzzed too, not only the error paths.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from captioner.config import load_settings
from captioner.http import paths
from captioner.http.jobs_api import IDEMPOTENCY_HEADER
from captioner.http.json_body import decode_base64
from captioner.http.openapi import openapi_schema
from tests.support.model import tiny_settings
from tests.support.servers import LiveServer

# Statuses a request the document allows may still get, and the only codes those may carry: what the document
# can't foresee is the content (a picture that doesn't decode, a job id that names no job), and the gate.
CONTENT_REFUSALS = {400: {"invalid_image"}, 404: {"not_found"}, 415: {"unsupported_media_type"}}
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "403", "404", "415", "429"]}}}
)


def refused_only_for_content(ctx: Any, response: Any, case: Any) -> bool | None:
    """A positive request refused with 400, 404 or 415 names content, never a form the document allows."""
    allowed = CONTENT_REFUSALS.get(response.status_code)
    if case.meta is None or not case.meta.generation.mode.is_positive or allowed is None:
        return None
    code = response.json()["error"]["code"]
    assert code in allowed, f"a request the document allows was refused with {response.status_code} {code}"
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    refused_only_for_content,
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


schemathesis.openapi.media_type(
    "image/*", images(), aliases=["application/octet-stream", "application/x-www-form-urlencoded"]
)
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


# URL input and callbacks off: generated URLs must not send the server out to the network. The served document
# then has no "url" or "callback_url" field, so nothing valid holds one.
OVERRIDES: dict[str, dict[str, Any]] = {"batching": {"max_wait_ms": 5}, "url_input": {"enabled": False}}


def _operations() -> list[tuple[str, str, bool]]:
    """(method, path, has inputs) for every operation the document declares, so new routes get fuzzed too."""
    spec = openapi_schema(load_settings(None, {}).replace("url_input", enabled=False))
    return [
        (method.upper(), path, bool(operation.get("parameters") or operation.get("requestBody")))
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    ]


OPERATIONS = _operations()
CAPTION = ("POST", paths.CAPTION)
# Drawn examples per operation and mode, on top of the coverage phase's. The caption operation, where the bugs
# would be, gets most; an operation with no inputs has one request to make, so a few suffice.
RUNS = [
    (method, path, mode, 150 if (method, path) == CAPTION else 40 if has_inputs else 3)
    for method, path, has_inputs in OPERATIONS
    for mode in MODES
]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    with LiveServer(tiny_settings(tiny_model_dir, **OVERRIDES)) as live:
        yield live


@pytest.fixture(scope="module")
def api_schema(server: LiveServer) -> Any:
    # The document the server really serves, not the function that builds it.
    return schemathesis.openapi.from_url(server.url + "/openapi.json", config=CONFIG)


def test_every_operation_is_fuzzed(api_schema: Any) -> None:
    served = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    # schemathesis leaves the document's own URL out of the operations it lists; it is fuzzed here all the same.
    assert served | {("GET", paths.OPENAPI)} == {(method, path) for method, path, _ in OPERATIONS}
    assert CAPTION in served and ("GET", paths.INDEX) in served


_keys = count()


def _coherent(case: Any) -> None:
    """What JSON Schema can't say about one valid request, made true: the cases stay what they were generated as.

    - An ``Idempotency-Key`` names one request: reused for another (hypothesis replays keys) it is a 422.
    - A feedback ``image`` must hash to its ``image_sha256``.
    """
    key = (case.headers or {}).get(IDEMPOTENCY_HEADER)
    if isinstance(key, str) and key:
        prefix = f"{next(_keys)}-"  # printable, not a space: the key's form is kept
        case.headers[IDEMPOTENCY_HEADER] = prefix + key[-(255 - len(prefix)) :]
    body = case.body
    if case.path == paths.FEEDBACK and isinstance(body, dict) and "image" in body and "image_sha256" in body:
        body["image_sha256"] = hashlib.sha256(decode_base64(body["image"])).hexdigest()


@pytest.fixture(scope="module")
def coverage(api_schema: Any) -> dict[tuple[str, str, GenerationMode], list[Any]]:
    """schemathesis's coverage phase, per operation and mode: every boundary, each property missing, an unknown
    one, each wrong type, enum and pattern, other methods and content types; one at a time, the rest valid.

    Made once per operation (schemathesis makes some cases, the other methods, only the first time it is asked),
    with both modes asked for, so that a negative case negates one part and keeps the others valid."""
    found: dict[tuple[str, str, GenerationMode], list[Any]] = {}
    for method, path, _ in OPERATIONS:
        operation = api_schema[path][method]
        config = api_schema.config.generation_for(operation=operation, phase="coverage")
        for case in api_schema.iter_coverage_cases(
            operation, generation_modes=list(GenerationMode), generation_config=config
        ):
            found.setdefault((method, path, case.meta.generation.mode), []).append(case)
    return found


# schemathesis.pytest.from_fixture does not work with pytest 9.2 (it writes Function._nodeid), so each
# operation and mode is its own parametrized test: the coverage phase's cases as explicit examples, then
# ``examples`` drawn from the operation's strategy, with hypothesis directly.
@pytest.mark.parametrize(("method", "path", "mode", "examples"), RUNS, ids=[f"{m} {p} {g}" for m, p, g, _ in RUNS])
def test_api_conforms_to_its_schema(
    api_schema: Any,
    server: LiveServer,
    coverage: dict[tuple[str, str, GenerationMode], list[Any]],
    method: str,
    path: str,
    mode: GenerationMode,
    examples: int,
) -> None:
    operation = api_schema[path][method]
    statuses: Counter[int] = Counter()

    def run(case: Any) -> None:
        if mode is GenerationMode.POSITIVE:
            _coherent(case)
        response = case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=60)
        statuses[response.status_code] += 1

    has_inputs = next(inputs for m, p, inputs in OPERATIONS if (m, p) == (method, path))
    # No parameter, no body: no drawn request breaks the document (hypothesis finds the strategy unsatisfiable),
    # so the coverage phase's cases alone are run (other methods, unknown query parameters).
    generate = mode is GenerationMode.POSITIVE or has_inputs
    test = given(case=operation.as_strategy(generation_mode=mode))(run)
    explicit = coverage.get((method, path, mode), [])
    for case in explicit:
        test = example(case=case)(test)
    settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,  # the same examples every run: a failure here is reproducible, never flaky
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate] if generate else [Phase.explicit],
    )(test)()
    print(f"{method} {path} {mode}: {len(explicit)} coverage cases; {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= len(explicit) > 0
    if (method, path) == CAPTION and mode is GenerationMode.POSITIVE:
        assert statuses[200] >= 20, statuses  # the fuzzing reached the model, not only the validators
    if mode is GenerationMode.NEGATIVE:
        # The few 2xx are cases whose only "invalid" part is an unknown query parameter, which OpenAPI lets a
        # server ignore (negative_data_rejection knows that and stays quiet about them).
        refused = sum(n for status, n in statuses.items() if 400 <= status < 500)
        assert refused > sum(statuses.values()) * 3 // 4, statuses

"""The OpenAPI document's shape: what the fuzzer (test_schemathesis.py) can't see from its one configuration.

The document describes the server as configured (URL input, callbacks, auth), names every route, closes every
body, and borrows its patterns from the code that checks them.
"""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

from captioner.config import Settings, load_settings
from captioner.http import paths
from captioner.http.inputs import FIELDS
from captioner.http.jobs_api import IDEMPOTENCY_KEY_PATTERN
from captioner.http.openapi import openapi_schema
from captioner.http.routes import routes

DEFAULTS = load_settings(None, {})


def operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): op for path, item in spec["paths"].items() for method, op in item.items()}


def caption_bodies(settings: Settings) -> dict[str, Any]:
    content: dict[str, Any] = openapi_schema(settings)["paths"][paths.CAPTION]["post"]["requestBody"]["content"]
    return content


def test_every_route_is_described_and_nothing_else() -> None:
    served = {
        (method, route.path)
        for route in routes()
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"  # Starlette answers HEAD wherever GET is; HTTP says so, not the API
    }
    assert set(operations(openapi_schema(DEFAULTS))) == served
    assert ("GET", paths.INDEX) in served and ("POST", paths.HF_IMAGE_TO_TEXT) in served


def test_the_web_page_is_html() -> None:
    page = operations(openapi_schema(DEFAULTS))[("GET", paths.INDEX)]["responses"]["200"]
    assert list(page["content"]) == ["text/html"]
    assert "Content-Security-Policy" in page["headers"]


def test_bodies_are_closed_and_hold_only_fields_the_parser_reads() -> None:
    for name in ("multipart/form-data", "application/json"):
        schema = caption_bodies(DEFAULTS)[name]["schema"]
        assert schema["additionalProperties"] is False
        assert set(schema["properties"]) <= set(FIELDS)
    feedback = operations(openapi_schema(DEFAULTS))[("POST", paths.FEEDBACK)]["requestBody"]["content"]
    assert feedback["application/json"]["schema"]["additionalProperties"] is False


def test_url_and_callback_url_are_there_only_when_the_server_takes_them() -> None:
    off = DEFAULTS.replace("url_input", enabled=False)
    on = DEFAULTS.replace("url_input", enabled=True).replace("jobs", callback_secret="s3cret")
    for name in ("multipart/form-data", "application/json"):
        assert "url" not in caption_bodies(off)[name]["schema"]["properties"]
        assert caption_bodies(off)[name]["schema"]["required"] == ["image"]
        assert "callback_url" not in caption_bodies(off)[name]["schema"]["properties"]
        with_url = caption_bodies(on)[name]["schema"]
        assert {"url", "callback_url"} <= set(with_url["properties"])
        assert with_url["oneOf"] == [{"required": ["image"]}, {"required": ["url"]}]
    caption = operations(openapi_schema(on))[("POST", paths.CAPTION)]
    assert "callback_url" in {p["name"] for p in caption["parameters"]}
    caption = operations(openapi_schema(off))[("POST", paths.CAPTION)]
    assert "callback_url" not in {p["name"] for p in caption["parameters"]}


def test_auth_adds_the_bearer_scheme_401_and_403() -> None:
    open_spec = openapi_schema(DEFAULTS)
    assert "securitySchemes" not in open_spec["components"]
    assert all("401" not in op["responses"] and "security" not in op for op in operations(open_spec).values())

    keyed = openapi_schema(DEFAULTS.replace("auth", api_keys=["k" * 16], admin_keys=["a" * 16]))
    assert keyed["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    for (method, path), op in operations(keyed).items():
        gated = paths.is_protected(method, path)
        assert ("security" in op) == gated == ("401" in op["responses"]), (method, path)
        if gated:
            assert op["responses"]["401"]["headers"]["WWW-Authenticate"]["required"] is True
    assert "403" in operations(keyed)[("GET", paths.DRIFT)]["responses"]


def test_retry_after_is_declared_wherever_the_server_sends_it() -> None:
    for (method, path), op in operations(openapi_schema(DEFAULTS)).items():
        for status in ("429", "503"):
            response = op["responses"].get(status)
            if response is not None and (method, path) != ("GET", paths.READYZ):  # readiness: no Retry-After
                assert response["headers"]["Retry-After"]["required"] is True, (method, path, status)


def test_patterns_are_the_servers_own() -> None:
    caption = operations(openapi_schema(DEFAULTS))[("POST", paths.CAPTION)]
    header = next(p for p in caption["parameters"] if p["name"] == "Idempotency-Key")
    assert header["schema"]["pattern"] == IDEMPOTENCY_KEY_PATTERN
    mode = next(p for p in caption["parameters"] if p["name"] == "mode")
    assert mode["schema"]["enum"] == ["sync", "async"]
    job = operations(openapi_schema(DEFAULTS))[("GET", paths.JOB)]
    assert job["parameters"][0]["schema"]["pattern"] == "^[0-9a-f]{32}$"

"""The access log of a live server: one line per request with its facts, and never the API key."""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from captioner.observability.logs import JsonFormatter, TextFormatter
from tests.support.images import photo
from tests.support.model import tiny_settings
from tests.support.servers import LiveServer
from tests.support.waits import wait_for

CAPTION = "/api/v1/caption"
API_KEY = "s3cret-Key-that-must-never-be-logged"


@pytest.fixture(scope="module")
def auth_server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    settings = tiny_settings(
        tiny_model_dir, auth={"api_keys": [API_KEY]}, generation={"num_beams": 1, "max_length": 8, "min_length": 1}
    )
    with LiveServer(settings) as server:
        yield server


def test_request_log_lines_hold_the_facts_and_never_the_key(
    auth_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="captioner.access")
    url, data = auth_server.url + CAPTION, photo(7000, size=(200, 150))
    auth = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "image/png"}

    first = httpx.post(url, content=data, headers={**auth, "X-Request-ID": "req-42"}, timeout=60)
    assert first.status_code == 200 and first.headers["x-request-id"] == "req-42"
    line = logged(caplog, lambda r: r.request_id == "req-42")
    assert (line.method, line.path, line.status, line.code) == ("POST", CAPTION, 200, None)
    assert (line.cached, line.batch_size, line.num_captions) == (False, 1, 1)
    assert (line.image_bytes, line.width, line.height, line.image_format) == (len(data), 200, 150, "PNG")
    assert 0 < line.latency_ms < 60_000
    assert re.fullmatch(r"key:[0-9a-f]{12}", line.principal)
    assert line.levelno == logging.INFO

    again = httpx.post(url, content=data, headers=auth, timeout=60)
    generated = again.headers["x-request-id"]
    assert again.json()["cached"] is True and re.fullmatch(r"[0-9a-f]{32}", generated)
    hit = logged(caplog, lambda r: r.request_id == generated)
    assert hit.cached is True and not hasattr(hit, "batch_size") and hit.image_bytes == len(data)

    before = auth_server.metric("captioner_errors_total", 'code="unauthorized"')
    wrong = httpx.post(url, content=data, headers={"Authorization": "Bearer " + API_KEY[::-1], "X-Request-ID": "bad"})
    assert wrong.status_code == 401 and wrong.headers["x-request-id"] == "bad"
    refused = logged(caplog, lambda r: r.request_id == "bad")
    assert (refused.status, refused.code) == (401, "unauthorized")
    assert not hasattr(refused, "image_bytes")  # refused before the body was read
    assert auth_server.metric("captioner_errors_total", 'code="unauthorized"') == before + 1

    garbage = httpx.post(url, content=b"not an image", headers={**auth, "X-Request-ID": "junk"})
    assert garbage.status_code == 400
    junk = logged(caplog, lambda r: r.request_id == "junk")
    assert (junk.status, junk.code, junk.image_bytes) == (400, "invalid_image", 12)

    assert httpx.get(auth_server.url + "/healthz").status_code == 200
    probe = logged(caplog, lambda r: r.path == "/healthz")
    assert probe.levelno == logging.DEBUG  # probes don't drown the request lines

    # Neither format ever shows the key, a part of it, or the image.
    encoded = base64.b64encode(data).decode()
    for formatter in (JsonFormatter(), TextFormatter()):
        for record in access_records(caplog):
            text = formatter.format(record)
            assert API_KEY not in text and API_KEY[:12] not in text and API_KEY[::-1] not in text
            assert encoded[:40] not in text and len(text) < 1000


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "captioner.access"]


def logged(caplog: pytest.LogCaptureFixture, match: Callable[[logging.LogRecord], bool]) -> logging.LogRecord:
    """The one access line ``match`` picks. It is written just after the response is sent, so the client can be a
    moment ahead of it."""

    def found() -> logging.LogRecord | None:
        lines = [r for r in access_records(caplog) if match(r)]
        assert len(lines) <= 1, lines
        return lines[0] if lines else None

    return wait_for(found, lambda: f"a matching access log line in {[r.getMessage() for r in access_records(caplog)]}")

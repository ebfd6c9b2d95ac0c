"""Structured logs: the formatters, one line per request through a live server (ids, fields, never the key or
the image), and a real `captioner serve` whose stderr is nothing but JSON objects."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from captioner.http.access_log import choose_request_id
from captioner.observability.logs import JsonFormatter, TextFormatter, configure_logging
from tests.conftest import LiveServer, free_port, photo, tiny_settings

CAPTION = "/api/v1/caption"
API_KEY = "s3cret-Key-that-must-never-be-logged"


def make_record(msg: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("captioner.test", logging.INFO, __file__, 1, msg, args, exc_info)
    record.__dict__.update(extra)
    return record


def test_json_formatter_one_object_per_line_with_extras() -> None:
    line = JsonFormatter().format(make_record("hello %s\nsecond line", "world", request_id="r1", status=200))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "hello world\nsecond line"
    assert (entry["level"], entry["logger"], entry["request_id"], entry["status"]) == (
        "info",
        "captioner.test",
        "r1",
        200,
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])
    failed = json.loads(JsonFormatter().format(make_record("failed", exc=True)))
    assert "ValueError: boom" in failed["exception"]


def test_json_formatter_timestamps_each_record_and_encodes_anything() -> None:
    formatter = JsonFormatter()
    first = make_record("a", where=Path("/x/y"), big=2**70, nested={"k": (1, 2)})
    first.created, first.msecs = 86399.5, 500.0  # 1970-01-01T23:59:59.500Z
    second = make_record("b")
    second.created, second.msecs = 86400.25, 250.0  # the next second, the next day: the cached part changes
    one, two = json.loads(formatter.format(first)), json.loads(formatter.format(second))
    assert (one["ts"], two["ts"]) == ("1970-01-01T23:59:59.500Z", "1970-01-02T00:00:00.250Z")
    assert (one["where"], one["big"], one["nested"]) == ("/x/y", 2**70, {"k": [1, 2]})


def test_text_formatter_appends_fields_and_keeps_one_line() -> None:
    line = TextFormatter().format(
        make_record("POST /x\ninjected 200", request_id="r1", cached=False, code=None, note="two words")
    )
    assert "\n" not in line
    assert line.endswith(r'captioner.test: POST /x\ninjected 200 request_id=r1 cached=false note="two words"')
    assert "code=" not in line  # None fields are left out
    with_trace = TextFormatter().format(make_record("failed", exc=True, request_id="r2"))
    first, _, trace = with_trace.partition("\n")
    assert first.endswith("failed request_id=r2") and "ValueError: boom" in trace


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    flags = (logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing)  # type: ignore[attr-defined]
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing = flags  # type: ignore[attr-defined]


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_logging_picks_the_format_and_silences_uvicorn_access() -> None:
    config = configure_logging("text", "warning")
    root = logging.getLogger()
    assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, TextFormatter)
    assert root.level == logging.WARNING
    assert config["loggers"]["uvicorn.access"]["level"] == "WARNING"  # our own line replaces it
    configure_logging("json", "debug")
    assert isinstance(root.handlers[0].formatter, JsonFormatter) and root.level == logging.DEBUG


def test_request_header_and_path_helpers() -> None:
    from captioner.http.access_log import _header, _shown_path

    scope = {"headers": [(b"content-type", b"image/jpeg"), (b"x-request-id", b"first"), (b"x-request-id", b"2nd")]}
    assert (_header(scope, b"x-request-id"), _header(scope, b"authorization")) == ("first", None)
    assert _shown_path("/api/v1/caption") == "/api/v1/caption"  # the common case is passed through as is
    assert _shown_path("/x\ninjected") == "/x\\ninjected"  # a decoded %0a cannot start a second line
    assert _shown_path("/caf\u00e9") == "/caf\\xe9"


def test_request_ids_are_kept_when_sane_and_replaced_otherwise() -> None:
    for good in ("abc-123", "0f8fad5b-d9cb-469f-a165-70867728950e", "Root=1-67891233-abcdef;Parent=53995c3f"):
        assert choose_request_id(good) == good
    for bad in (None, "", "has space", "new\nline", "x" * 129, 'quote"'):
        assert re.fullmatch(r"[0-9a-f]{32}", choose_request_id(bad))


# ---- one line per request, through a live server with auth on ----


@pytest.fixture(scope="module")
def auth_server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    settings = tiny_settings(
        tiny_model_dir, auth={"api_keys": [API_KEY]}, generation={"num_beams": 1, "max_length": 8, "min_length": 1}
    )
    with LiveServer(settings) as server:
        yield server


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "captioner.access"]


def wait_for(caplog: pytest.LogCaptureFixture, match: Callable[[logging.LogRecord], bool]) -> logging.LogRecord:
    """The line is written just after the response is sent, so the client can be a moment ahead of it."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [r for r in access_records(caplog) if match(r)]
        if found:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.01)
    raise AssertionError(f"no matching access log line in {[r.getMessage() for r in access_records(caplog)]}")


def test_request_log_lines_hold_the_facts_and_never_the_key(
    auth_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="captioner.access")
    url, data = auth_server.url + CAPTION, photo(7000, size=(200, 150))
    auth = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "image/png"}

    first = httpx.post(url, content=data, headers={**auth, "X-Request-ID": "req-42"}, timeout=60)
    assert first.status_code == 200 and first.headers["x-request-id"] == "req-42"
    line = wait_for(caplog, lambda r: r.request_id == "req-42")
    assert (line.method, line.path, line.status, line.code) == ("POST", CAPTION, 200, None)
    assert (line.cached, line.batch_size, line.num_captions) == (False, 1, 1)
    assert (line.image_bytes, line.width, line.height, line.image_format) == (len(data), 200, 150, "PNG")
    assert 0 < line.latency_ms < 60_000
    assert re.fullmatch(r"key:[0-9a-f]{12}", line.principal)
    assert line.levelno == logging.INFO

    again = httpx.post(url, content=data, headers=auth, timeout=60)
    generated = again.headers["x-request-id"]
    assert again.json()["cached"] is True and re.fullmatch(r"[0-9a-f]{32}", generated)
    hit = wait_for(caplog, lambda r: r.request_id == generated)
    assert hit.cached is True and not hasattr(hit, "batch_size") and hit.image_bytes == len(data)

    before = auth_server.metric("captioner_errors_total", 'code="unauthorized"')
    wrong = httpx.post(url, content=data, headers={"Authorization": "Bearer " + API_KEY[::-1], "X-Request-ID": "bad"})
    assert wrong.status_code == 401 and wrong.headers["x-request-id"] == "bad"
    refused = wait_for(caplog, lambda r: r.request_id == "bad")
    assert (refused.status, refused.code) == (401, "unauthorized")
    assert not hasattr(refused, "image_bytes")  # refused before the body was read
    assert auth_server.metric("captioner_errors_total", 'code="unauthorized"') == before + 1

    garbage = httpx.post(url, content=b"not an image", headers={**auth, "X-Request-ID": "junk"})
    assert garbage.status_code == 400
    junk = wait_for(caplog, lambda r: r.request_id == "junk")
    assert (junk.status, junk.code, junk.image_bytes) == (400, "invalid_image", 12)

    assert httpx.get(auth_server.url + "/healthz").status_code == 200
    probe = wait_for(caplog, lambda r: r.path == "/healthz")
    assert probe.levelno == logging.DEBUG  # probes don't drown the request lines

    # Neither format ever shows the key, a part of it, or the image.
    encoded = base64.b64encode(data).decode()
    for formatter in (JsonFormatter(), TextFormatter()):
        for record in access_records(caplog):
            text = formatter.format(record)
            assert API_KEY not in text and API_KEY[:12] not in text and API_KEY[::-1] not in text
            assert encoded[:40] not in text and len(text) < 1000


# ---- a real `captioner serve`: start-up lines and request lines, all JSON ----


@pytest.mark.system
def test_serve_writes_only_json_lines_to_stderr(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "captioner.yaml"
    config.write_text(
        f"model: {{path: {tiny_model_dir}, name: test/tiny-blip, device: cpu}}\n"
        "generation: {num_beams: 1, max_length: 8, min_length: 1}\n"
    )
    env = {
        **os.environ,
        "CAPTIONER_SERVER__HOST": "0.0.0.0",  # no auth on every interface, on purpose: must still warn
        "CAPTIONER_AUTH__ALLOW_ANONYMOUS": "true",
        "CAPTIONER_SERVER__PORT": str(port),
        "CAPTIONER_LOGGING__FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "captioner", "serve", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        headers = {"Content-Type": "image/png", "X-Request-ID": "serve-1", "Authorization": f"Bearer {API_KEY}"}
        response = httpx.post(url + CAPTION, content=photo(7100), headers=headers, timeout=60)
        assert response.status_code == 200 and response.headers["x-request-id"] == "serve-1"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr

    lines = [line for line in stderr.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line: no tqdm bars, no raw warnings
    by_message = {e["message"].split(":")[0]: e for e in entries}
    start = next(e for e in entries if e["message"].startswith("starting captioner"))
    assert start["config_source"] == f"{config} + environment" and start["model"] == "test/tiny-blip"
    no_auth = next(e for e in entries if e.get("event") == "no_auth")
    assert no_auth["level"] == "warning" and "no API keys" in no_auth["message"]
    untrained = next(e for e in entries if "UNTRAINED" in e["message"])
    assert untrained["level"] == "warning"
    ready = by_message["ready"]
    assert (ready["model"], ready["device"], ready["dtype"], ready["untrained"]) == (
        "test/tiny-blip", "cpu", "float32", True,
    )  # fmt: skip
    request = next(e for e in entries if e.get("request_id") == "serve-1")
    assert (request["status"], request["path"], request["cached"], request["batch_size"]) == (200, CAPTION, False, 1)
    assert API_KEY not in stderr

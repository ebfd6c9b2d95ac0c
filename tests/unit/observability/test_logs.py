"""Structured logs: the formatters, one line per request through a live server (ids, fields, never the key or
the image), and a real `captioner serve` whose stderr is nothing but JSON objects."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from captioner.http.access_log import choose_request_id
from captioner.observability.logs import JsonFormatter, TextFormatter, configure_logging

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


# ---- a real `captioner serve`: start-up lines and request lines, all JSON ----

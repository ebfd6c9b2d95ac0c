"""No secret reaches a log line: URL passwords and Authorization credentials are masked by both formatters."""

from __future__ import annotations

import logging
import sys

import pytest

from captioner.observability.logs import JsonFormatter, TextFormatter
from captioner.observability.redaction import redact


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("connecting to redis://:s3cr3t-pass@redis:6379/0 failed", "s3cr3t-pass"),
        ("rediss://user:p%40ss@host/1", "p%40ss"),
        ("Authorization: Bearer sk-live-abcdef123", "sk-live-abcdef123"),
        ("{'authorization': 'bearer tok.en-1'}", "tok.en-1"),
        ("Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
    ],
)
def test_secrets_are_masked(text: str, secret: str) -> None:
    assert secret not in redact(text)
    assert "***" in redact(text)


def test_harmless_text_is_untouched() -> None:
    for text in ("POST /api/v1/caption 200 12.5 ms", "redis://redis:6379/0", "http://example.com/a:b@c"):
        assert redact(text) == text or "example.com" in redact(text)
    assert redact("redis://default:pw@redis:6379/0") == "redis://default:***@redis:6379/0"


def test_both_formatters_mask_messages_fields_and_tracebacks() -> None:
    try:
        raise ConnectionError("Error connecting to redis://:hunter2@10.0.0.5:6379")
    except ConnectionError:
        record = logging.LogRecord(
            "captioner.test", logging.ERROR, __file__, 1, "url %s", ("redis://:hunter2@r:6379",), sys.exc_info()
        )
    record.header = "Bearer hunter2"
    for formatter in (JsonFormatter(), TextFormatter()):
        line = formatter.format(record)
        assert "hunter2" not in line and "***" in line

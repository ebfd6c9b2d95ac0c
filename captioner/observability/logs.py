"""Logging set-up: one JSON object per line (for log shippers) or plain text (for people).

Fields passed with ``extra=`` (request ids, statuses, latencies, drift scores) are top-level keys of the JSON
object, and ``key=value`` pairs after the message in text. Either way a record is exactly one line: JSON
escapes newlines, and the text format escapes them in the message and the values. Either way passwords in URLs
and Authorization credentials are masked (``redaction.py``).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import sys
import time
from typing import Any

import orjson

from captioner.observability.redaction import redact

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
# uvicorn passes its message again with ANSI colour codes: noise in a log file.
_STANDARD.add("color_message")


class JsonFormatter(logging.Formatter):
    """One JSON object per record. Written once per request, so it is kept cheap (bench/hit_path.py): orjson
    instead of json (~10x), and the timestamp's seconds formatted once per second."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        entry: dict[str, Any] = {
            "ts": f"{self._second_text}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        try:
            line = orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except (TypeError, orjson.JSONEncodeError):  # e.g. an int over 64 bits: json copes with anything
            line = json.dumps(entry, default=str)
        return redact(line)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pairs = [f"{k}={_text_value(v)}" for k, v in vars(record).items() if k not in _STANDARD and v is not None]
        if pairs:
            head, newline, trace = line.partition("\n")  # the traceback, if any, stays below the line
            line = head + " " + " ".join(pairs) + newline + trace
        return redact(line)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return _one_line(super().formatMessage(record))


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _text_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return _one_line(text) if text and " " not in text else json.dumps(text)


def formatter_for(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure_logging(fmt: str = "json", level: str = "info") -> dict[str, Any]:
    """Configure the root logger and return a uvicorn ``log_config`` that uses the same handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # Python warnings become records too, not raw text on stderr
    # Neither format shows the caller's file and line, so don't walk the stack for them on every record (the
    # logging HOWTO's "Optimization" section); that is a third of the cost of the per-request line.
    logging._srcfile = None  # type: ignore[attr-defined]
    # Nor the thread, process and multiprocessing names: no formatter here shows them.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    if fmt == "json":
        _disable_progress_bars()
    # uvicorn's access log would duplicate our per-request log line; its error log goes to our handler.
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            "uvicorn": {"level": level.upper(), "propagate": True},
            "uvicorn.access": {"level": "WARNING", "propagate": True},
        },
    }


def _disable_progress_bars() -> None:
    """Model loading and downloads draw tqdm bars on stderr: noise that breaks one-JSON-object-per-line."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # for huggingface_hub if it is imported later
    for module, function in (
        ("huggingface_hub.utils", "disable_progress_bars"),
        ("transformers.utils.logging", "disable_progress_bar"),
    ):
        with contextlib.suppress(ImportError, AttributeError):  # not installed, or another version's name
            getattr(importlib.import_module(module), function)()

"""Secrets out of every log line: passwords in URLs and bearer tokens, whatever logged them.

The code already avoids logging secrets (API keys are never logged, the Redis client logs its URL without
the password, config errors name keys, not values). This is the net under that, applied by both log
formatters to the finished line, tracebacks included, so a library exception that quotes a connection URL
(``redis://:s3cret@host``) or a header (``Authorization: Bearer ...``) cannot carry the secret into the log.
"""

from __future__ import annotations

import re

MASK = "***"
# scheme://user:password@host -> scheme://user:***@host (user names are kept: they help and are not secret).
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^\s:/@'\"]*:)[^\s@/'\"]+@", re.IGNORECASE)
# ...?password=secret -> ...?password=*** (redis-py, among others, reads credentials from a URL's query).
_QUERY_SECRET = re.compile(r"([?&;][\w.-]*(?:password|passwd|secret|token)[\w.-]*=)[^\s&;#'\"]+", re.IGNORECASE)
# "Bearer <token>" (Authorization headers, however quoted) and "Basic <credentials>".
_AUTH_SCHEME = re.compile(r"\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=:-]+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with URL passwords (in the user info or the query) and Authorization credentials replaced by
    ``***``."""
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\g<1>{MASK}@", text)
        text = _QUERY_SECRET.sub(rf"\g<1>{MASK}", text)
    lowered = text.lower()
    if "bearer" in lowered or "basic" in lowered:
        text = _AUTH_SCHEME.sub(rf"\g<1>\g<2>{MASK}", text)
    return text

"""The JSON response every endpoint sends: one encoder (orjson). Errors: ``captioner.errors.error_response``."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    """JSON via orjson: several times faster than the json module for our small bodies."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)

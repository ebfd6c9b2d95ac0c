"""The web page at ``GET /``: plain HTML, CSS and JS from ``captioner/http/static``, with no build step.

The page calls the public API (``POST /api/v1/caption``) like any other client, so it needs nothing from the
server but its files and two numbers it cannot discover alone: the default and the largest ``num_captions``.
Those are written into the HTML once, when the app is built.

Everything the page loads comes from this server; the Content-Security-Policy says so to the browser too, so a
stray reference to a CDN would fail loudly in the tests rather than phone home in production. The one
exception is ``img-src``: the preview of a pasted URL shows that URL's image.
"""

from __future__ import annotations

import html
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

from captioner.config import Settings

STATIC_DIR = Path(__file__).with_name("static")

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' blob: data: http: https:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

_PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The page embeds settings: revalidate rather than show a stale maximum after a config change.
    "Cache-Control": "no-cache",
}


def render_index(settings: Settings) -> str:
    """index.html with the server's caption-count settings filled in."""
    template = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    generation = settings.generation
    default = min(generation.num_captions, generation.max_num_captions)
    values = {
        "{{MAX_NUM_CAPTIONS}}": str(generation.max_num_captions),
        "{{DEFAULT_NUM_CAPTIONS}}": str(default),
        "{{MODEL_NAME}}": html.escape(settings.model.name),
    }
    for placeholder, value in values.items():
        template = template.replace(placeholder, value)
    return template


async def index(request: Request) -> Response:
    """``GET /``: the page, rendered once by ``create_app``."""
    return HTMLResponse(request.app.state.page, headers=_PAGE_HEADERS)


def static_files() -> StaticFiles:
    """``/static/*``: the page's CSS and JS."""
    return StaticFiles(directory=STATIC_DIR)

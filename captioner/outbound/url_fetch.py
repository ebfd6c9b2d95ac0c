"""URL input: fetch an image from a client-supplied URL without becoming an SSRF proxy into our own network.

The fetch is one call of the process's ``OutboundClient`` (``client.py``): the SSRF policy at every hop,
redirects followed up to ``url_input.max_redirects``, one deadline of ``url_input.timeout_s`` for all of it,
the body capped at ``max_bytes`` (``limits.max_body_bytes``) as it streams, compressed bodies refused. The
client's concurrency cap, ``url_input.max_concurrent_fetches``, is shared with job callbacks and webhooks.
"""

from __future__ import annotations

from captioner.config import UrlInputSettings
from captioner.errors import UrlFetchFailed, UrlNotAllowed
from captioner.outbound.client import OutboundClient


class UrlFetcher:
    """Fetches image URLs for the caption use case."""

    def __init__(self, settings: UrlInputSettings, client: OutboundClient, *, max_bytes: int) -> None:
        self._settings = settings
        self._client = client
        self._max_bytes = max_bytes

    async def fetch(self, url: str) -> bytes:
        """The body at ``url``, or UrlNotAllowed / UrlFetchFailed / TooLarge."""
        settings = self._settings
        if not settings.enabled:
            raise UrlNotAllowed("fetching images by URL is disabled on this server")
        reply = await self._client.call(
            "GET",
            url,
            allow_private=settings.allow_private_networks,
            timeout_s=settings.timeout_s,
            headers={"Accept": "image/*, */*;q=0.5"},
            max_reply_bytes=self._max_bytes,
            max_redirects=settings.max_redirects,
        )
        if not reply.ok:
            raise UrlFetchFailed(f"the URL answered HTTP {reply.status}")
        return reply.body

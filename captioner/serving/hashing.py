"""An image's SHA-256 (the cache key, the A/B assignment, job fingerprints), off the event loop when it is big."""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import Executor

# Hashing runs at ~1 GB/s: below this size a thread hop costs more than hashing inline, above it the event loop
# would stall (10 MB: ~10 ms).
INLINE_HASH_BYTES = 256 * 1024


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def sha256_off_loop(data: bytes, executor: Executor | None = None) -> str:
    """``sha256_hex(data)``, on ``executor`` (the default one when None) unless ``data`` is small."""
    if len(data) <= INLINE_HASH_BYTES:
        return sha256_hex(data)
    return await asyncio.get_running_loop().run_in_executor(executor, sha256_hex, data)

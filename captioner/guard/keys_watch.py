"""Keeping the keys in force equal to the keys file: re-read when its stat changes (polled) and on SIGHUP.

Every replica watches its own copy (a mounted Secret or ConfigMap, say), so a key added or removed reaches the whole
fleet within ``auth.keys_file_poll_s`` plus the mount's own delay, with no restart. A new table replaces the old in
one assignment (``TenantKeys.replace``): a request is checked against the old keys or the new, and none is dropped.
A file that can't be read or parsed is refused with one log line naming the problem (never a key), and the keys in
force stay; it is read again as soon as it changes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from captioner.config import AuthSettings, ConfigError
from captioner.guard.keys_file import KeysFileError, TenantEntries, parse_keys_file
from captioner.guard.tenants import ADMIN_TENANT, DEFAULT_TENANT, TenantKeys, config_tenants

logger = logging.getLogger("captioner.auth")

Signature = tuple[int, int, int]  # (inode, size, mtime_ns): a stat that differs means the file changed


def load_tenants(auth: AuthSettings) -> TenantEntries:
    """The config's key lists and the keys file's tenants (``KeysFileError`` if the file can't be used)."""
    entries = config_tenants(auth)
    if auth.keys_file:
        entries += read_keys_file(Path(auth.keys_file), reserved=[t.name for t, _ in entries])
    return entries


def read_keys_file(path: Path, *, reserved: list[str]) -> TenantEntries:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysFileError(f"keys file {path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    return parse_keys_file(text, str(path), reserved=reserved)


def build_keys(auth: AuthSettings) -> TenantKeys:
    """The keys at start-up: a bad file (or entry) stops the server here, named."""
    return TenantKeys(load_tenants(auth), enabled=bool(auth.keys_file) or None)


def _signature(path: Path) -> Signature | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class KeysFileWatch:
    """The keys of ``auth`` (read here: a bad file stops start-up), kept equal to the keys file."""

    def __init__(self, auth: AuthSettings, *, on_reload: Callable[[bool], None] = lambda ok: None) -> None:
        self.auth = auth
        self.path = Path(auth.keys_file)
        self._on_reload = on_reload  # True: a new table is in force; False: a file was refused
        # Taken before the start-up read: a change during that read is seen by the first poll.
        self._seen = _signature(self.path)
        self.keys = build_keys(auth)

    async def run(self) -> None:
        """Poll the file's stat; re-read it when it changed. Runs until cancelled."""
        while True:
            await asyncio.sleep(self.auth.keys_file_poll_s)
            signature = _signature(self.path)
            if signature != self._seen:
                self._seen = signature  # before the read: a write during it changes the stat again, and is re-read
                await self.reload()

    async def reload(self) -> bool:
        """Read the file now (SIGHUP does this too); True when its keys are in force."""
        try:
            entries = await asyncio.to_thread(load_tenants, self.auth)
        except ConfigError as exc:
            logger.error("keys file refused, the keys in force stay: %s", exc, extra={"event": "keys_file_refused"})
            self._on_reload(False)
            return False
        self.keys.replace(entries)
        names = sorted(t.name for t, _ in entries if t.name not in (DEFAULT_TENANT, ADMIN_TENANT))
        logger.info(
            "keys file loaded: %d tenants (%s), %d keys", len(names), ", ".join(names), len(self.keys),
            extra={"event": "keys_file_loaded"},
        )  # fmt: skip
        self._on_reload(True)
        return True

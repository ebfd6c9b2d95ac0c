"""The keys file: its shape, every rule, one-line errors that name where and never a key; and the watch that swaps
the table in on a good file and keeps it on a bad one."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import pytest

from captioner.config import AuthSettings
from captioner.errors import Unauthorized
from captioner.guard.keys_file import KeysFileError, parse_keys_file
from captioner.guard.keys_watch import KeysFileWatch, build_keys
from captioner.guard.tenants import ADMIN, CAPTION, JOBS
from tests.support.waits import async_wait_for

KEY = "web-secret-key"


def entry(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


GOOD = f"""
tenants:
  - name: web
    keys: ["{entry(KEY)}", "{entry("web-next-key")}"]
    scopes: [caption, jobs]
    rate_per_s: 2.5
    burst: 5
    max_running_jobs: 3
    max_images_per_day: 100
  - name: ops
    keys: ["{entry("ops-key")}"]
    scopes: [admin]
"""


def test_a_good_file_gives_each_tenant_its_keys_scopes_and_limits() -> None:
    (web, web_keys), (ops, ops_keys) = parse_keys_file(GOOD, "keys.yaml")
    assert web.name == "web" and web.scopes == {CAPTION, JOBS}
    assert (web.rate_per_s, web.burst, web.max_running_jobs, web.max_images_per_day) == (2.5, 5, 3, 100)
    assert len(web_keys) == 2 and web_keys[0] == hashlib.sha256(KEY.encode()).digest()
    # Limits left out are the config's (None), the daily quota unlimited (0).
    assert (ops.rate_per_s, ops.burst, ops.max_running_jobs, ops.max_images_per_day) == (None, None, None, 0)
    assert ops.scopes == {ADMIN} and len(ops_keys) == 1


def tenant(**fields: object) -> str:
    base: dict[str, object] = {"name": "web", "keys": [entry(KEY)], "scopes": ["caption"], **fields}
    lines = "\n".join(f"    {k}: {v!r}" for k, v in base.items())  # Python's repr of these is YAML too
    return "tenants:\n  - " + lines.lstrip()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("tenants: [", "not valid YAML"),
        ("- a\n- b", "one key, tenants"),
        ("tenants: {}", "one key, tenants"),
        ("tenants: []\nextra: 1", "one key, tenants"),
        ("tenants: [name]", "tenants[0] must be a mapping"),
        (tenant(name="has space"), "tenants[0].name"),
        (tenant(name="x" * 65), "tenants[0].name"),
        (tenant(name="default"), "auth.api_keys or auth.admin_keys"),
        (tenant(keys=[]), "(web).keys must be a non-empty list"),
        (tenant(keys=[KEY]), "(web).keys[0] must be 'sha256:"),  # a plain key on disk: refused
        (tenant(keys=["sha256:" + "ab" * 31]), "(web).keys[0] must be 'sha256:'"),
        (tenant(scopes=["caption", "root"]), "unknown scope 'root'"),
        (tenant(scopes="caption"), "(web).scopes must be a list"),
        (tenant(rate_per_s=-1), "(web).rate_per_s must be a number >= 0"),
        (tenant(burst=1.5), "(web).burst must be an integer >= 0"),
        (tenant(max_images_per_day=True), "(web).max_images_per_day must be an integer"),
        (tenant(colour="red"), "unknown field colour"),
    ],
)
def test_a_bad_file_is_refused_naming_where_never_a_key(text: str, says: str) -> None:
    with pytest.raises(KeysFileError) as info:
        parse_keys_file(text, "keys.yaml", reserved=["default"])
    message = str(info.value)
    assert says in message and message.startswith("keys file keys.yaml")
    assert KEY not in message and hashlib.sha256(KEY.encode()).hexdigest() not in message


def test_a_name_or_a_key_used_twice_is_refused() -> None:
    def two(first: tuple[str, str], second: tuple[str, str]) -> str:
        rows = (f"  - {{name: {n}, keys: ['{entry(k)}'], scopes: []}}\n" for n, k in (first, second))
        return "tenants:\n" + "".join(rows)

    twice = two(("a", "k"), ("a", "j"))
    with pytest.raises(KeysFileError, match="used twice"):
        parse_keys_file(twice, "f")
    shared = two(("a", "k"), ("b", "k"))
    with pytest.raises(KeysFileError, match="a key is listed twice"):
        parse_keys_file(shared, "f")


def test_the_watch_swaps_a_good_file_in_and_keeps_the_keys_on_a_bad_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(GOOD)
    auth = AuthSettings(api_keys=["config-key"], keys_file=str(path))
    results: list[bool] = []
    watch = KeysFileWatch(auth, on_reload=results.append)
    keys = watch.keys
    assert keys.authenticate(f"Bearer {KEY}").tenant.name == "web"
    assert keys.authenticate("Bearer config-key").tenant.name == "default"  # auth.api_keys stay beside the file

    path.write_text(f"tenants:\n  - {{name: web, keys: ['{entry('rotated')}'], scopes: [caption]}}\n")
    assert asyncio.run(watch.reload())
    assert keys.authenticate("Bearer rotated").tenant.name == "web"
    with pytest.raises(Unauthorized):
        keys.authenticate(f"Bearer {KEY}")  # removed from the file: refused at once

    path.write_text("tenants: [")  # half written, say
    with caplog.at_level(logging.ERROR, logger="captioner.auth"):
        assert not asyncio.run(watch.reload())
    assert keys.authenticate("Bearer rotated").tenant.name == "web"  # the keys in force stay
    assert "keys file refused" in caplog.text and "not valid YAML" in caplog.text
    assert results == [True, False]


def test_a_missing_keys_file_stops_start_up_naming_it(tmp_path: Path) -> None:
    with pytest.raises(KeysFileError, match="cannot be read"):
        build_keys(AuthSettings(keys_file=str(tmp_path / "absent.yaml")))


def test_the_poll_notices_a_changed_file_and_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(GOOD)
    watch = KeysFileWatch(AuthSettings(keys_file=str(path), keys_file_poll_s=0.01))

    async def scenario() -> None:
        polling = asyncio.create_task(watch.run())
        try:
            staged = tmp_path / "keys.new"  # replaced as a ConfigMap volume or a deploy tool does: a rename
            staged.write_text(f"tenants:\n  - {{name: web, keys: ['{entry('polled')}'], scopes: [caption]}}\n")
            staged.replace(path)
            await async_wait_for(lambda: "web" in watch.keys.tenants and "ops" not in watch.keys.tenants)
            assert watch.keys.authenticate("Bearer polled").tenant.name == "web"
        finally:
            polling.cancel()

    asyncio.run(scenario())

from __future__ import annotations

import hashlib

import pytest

from captioner.config import AuthSettings
from captioner.errors import Unauthorized
from captioner.guard.api_keys import ApiKeys

PLAIN = "plain-secret-key-123"
HASHED = "hashed-secret-key-456"
HASHED_ENTRY = "sha256:" + hashlib.sha256(HASHED.encode()).hexdigest()


@pytest.fixture
def keys() -> ApiKeys:
    return ApiKeys([PLAIN, HASHED_ENTRY])


def test_plain_and_sha256_entries_are_accepted(keys: ApiKeys) -> None:
    assert keys.enabled
    assert keys.authenticate(f"Bearer {PLAIN}").startswith("key:")
    assert keys.authenticate(f"Bearer {HASHED}").startswith("key:")


def test_scheme_is_case_insensitive_and_whitespace_tolerated(keys: ApiKeys) -> None:
    expected = keys.authenticate(f"Bearer {PLAIN}")
    assert keys.authenticate(f"bearer {PLAIN}") == expected
    assert keys.authenticate(f"  BEARER   {PLAIN}  ") == expected


def test_uppercase_hex_digest_entry_is_accepted() -> None:
    assert ApiKeys([HASHED_ENTRY.upper().replace("SHA256:", "sha256:")]).authenticate(f"Bearer {HASHED}")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        f"Basic {PLAIN}",
        f"Token {PLAIN}",
        PLAIN,
        "Bearer wrong-key",
        f"Bearer {PLAIN}x",
        f"Bearer {HASHED_ENTRY}",  # the digest entry itself is not a key
    ],
)
def test_rejected_headers_raise_unauthorized_with_www_authenticate(keys: ApiKeys, header: str | None) -> None:
    with pytest.raises(Unauthorized) as info:
        keys.authenticate(header)
    assert info.value.status_code == 401
    assert info.value.headers["WWW-Authenticate"] == "Bearer"
    assert PLAIN not in info.value.message
    assert "wrong-key" not in info.value.message


def test_disabled_without_entries() -> None:
    keys = ApiKeys([])
    assert not keys.enabled
    assert keys.authenticate(None) == "anonymous"
    assert not ApiKeys.from_settings(AuthSettings()).enabled


def test_from_settings() -> None:
    keys = ApiKeys.from_settings(AuthSettings(api_keys=[PLAIN]))
    assert keys.enabled
    keys.authenticate(f"Bearer {PLAIN}")


@pytest.mark.parametrize(
    "bad",
    [
        "sha256:" + "ab" * 31,  # too short
        "sha256:" + "ab" * 33,  # too long
        "sha256:" + "zz" * 32,  # not hex
        "sha256:",
        "",
        "   ",
        " padded-secret ",
    ],
)
def test_bad_entry_raises_value_error_naming_index_not_entry(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        ApiKeys([PLAIN, bad])
    text = str(info.value)
    assert "[1]" in text
    assert PLAIN not in text
    secret = bad.removeprefix("sha256:").strip()
    if secret:
        assert secret not in text


def test_principal_ids_differ_per_key_and_contain_no_key_text(keys: ApiKeys) -> None:
    first = keys.authenticate(f"Bearer {PLAIN}")
    second = keys.authenticate(f"Bearer {HASHED}")
    assert first != second
    for principal in (first, second):
        assert principal.startswith("key:") and len(principal) == len("key:") + 12
        assert PLAIN not in principal and HASHED not in principal
    # Stable, and the same whether the key was configured plain or as a digest.
    assert first == keys.authenticate(f"Bearer {PLAIN}")
    assert ApiKeys([HASHED]).authenticate(f"Bearer {HASHED}") == second


def test_repr_hides_keys(keys: ApiKeys) -> None:
    assert PLAIN not in repr(keys) and HASHED_ENTRY[7:] not in repr(keys)
    assert len(keys) == 2

"""Which tenant a key belongs to: the config's lists as tenants default and admin, constant-time comparison, no key
in any message, and a table swapped whole."""

from __future__ import annotations

import hashlib

import pytest

from captioner.config import AuthSettings, ConfigError
from captioner.errors import Unauthorized
from captioner.guard import tenants
from captioner.guard.tenants import (
    ADMIN,
    CAPTION,
    FEEDBACK,
    JOBS,
    SCOPES,
    Tenant,
    TenantKeys,
    config_tenants,
    is_key_principal,
)

PLAIN = "plain-secret-key-123"
HASHED = "hashed-secret-key-456"
HASHED_ENTRY = "sha256:" + hashlib.sha256(HASHED.encode()).hexdigest()


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@pytest.fixture
def keys() -> TenantKeys:
    return TenantKeys(config_tenants(AuthSettings(api_keys=[PLAIN, HASHED_ENTRY])))


def test_api_keys_are_tenant_default_with_a_principal_per_key_and_no_admin_scope(keys: TenantKeys) -> None:
    first = keys.authenticate(f"Bearer {PLAIN}")
    second = keys.authenticate(f"Bearer {HASHED}")
    assert first.tenant.name == second.tenant.name == "default"
    assert first.tenant.scopes == {CAPTION, JOBS, FEEDBACK}  # the variants and drift need admin_keys, as before
    # Each key of the config's lists keeps a principal (rate bucket, job owner) of its own, as before tenants.
    assert first.principal != second.principal
    for caller in (first, second):
        assert caller.principal.startswith("key:") and len(caller.principal) == len("key:") + 12
        assert PLAIN not in caller.principal and HASHED not in caller.principal
        assert is_key_principal(caller.principal)


def test_admin_keys_are_tenant_admin_with_every_scope() -> None:
    keys = TenantKeys(config_tenants(AuthSettings(api_keys=[PLAIN], admin_keys=[HASHED])))
    admin = keys.authenticate(f"Bearer {HASHED}")
    assert admin.tenant.name == "admin" and admin.tenant.scopes == set(SCOPES)


def test_a_keys_file_tenant_is_one_principal_whichever_of_its_keys_is_used() -> None:
    web = Tenant("web", frozenset({CAPTION}))
    keys = TenantKeys([(web, [digest("old"), digest("new")])])
    assert keys.authenticate("Bearer old").principal == keys.authenticate("Bearer new").principal == "tenant:web"


def test_scheme_is_case_insensitive_and_whitespace_tolerated(keys: TenantKeys) -> None:
    expected = keys.authenticate(f"Bearer {PLAIN}")
    assert keys.authenticate(f"bearer {PLAIN}") == expected
    assert keys.authenticate(f"  BEARER   {PLAIN}  ") == expected


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer    ", f"Basic {PLAIN}", PLAIN, "Bearer wrong-key", f"Bearer {PLAIN}x",
     f"Bearer {HASHED_ENTRY}"],  # the digest entry itself is not a key
)  # fmt: skip
def test_rejected_headers_raise_unauthorized_with_www_authenticate(keys: TenantKeys, header: str | None) -> None:
    with pytest.raises(Unauthorized) as info:
        keys.authenticate(header)
    assert info.value.status_code == 401
    assert info.value.headers["WWW-Authenticate"] == "Bearer"
    assert PLAIN not in info.value.message and "wrong-key" not in info.value.message


def test_enabled_with_keys_or_a_keys_file_even_an_empty_one() -> None:
    assert not TenantKeys().enabled
    assert TenantKeys(config_tenants(AuthSettings(api_keys=[PLAIN]))).enabled
    empty_file = TenantKeys([], enabled=True)  # a keys file naming nobody lets nobody in
    with pytest.raises(Unauthorized):
        empty_file.authenticate(f"Bearer {PLAIN}")


@pytest.mark.parametrize(
    "bad", ["sha256:" + "ab" * 31, "sha256:" + "ab" * 33, "sha256:" + "zz" * 32, "sha256:", "", "   ", " padded "]
)
def test_a_bad_config_entry_is_named_by_position_never_shown(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_tenants(AuthSettings(api_keys=[PLAIN, bad]))
    text = str(info.value)
    assert "auth.api_keys[1]" in text and PLAIN not in text
    secret = bad.removeprefix("sha256:").strip()
    if secret:
        assert secret not in text


def test_replace_swaps_the_whole_table(keys: TenantKeys) -> None:
    keys.replace([(Tenant("web"), [digest("new-key")])])
    assert keys.authenticate("Bearer new-key").tenant.name == "web"
    with pytest.raises(Unauthorized):
        keys.authenticate(f"Bearer {PLAIN}")
    assert set(keys.tenants) == {"web"}


def test_repr_hides_keys_and_digests(keys: TenantKeys) -> None:
    assert PLAIN not in repr(keys) and HASHED_ENTRY[7:] not in repr(keys) and digest(PLAIN).hex() not in repr(keys)
    assert len(keys) == 2


@pytest.mark.parametrize("presented", ["key-0", "key-2", "key-4", "not-a-key"])
def test_every_key_is_compared_whatever_matches(monkeypatch: pytest.MonkeyPatch, presented: str) -> None:
    """No early exit: each digest in force is compared once, so response times can't tell which key matched."""
    entries = [f"key-{i}" for i in range(5)]
    keys = TenantKeys([(Tenant("a"), [digest(e) for e in entries[:2]]), (Tenant("b"), list(map(digest, entries[2:])))])
    compared: list[tuple[bytes, bytes]] = []
    real = tenants.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tenants.hmac, "compare_digest", counting)
    if presented in entries:
        keys.authenticate(f"Bearer {presented}")
    else:
        with pytest.raises(Unauthorized):
            keys.authenticate(f"Bearer {presented}")
    assert [a for a, _ in compared] == [digest(presented)] * len(entries)
    assert sorted(b for _, b in compared) == sorted(digest(e) for e in entries)


def test_a_tenant_allows_only_its_scopes() -> None:
    caption_only = Tenant("web", frozenset({CAPTION}))
    assert caption_only.allows(CAPTION) and caption_only.allows(None)
    assert not caption_only.allows(ADMIN) and not caption_only.allows(JOBS)

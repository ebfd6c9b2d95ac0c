from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from captioner.config import ConfigError, Settings, load_settings, to_dict
from tests.support.paths import REPO_ROOT

ROOT = REPO_ROOT


def test_defaults_match_the_contract() -> None:
    s = load_settings(None, {})
    assert (s.server.host, s.server.port) == ("127.0.0.1", 8000)  # loopback: `make serve` needs no keys
    assert s.model.name == "Salesforce/blip-image-captioning-base"
    assert s.model.path == "weights/blip-image-captioning-base"
    assert (s.model.device, s.model.dtype, s.model.prompt) == ("auto", "auto", "a picture of ")
    g = s.generation
    assert (g.num_beams, g.max_length, g.min_length, g.num_captions, g.max_num_captions) == (3, 20, 5, 1, 3)
    b = s.batching
    assert (b.max_batch_size, b.max_wait_ms, b.max_queue, b.request_timeout_s) == (16, 100, 256, 30)
    assert (s.cache.max_entries, s.cache.ttl_s) == (10000, 86400)
    assert (s.limits.max_body_bytes, s.limits.max_pixels) == (10485760, 40000000)
    assert s.auth.api_keys == []
    assert (s.rate_limit.per_key_rps, s.rate_limit.burst) == (0, 0)
    u = s.url_input
    assert (u.enabled, u.timeout_s, u.max_redirects, u.allow_private_networks) == (True, 5, 3, False)


def test_shipped_config_yaml_equals_the_defaults() -> None:
    from_file = load_settings(ROOT / "config.yaml", {})
    assert to_dict(from_file) == to_dict(Settings())


def test_file_may_hold_only_what_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"batching": {"max_batch_size": 8}, "auth": {"api_keys": ["k1"]}}))
    s = load_settings(path, {})
    assert s.batching.max_batch_size == 8
    assert s.batching.max_wait_ms == 100
    assert s.auth.api_keys == ["k1"]
    assert s.source == str(path)


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("batching: {max_batch_size: 8}\n")
    env = {
        "CAPTIONER_BATCHING__MAX_BATCH_SIZE": "32",
        "CAPTIONER_URL_INPUT__ENABLED": "false",
        "CAPTIONER_AUTH__API_KEYS": "[a, b]",
        "CAPTIONER_MODEL__PATH": "weights/tiny",
        "UNRELATED": "x",
    }
    s = load_settings(path, env)
    assert s.batching.max_batch_size == 32
    assert s.url_input.enabled is False
    assert s.auth.api_keys == ["a", "b"]
    assert s.model.path == "weights/tiny"
    assert s.source.endswith("+ environment")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"CAPTIONER_BATCHING__MAX_BATCH_SIZE": "x"},
            "config: batching.max_batch_size must be an integer >= 1, got 'x'",
        ),
        ({"CAPTIONER_BATCHING__MAX_BATCH_SIZE": "0"}, "config: batching.max_batch_size must be an integer >= 1, got 0"),
        ({"CAPTIONER_BATCHING__MAX_WAIT_MS": "-1"}, "config: batching.max_wait_ms must be a number >= 0, got -1"),
        ({"CAPTIONER_URL_INPUT__ENABLED": "maybe"}, "config: url_input.enabled must be true or false, got 'maybe'"),
        ({"CAPTIONER_MODEL__DTYPE": "int3"}, "config: model.dtype must be one of"),
        ({"CAPTIONER_BATCHING__MAX_BATCH": "3"}, "config: unknown key batching.max_batch"),
        ({"CAPTIONER_NOPE__X": "3"}, "config: CAPTIONER_NOPE__X names unknown section 'nope'"),
        (
            {"CAPTIONER_GENERATION__NUM_CAPTIONS": "5"},
            "config: generation.num_captions must be <= generation.max_num_captions",
        ),
    ],
)
def test_bad_values_are_refused_naming_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(None, env)
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("cache: {max_entries: 5, ttl: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown key cache\.ttl"):
        load_settings(path, {})


def test_unknown_section_and_bad_yaml_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("caching: {}\n")
    with pytest.raises(ConfigError, match="unknown section 'caching'"):
        load_settings(path, {})
    path.write_text("batching: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(path, {})


def test_settings_are_immutable_and_replace_validates() -> None:
    s = load_settings(None, {})
    with pytest.raises(AttributeError):
        s.server.port = 1  # type: ignore[misc]
    assert s.replace("server", port=9000).server.port == 9000
    with pytest.raises(ConfigError, match=r"server\.port"):
        s.replace("server", port="x")


# ---- secrets never echoed; proxies validated ----


@pytest.mark.parametrize(
    "environ",
    [
        {"CAPTIONER_AUTH__API_KEYS": "s3cr3t-key-value"},
        {"CAPTIONER_AUTH__ADMIN_KEYS": "s3cr3t-key-value"},
        {"CAPTIONER_AUTH__ALLOW_ANONYMOUS": "s3cr3t-key-value"},
        {"CAPTIONER_CACHE__REDIS_URL": "{s3cr3t-key-value: 1}"},
        {"CAPTIONER_JOBS__REDIS_URL": "http://:s3cr3t-key-value@redis"},
    ],
)
def test_config_errors_never_echo_secret_values(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(None, environ)
    message = str(refused.value)
    assert "s3cr3t-key-value" not in message
    assert ("auth." in message) or ("redis_url" in message)  # still names the key


def test_a_yaml_error_does_not_quote_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text('auth:\n  api_keys: ["s3cr3t-key-value"\nserver: {port: 1}\n')
    with pytest.raises(ConfigError) as refused:
        load_settings(path, {})
    assert "s3cr3t-key-value" not in str(refused.value) and "line" in str(refused.value)


def test_non_secret_values_are_still_shown() -> None:
    with pytest.raises(ConfigError, match="got 'x'"):
        load_settings(None, {"CAPTIONER_BATCHING__MAX_BATCH_SIZE": "x"})


def test_forwarded_allow_ips_must_be_addresses_or_networks() -> None:
    settings = load_settings(None, {"CAPTIONER_SERVER__FORWARDED_ALLOW_IPS": "[10.0.0.0/8, '::1', 172.28.0.10]"})
    assert settings.server.forwarded_allow_ips == ["10.0.0.0/8", "::1", "172.28.0.10"]
    assert load_settings(None, {}).server.forwarded_allow_ips == ["127.0.0.1", "::1"]
    with pytest.raises(ConfigError, match="forwarded_allow_ips"):
        load_settings(None, {"CAPTIONER_SERVER__FORWARDED_ALLOW_IPS": "[nginx]"})


def test_cascade_defaults_off_and_reads_the_environment() -> None:
    assert (Settings().cascade.enabled, Settings().cascade.first, Settings().cascade.threshold) == (False, "", 0.0)
    env = {"CAPTIONER_CASCADE__ENABLED": "true", "CAPTIONER_CASCADE__FIRST": "models/student",
           "CAPTIONER_CASCADE__THRESHOLD": "0.35"}  # fmt: skip
    cascade = load_settings(None, env).cascade
    assert (cascade.enabled, cascade.first, cascade.threshold) == (True, "models/student", 0.35)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CAPTIONER_CASCADE__ENABLED": "true"}, "config: cascade.first must name the first model"),
        ({"CAPTIONER_CASCADE__THRESHOLD": "1.5"}, "config: cascade.threshold must be a number in [0, 1], got 1.5"),
        ({"CAPTIONER_CASCADE__THRESHOLD": "-0.1"}, "config: cascade.threshold must be a number >= 0"),
        (
            {"CAPTIONER_CASCADE__FIRST": "registry:student"},
            "config: cascade.first 'registry:student' needs registry.path",
        ),
        (
            {"CAPTIONER_CASCADE__FIRST": "registry:student@latest", "CAPTIONER_REGISTRY__PATH": "reg"},
            "config: cascade.first must be registry:<name>[@production|@canary|@<version>]",
        ),
        ({"CAPTIONER_CASCADE__FIRST": "registry:", "CAPTIONER_REGISTRY__PATH": "reg"}, "config: cascade.first must be"),
    ],
)
def test_bad_cascade_settings_are_refused_naming_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(None, env)
    assert str(refused.value).startswith(message)


def test_a_cascade_first_model_from_the_registry_is_accepted() -> None:
    env = {"CAPTIONER_CASCADE__FIRST": "registry:student@3", "CAPTIONER_REGISTRY__PATH": "reg"}
    assert load_settings(None, env).cascade.first == "registry:student@3"


def test_tenant_keys_default_to_the_contract_and_are_checked() -> None:
    s = load_settings(None, {})
    assert (s.auth.keys_file, s.cache.scope) == ("", "global")
    assert (s.content.blocked_words, s.content.blocked_words_file) == ([], "")
    with pytest.raises(ConfigError, match=r"cache\.scope must be one of global, tenant"):
        load_settings(None, {"CAPTIONER_CACHE__SCOPE": "everyone"})
    with pytest.raises(ConfigError, match=r"content\.fallback_caption must not be empty"):
        load_settings(None, {"CAPTIONER_CONTENT__FALLBACK_CAPTION": "' '"})
    words = load_settings(None, {"CAPTIONER_CONTENT__BLOCKED_WORDS": "[cat, hot dog]"}).content.blocked_words
    assert words == ["cat", "hot dog"]

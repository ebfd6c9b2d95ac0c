"""Settings: loaded and validated once at start-up, then passed down explicitly.

``load_settings(path, environ)`` merges, in order: the dataclass defaults (the contract's config.yaml), the
YAML file, then ``CAPTIONER_<SECTION>__<KEY>`` environment overrides. Any unknown key or bad value raises
``ConfigError`` whose message names the key, e.g.
``config: batching.max_batch_size must be an integer >= 1, got 'x'``.

The package: ``sections`` (every key, default and rule), ``settings`` (``Settings``, built and cross-checked),
``loading`` (file and environment), ``rules`` (checking one value; secrets never shown).
"""

from __future__ import annotations

from captioner.config.loading import ENV_PREFIX, load_settings
from captioner.config.rules import ConfigError, is_secret_key
from captioner.config.sections import (
    AuthSettings,
    BatchingSettings,
    CacheSettings,
    CanarySettings,
    CascadeSettings,
    ContentSettings,
    DriftSettings,
    FeedbackSettings,
    GateSettings,
    GenerationSettings,
    HealthSettings,
    JobsSettings,
    LimitsSettings,
    LoggingSettings,
    ModelSettings,
    RateLimitSettings,
    RegistrySettings,
    ServerSettings,
    UrlInputSettings,
    VariantSettings,
)
from captioner.config.settings import DEFAULT_VARIANT, ROLES, Settings, check_role, to_dict

__all__ = [
    "DEFAULT_VARIANT",
    "ENV_PREFIX",
    "ROLES",
    "AuthSettings",
    "BatchingSettings",
    "CacheSettings",
    "CanarySettings",
    "CascadeSettings",
    "ConfigError",
    "ContentSettings",
    "DriftSettings",
    "FeedbackSettings",
    "GateSettings",
    "GenerationSettings",
    "HealthSettings",
    "JobsSettings",
    "LimitsSettings",
    "LoggingSettings",
    "ModelSettings",
    "RateLimitSettings",
    "RegistrySettings",
    "ServerSettings",
    "Settings",
    "UrlInputSettings",
    "VariantSettings",
    "check_role",
    "is_secret_key",
    "load_settings",
    "to_dict",
]

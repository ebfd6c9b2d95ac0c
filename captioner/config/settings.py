"""``Settings``: every section together, built and cross-checked from raw values in one place (``build``)."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from captioner.config.rules import ConfigError, build_section, coerce, rule_of
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


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    jobs: JobsSettings = field(default_factory=JobsSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    rate_limit: RateLimitSettings = field(default_factory=RateLimitSettings)
    url_input: UrlInputSettings = field(default_factory=UrlInputSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    gate: GateSettings = field(default_factory=GateSettings)
    canary: CanarySettings = field(default_factory=CanarySettings)
    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)
    cascade: CascadeSettings = field(default_factory=CascadeSettings)
    content: ContentSettings = field(default_factory=ContentSettings)
    # A/B variants (top-level `models:` list); empty means one variant, "default", made of `model`.
    models: tuple[VariantSettings, ...] = ()
    # Where the settings came from, for the start-up log line; not a config key.
    source: str = field(default="defaults", compare=False)

    def replace(self, section: str, **changes: Any) -> Settings:
        """A copy with some keys of one section changed (validated like a file would be)."""
        raw = to_dict(self)
        if section == "models":
            raw["models"] = changes["variants"]
        else:
            raw[section].update(changes)
        return build(raw, self.source)

    def variants(self) -> list[tuple[str, float, Settings]]:
        """(name, weight, settings) per variant, where each variant's settings carry its own `model`."""
        if not self.models:
            return [(DEFAULT_VARIANT, 1.0, self)]
        return [(v.variant, v.weight, dataclasses.replace(self, model=v.model)) for v in self.models]

    def with_models_of(self, new: Settings) -> Settings:
        """These settings with ``new``'s `models:` list, whose unset model keys come from *this* `model`
        section: what a SIGHUP reload applies (every other section, `model` too, stays as it runs)."""
        models = tuple(
            dataclasses.replace(
                v, model=dataclasses.replace(self.model, **{k: getattr(v.model, k) for k in v.overrides})
            )
            for v in new.models
        )
        return dataclasses.replace(self, models=models)


DEFAULT_VARIANT = "default"
TOP_LEVEL_LISTS = ("models",)


SECTIONS: dict[str, type[Any]] = {
    f.name: typing.get_type_hints(Settings)[f.name]
    for f in dataclasses.fields(Settings)
    if f.name not in ("source", *TOP_LEVEL_LISTS)
}


def to_dict(settings: Settings) -> dict[str, Any]:
    raw: dict[str, Any] = {name: dataclasses.asdict(getattr(settings, name)) for name in SECTIONS}
    raw["models"] = [{"variant": v.variant, "weight": v.weight, **dataclasses.asdict(v.model)} for v in settings.models]
    return raw


def build(raw: Mapping[str, Any], source: str) -> Settings:
    sections = {name: build_section(name, cls, raw.get(name, {})) for name, cls in SECTIONS.items()}
    models = _build_variants(raw.get("models", []), sections["model"])
    settings = Settings(**sections, models=models, source=source)
    _check_cross_field(settings)
    return settings


def _build_variants(entries: Any, base: ModelSettings) -> tuple[VariantSettings, ...]:
    """`models:` entries are `{variant: NAME, weight: W, <any model key>: ...}`; unset model keys are `model`'s."""
    if not isinstance(entries, list):
        raise ConfigError("config: models must be a list of {variant, weight, ...model keys}")
    variants: list[VariantSettings] = []
    for index, entry in enumerate(entries):
        where = f"models[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"config: {where} must be a mapping such as {{variant: b, weight: 10, path: ...}}")
        entry = dict(entry)
        name = entry.pop("variant", None)
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"config: {where}.variant must be a non-empty string, got {name!r}")
        if any(v.variant == name for v in variants):
            raise ConfigError(f"config: {where}.variant {name!r} is used twice")
        weight = coerce(f"{where}.weight", float, entry.pop("weight", 1.0), rule_of(ge=0))
        model = build_section(where, ModelSettings, {**dataclasses.asdict(base), **entry})
        variants.append(VariantSettings(variant=name, weight=weight, model=model, overrides=tuple(entry)))
    if variants and not sum(v.weight for v in variants) > 0:
        raise ConfigError("config: models needs at least one variant with weight > 0")
    return tuple(variants)


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://")
# redis+sentinel://[[user]:password@]host:port[,host:port...]/<service>[/<db>] (shared_state/redis_client.py).
_SENTINEL_URL = re.compile(
    r"redis\+sentinel://(?:[^@/]*@)?(?:\[?[^,/@\]]+\]?:\d+)(?:,\[?[^,/@\]]+\]?:\d+)*/[^/]+(?:/\d+)?"
)


def _check_cross_field(settings: Settings) -> None:
    redis_urls = (
        ("cache.redis_url", settings.cache.redis_url),
        ("jobs.redis_url", settings.jobs.redis_url),
        ("rate_limit.redis_url", settings.rate_limit.redis_url),
    )
    for name, url in redis_urls:
        if url and not url.startswith(_REDIS_SCHEMES):
            # The value is not echoed: it may hold a password.
            raise ConfigError(f"config: {name} must start with {', '.join(_REDIS_SCHEMES)} or be empty")
        if url.startswith("redis+sentinel://") and not _SENTINEL_URL.fullmatch(url):
            raise ConfigError(
                f"config: {name} must be redis+sentinel://host:port[,host:port]/<service>[/<db>] for Sentinel"
            )
    for entry in settings.server.forwarded_allow_ips:
        if entry != "*":
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ConfigError(
                    f"config: server.forwarded_allow_ips entries must be IP addresses or networks, got {entry!r}"
                ) from None
    _check_cascade(settings)
    _check_model("model", settings.model)
    for index, variant in enumerate(settings.models):
        _check_model(f"models[{index}]", variant.model)
    health = settings.health
    if health.respawn_max_backoff_s < health.respawn_backoff_s:
        raise ConfigError(
            f"config: health.respawn_max_backoff_s must be >= health.respawn_backoff_s "
            f"({health.respawn_backoff_s:g}), got {health.respawn_max_backoff_s:g}"
        )
    if settings.jobs.queue == "redis" and not (settings.jobs.redis_url or settings.cache.redis_url):
        raise ConfigError("config: jobs.queue: redis needs jobs.redis_url (or cache.redis_url)")
    webhook = settings.drift.webhook_url
    if webhook and not webhook.startswith(("http://", "https://")):
        # The value is not echoed: a webhook URL often carries a token.
        raise ConfigError("config: drift.webhook_url must be an http(s) URL or empty")
    content = settings.content
    if not content.fallback_caption.strip():
        raise ConfigError("config: content.fallback_caption must not be empty (it is what a blocked answer says)")
    if any(not word.strip() for word in content.blocked_words):
        raise ConfigError("config: content.blocked_words entries must not be empty")
    gen = settings.generation
    if gen.num_captions > gen.max_num_captions:
        raise ConfigError(
            f"config: generation.num_captions must be <= generation.max_num_captions "
            f"({gen.max_num_captions}), got {gen.num_captions}"
        )
    if gen.min_length > gen.max_length:
        raise ConfigError(
            f"config: generation.min_length must be <= generation.max_length ({gen.max_length}), got {gen.min_length}"
        )


REGISTRY_PREFIX = "registry:"


def _check_cascade(settings: Settings) -> None:
    cascade = settings.cascade
    if cascade.threshold > 1:
        raise ConfigError(f"config: cascade.threshold must be a number in [0, 1], got {cascade.threshold:g}")
    first = cascade.first.strip()
    if cascade.enabled and not first:
        raise ConfigError("config: cascade.first must name the first model (a folder, or registry:<name>) when "
                          "cascade.enabled is true")  # fmt: skip
    if first.startswith(REGISTRY_PREFIX):
        name, _, alias = first[len(REGISTRY_PREFIX) :].partition("@")
        if not name or ("@" in first and not (alias in ("production", "canary") or alias.isdigit())):
            raise ConfigError(
                f"config: cascade.first must be registry:<name>[@production|@canary|@<version>], got {first!r}"
            )
        if not settings.registry.path:
            raise ConfigError(f"config: cascade.first {first!r} needs registry.path (the registry to read it from)")


def _check_model(where: str, model: ModelSettings) -> None:
    if model.jpeg_decode == "device" and model.worker == "process":
        # The child process takes pixel tensors; the still-encoded JPEGs this needs stay in the server process.
        raise ConfigError(f"config: {where}.jpeg_decode: device needs {where}.worker: thread")
    if model.autocast != "none" and model.dtype in ("float16", "bfloat16"):
        raise ConfigError(
            f"config: {where}.autocast runs float32 weights in {model.autocast}; "
            f"{where}.dtype must be auto or float32, got {model.dtype!r}"
        )
    if model.autocast != "none" and model.quantize != "none":
        raise ConfigError(f"config: {where}.autocast and {where}.quantize cannot be combined")


ROLES = ("all", "api", "worker")


def check_role(role: str, settings: Settings) -> None:
    """``serve --role api|worker`` splits accepting from captioning, which only a shared queue can join."""
    if role not in ROLES:
        raise ConfigError(f"config: --role must be one of {', '.join(ROLES)}, got {role!r}")
    if role != "all" and settings.jobs.queue != "redis":
        raise ConfigError(
            f"config: --role {role} needs jobs.queue: redis (api and worker replicas meet only through that queue)"
        )

"""Settings: loaded and validated once at start-up, then passed down explicitly.

``load_settings(path, environ)`` merges, in order: the dataclass defaults (the contract's config.yaml), the
YAML file, then ``CAPTIONER_<SECTION>__<KEY>`` environment overrides. Any unknown key or bad value raises
``ConfigError`` whose message names the key, e.g.
``config: batching.max_batch_size must be an integer >= 1, got 'x'``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "CAPTIONER_"


class ConfigError(ValueError):
    """A configuration problem, phrased as one line that names the key."""


def _rule(*, ge: float | None = None, gt: float | None = None, choices: tuple[str, ...] = ()) -> Any:
    return {"ge": ge, "gt": gt, "choices": choices}


def _field(default: Any, **rule: Any) -> Any:
    return field(default=default, metadata=_rule(**rule))


@dataclass(frozen=True)
class ServerSettings:
    # Loopback, like uvicorn: `make serve` needs no keys. Any other address needs auth.api_keys (or
    # auth.allow_anonymous: true on purpose); the container images bind 0.0.0.0 and set keys.
    host: str = "127.0.0.1"
    port: int = _field(8000, ge=1)
    # Seconds a SIGTERM waits for accepted requests before the process exits anyway.
    drain_timeout_s: float = _field(30.0, ge=0)
    # Threads that decode and resize images; the model has its own dedicated thread.
    preprocess_workers: int = _field(2, ge=1)
    # Most connections served at once (uvicorn's limit_concurrency); 0: auto (4 x limits.max_in_flight + 64).
    limit_concurrency: int = _field(0, ge=0)
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (IPs or CIDR networks): the reverse proxy.
    # Anyone else's forwarded headers are ignored, so a client cannot pick its own address (and rate bucket).
    forwarded_allow_ips: list[str] = field(default_factory=lambda: ["127.0.0.1", "::1"])


@dataclass(frozen=True)
class ModelSettings:
    name: str = "Salesforce/blip-image-captioning-base"
    path: str = "weights/blip-image-captioning-base"
    revision: str = "main"
    device: str = "auto"
    dtype: str = _field("auto", choices=("auto", "float32", "float16", "bfloat16"))
    prompt: str = "a picture of "
    # Speed options, each measured in docs/benchmarks.md (see captioner/acceleration.py).
    attention: str = _field("sdpa", choices=("sdpa", "eager"))
    compile: bool = False
    quantize: str = _field("none", choices=("none", "int8"))
    num_threads: int = _field(0, ge=0)  # torch intra-op threads; 0: auto (see auto_threads)
    # How num_threads 0 decides on the CPU: leave_one (cores - 1); measured (from the model's and the
    # preprocessing's measured cost per image at warm-up: all cores when the model dominates).
    auto_threads: str = _field("leave_one", choices=("leave_one", "measured"))
    # thread: generate() on a thread of the server process; process: in a child process with its own GIL.
    worker: str = _field("thread", choices=("thread", "process"))
    # GPU options (docs/benchmarks.md, "GPU"), each checked on the CPU against the reference path:
    # float16/bfloat16 autocast around generate() (weights stay float32; dtype auto then means float32).
    autocast: str = _field("none", choices=("none", "float16", "bfloat16"))
    # static: preallocated self- and cross-attention KV caches, so each decoding step has fixed shapes and,
    # with compile: true, runs as one compiled graph (CUDA graphs on a GPU).
    kv_cache: str = _field("dynamic", choices=("dynamic", "static"))
    # device: JPEGs are decoded with their batch on model.device (torchvision.io.decode_jpeg; nvJPEG on CUDA)
    # instead of by Pillow on the preprocessing threads (cpu).
    jpeg_decode: str = _field("cpu", choices=("cpu", "device"))


@dataclass(frozen=True)
class GenerationSettings:
    num_beams: int = _field(3, ge=1)
    max_length: int = _field(20, ge=1)
    min_length: int = _field(5, ge=0)
    num_captions: int = _field(1, ge=1)
    max_num_captions: int = _field(3, ge=1)
    length_penalty: float = 1.0
    repetition_penalty: float = _field(1.0, gt=0)


@dataclass(frozen=True)
class BatchingSettings:
    max_batch_size: int = _field(16, ge=1)
    max_wait_ms: float = _field(100.0, ge=0)
    max_queue: int = _field(256, ge=1)
    request_timeout_s: float = _field(30.0, gt=0)
    # On a GPU: choose max_batch_size at warm-up from the memory one image takes (up to max_auto_batch_size).
    # Without a GPU, max_batch_size stays as configured.
    auto_batch_size: bool = False
    max_auto_batch_size: int = _field(128, ge=1)


@dataclass(frozen=True)
class HealthSettings:
    """When a replica's model counts as broken (not ready, model work refused with 503), and how it comes back."""

    # This many failed batches in a row -> not ready until a probe batch (the warm-up image) succeeds.
    max_consecutive_failures: int = _field(3, ge=1)
    # While failing: seconds between probe batches (the first runs at once).
    probe_interval_s: float = _field(5.0, gt=0)
    # model.worker: process: a dead model process is respawned after this, doubling per death in a row.
    respawn_backoff_s: float = _field(1.0, gt=0)
    respawn_max_backoff_s: float = _field(30.0, gt=0)


@dataclass(frozen=True)
class CacheSettings:
    max_entries: int = _field(10000, ge=0)
    ttl_s: float = _field(86400.0, gt=0)
    # Empty: in-process only. redis://host:6379/0 adds Redis as a second level shared by every replica.
    redis_url: str = ""
    # Per Redis command; past it (or while Redis is down) the cache goes local-only instead of waiting.
    redis_timeout_s: float = _field(0.25, gt=0)


@dataclass(frozen=True)
class JobsSettings:
    # How long a finished async job's result can be fetched (and how long a job's record lives at all).
    ttl_s: float = _field(3600.0, gt=0)
    # Most jobs one replica keeps; when all are still running, new async requests get 503 overloaded.
    max_jobs: int = _field(10000, ge=1)
    # Empty: cache.redis_url if set (so any replica can answer), else in-process only.
    redis_url: str = ""
    # memory: jobs live in the accepting process. redis: a durable queue (Redis Streams) any replica consumes.
    queue: str = _field("memory", choices=("memory", "redis"))
    # A job claimed by a replica that then stops answering is handed to another after this long.
    lease_s: float = _field(30.0, gt=0)
    # Tries per job before it ends with an error result (a poison image can't loop for ever).
    max_attempts: int = _field(3, ge=1)
    # Async jobs one caller (API key, or client address without auth) may have running at once; past it, 429.
    # 0: auto (half of limits.max_in_flight), so one caller can never hold the whole admission budget.
    max_running_per_principal: int = _field(0, ge=0)
    # Per Redis command of the durable queue: longer than the cache's, since a job must not be refused for a blip.
    redis_timeout_s: float = _field(1.0, gt=0)
    # HMAC-SHA256 key that signs job callbacks (X-Captioner-Signature); "" refuses callback_url. Never logged.
    callback_secret: str = field(default="", repr=False, metadata=_rule())


@dataclass(frozen=True)
class LimitsSettings:
    max_body_bytes: int = _field(10 * 1024 * 1024, ge=1)
    max_pixels: int = _field(40_000_000, ge=1)
    # A request body that has not fully arrived by then is answered 408.
    body_timeout_s: float = _field(30.0, gt=0)
    # A request line + headers that have not fully arrived by then: 408 and the connection is closed.
    header_timeout_s: float = _field(10.0, gt=0)
    # The admission budget: requests accepted and not yet answered (body read, URL fetch, hash, decode, queue,
    # generate; sync requests and async jobs alike). Past it: 503 overloaded + Retry-After, before the body is
    # read. 0: auto (batching.max_queue + 2 x batching.max_batch_size).
    max_in_flight: int = _field(0, ge=0)


@dataclass(frozen=True)
class AuthSettings:
    api_keys: list[str] = field(default_factory=list)
    # Serving a non-loopback address with no keys must be asked for on purpose.
    allow_anonymous: bool = False
    # Keys (same forms as api_keys) that may also read operator endpoints: the drift report and reference,
    # which summarise every caller's traffic. With auth on and no admin keys, those endpoints answer 403.
    admin_keys: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RateLimitSettings:
    per_key_rps: float = _field(0.0, ge=0)
    burst: int = _field(0, ge=0)
    # Empty: cache.redis_url if set (one bucket per caller across every replica), else a bucket per replica.
    redis_url: str = ""
    # Per Redis call; past it (or while Redis is down) the decision is made without Redis, as fail_open says.
    redis_timeout_s: float = _field(0.1, gt=0)
    # Redis unreachable: true falls back to this replica's own buckets; false refuses with 503 overloaded.
    fail_open: bool = True


@dataclass(frozen=True)
class UrlInputSettings:
    enabled: bool = True
    timeout_s: float = _field(5.0, gt=0)
    max_redirects: int = _field(3, ge=0)
    allow_private_networks: bool = False
    # Outbound fetches at once, per process (httpx max_connections and a semaphore): caps what one replica can
    # be made to send to a third party. Jobs past it wait their turn inside the admission budget.
    max_concurrent_fetches: int = _field(16, ge=1)


@dataclass(frozen=True)
class LoggingSettings:
    format: str = _field("json", choices=("json", "text"))
    level: str = _field("info", choices=("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class DriftSettings:
    enabled: bool = True
    # The recent requests compared with the reference, per feature (a few bytes each).
    window: int = _field(1000, ge=10)
    # Without reference_path, the first this-many requests after start-up are the reference.
    reference_size: int = _field(1000, ge=10)
    # A reference saved by `captioner drift save-reference`; "" learns it from the first requests instead.
    reference_path: str = ""
    # PSI above this is logged as a warning (and alerted on); 0.1-0.2 is "some change", > 0.2 "a real shift".
    psi_alert: float = _field(0.2, gt=0)
    # No score until the window holds this many: with 12 bins, PSI's sampling noise alone is ~11/n.
    min_window: int = _field(200, ge=1)
    bins: int = _field(10, ge=2)
    # POSTed the drift report (JSON) once per alert episode, e.g. to start a retraining job; "" = off.
    # The URL input's SSRF policy applies (url_input.allow_private_networks, or the flag below for this URL only).
    webhook_url: str = ""
    webhook_allow_private_networks: bool = False
    webhook_timeout_s: float = _field(10.0, gt=0)


@dataclass(frozen=True)
class RegistrySettings:
    # "" = off; else serve `name`'s `production` alias (and its `canary`, at the canary's weight) from here.
    path: str = ""
    name: str = "captioner"
    # How often a server re-reads the aliases file (a stat, then a read only when it changed).
    poll_s: float = _field(2.0, gt=0)


@dataclass(frozen=True)
class GateSettings:
    """The deploy gate: a candidate is scored against production on this set before it may be promoted."""

    annotations: str = ""
    images: str = ""
    min_cider: float = _field(0.0, ge=0)
    max_regression: float = _field(0.02, ge=0)


@dataclass(frozen=True)
class CanarySettings:
    """When a canary is worse than production by more than these, it is rolled back automatically."""

    min_requests: int = _field(200, ge=1)
    max_error_ratio_increase: float = _field(0.01, ge=0)
    max_p95_ratio: float = _field(1.5, gt=0)
    max_confidence_drop: float = _field(0.1, ge=0)
    # User feedback: the canary's approval (share of ratings >= 4) may fall this far below production's, once
    # both have min_feedback ratings.
    max_approval_drop: float = _field(0.1, ge=0)
    min_feedback: int = _field(20, ge=1)
    # How often the server compares the canary with production.
    interval_s: float = _field(5.0, gt=0)


@dataclass(frozen=True)
class FeedbackSettings:
    enabled: bool = True
    # Images sent with feedback are kept only when this is on, and never longer than retention_s.
    keep_images: bool = False
    retention_s: float = _field(2592000.0, gt=0)
    # Without Redis (cache.redis_url / jobs.redis_url), ratings go to daily JSON Lines files in this folder.
    path: str = "feedback"
    # The most ratings kept (the oldest go first); with keep_images, at most one image each.
    max_records: int = _field(1_000_000, ge=1)


@dataclass(frozen=True)
class VariantSettings:
    """One A/B variant: a name, a traffic weight and the `model` section with this variant's overrides."""

    variant: str
    weight: float
    model: ModelSettings


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
        return _build(raw, self.source)

    def variants(self) -> list[tuple[str, float, Settings]]:
        """(name, weight, settings) per variant, where each variant's settings carry its own `model`."""
        if not self.models:
            return [(DEFAULT_VARIANT, 1.0, self)]
        return [(v.variant, v.weight, dataclasses.replace(self, model=v.model)) for v in self.models]


DEFAULT_VARIANT = "default"
_TOP_LEVEL_LISTS = ("models",)


_SECTIONS: dict[str, type[Any]] = {
    f.name: typing.get_type_hints(Settings)[f.name]
    for f in dataclasses.fields(Settings)
    if f.name not in ("source", *_TOP_LEVEL_LISTS)
}


def to_dict(settings: Settings) -> dict[str, Any]:
    raw: dict[str, Any] = {name: dataclasses.asdict(getattr(settings, name)) for name in _SECTIONS}
    raw["models"] = [{"variant": v.variant, "weight": v.weight, **dataclasses.asdict(v.model)} for v in settings.models]
    return raw


def load_settings(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the YAML file at ``path`` (if any), then environment overrides; validated."""
    raw: dict[str, Any] = {name: {} for name in _SECTIONS}
    raw["models"] = []
    source = "defaults"
    if path is not None:
        file_path = Path(path)
        try:
            loaded = yaml.safe_load(file_path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"config: cannot read {file_path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            # Not str(exc): PyYAML quotes the offending line, which may hold a key or a password.
            raise ConfigError(f"config: {file_path} is not valid YAML ({_yaml_problem(exc)})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config: {file_path} must hold a mapping of sections")
        for section, values in loaded.items():
            if section in _TOP_LEVEL_LISTS:
                raw[section] = values if values is not None else []
                continue
            if section not in _SECTIONS:
                raise ConfigError(f"config: unknown section {section!r} (known: {', '.join(_SECTIONS)})")
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"config: {section} must be a mapping")
            raw[section].update(values)
        source = str(file_path)
    overrides = _env_overrides(environ if environ is not None else os.environ)
    for (section, key), value in overrides.items():
        raw[section][key] = value
    if overrides:
        source += " + environment"
    settings = _build(raw, source)
    if settings.registry.path and settings.models:
        # (Checked here, not in _build: serving from the registry fills `models` from its aliases itself.)
        raise ConfigError("config: registry.path and models are exclusive: the registry's aliases choose the variants")
    return settings


def _env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, str], Any]:
    found: dict[tuple[str, str], Any] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section not in _SECTIONS:
            raise ConfigError(f"config: {name} names unknown section {section!r}")
        # YAML parsing gives "32" -> 32, "true" -> True, "[a, b]" -> list, like the file would.
        try:
            found[(section, key)] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            found[(section, key)] = text
    return found


def _build(raw: Mapping[str, Any], source: str) -> Settings:
    sections = {name: _build_section(name, cls, raw.get(name, {})) for name, cls in _SECTIONS.items()}
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
        weight = _coerce(f"{where}.weight", float, entry.pop("weight", 1.0), _rule(ge=0))
        model = _build_section(where, ModelSettings, {**dataclasses.asdict(base), **entry})
        variants.append(VariantSettings(variant=name, weight=weight, model=model))
    if variants and not sum(v.weight for v in variants) > 0:
        raise ConfigError("config: models needs at least one variant with weight > 0")
    return tuple(variants)


def _build_section(section: str, cls: type[Any], values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"config: unknown key {section}.{key} (known: {', '.join(known)})")
    kwargs = {key: _coerce(f"{section}.{key}", hints[key], value, known[key].metadata) for key, value in values.items()}
    return cls(**kwargs)


# Keys whose values are secrets (API keys, passwords in Redis URLs, webhook tokens, signing secrets): an error names
# the key and the kind of value it got, never the value.
_SECRET_KEYS = re.compile(r"^auth\.|redis_url$|webhook|secret|password|token", re.IGNORECASE)


def is_secret_key(name: str) -> bool:
    return bool(_SECRET_KEYS.search(name))


def _shown(name: str, value: Any) -> str:
    """How an error message shows ``value`` of the key ``name``: itself, or only its type for a secret."""
    return f"a {type(value).__name__} (value hidden)" if is_secret_key(name) else repr(value)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + str(getattr(exc, "problem", None) or type(exc).__name__)


def _coerce(name: str, hint: Any, value: Any, rule: Mapping[str, Any]) -> Any:
    if typing.get_origin(hint) in (list, types.GenericAlias) or hint is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config: {name} must be a list of strings, got {_shown(name, value)}")
        return list(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config: {name} must be true or false, got {_shown(name, value)}")
        return value
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        result: Any = value
        kind = "an integer"
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        result = float(value) if ok else value
        kind = "a number"
    else:
        ok = isinstance(value, str)
        result = value
        kind = "a string"
        if ok and rule.get("choices") and value not in rule["choices"]:
            raise ConfigError(f"config: {name} must be one of {', '.join(rule['choices'])}, got {_shown(name, value)}")
    bound = ""
    if rule.get("ge") is not None:
        bound = f" >= {rule['ge']:g}"
        ok = ok and result >= rule["ge"]
    if rule.get("gt") is not None:
        bound = f" > {rule['gt']:g}"
        ok = ok and result > rule["gt"]
    if not ok:
        raise ConfigError(f"config: {name} must be {kind}{bound}, got {_shown(name, value)}")
    return result


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


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
    for entry in settings.server.forwarded_allow_ips:
        if entry != "*":
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ConfigError(
                    f"config: server.forwarded_allow_ips entries must be IP addresses or networks, got {entry!r}"
                ) from None
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

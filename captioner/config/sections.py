"""The config file's sections, one frozen dataclass each: every key, its default (the contract's config.yaml) and
its rule."""

from __future__ import annotations

from dataclasses import dataclass, field

from captioner.config.rules import rule_of, setting


@dataclass(frozen=True)
class ServerSettings:
    # Loopback, like uvicorn: `make serve` needs no keys. Any other address needs auth.api_keys (or
    # auth.allow_anonymous: true on purpose); the container images bind 0.0.0.0 and set keys.
    host: str = "127.0.0.1"
    port: int = setting(8000, ge=1)
    # Seconds a SIGTERM waits for accepted requests before the process exits anyway.
    drain_timeout_s: float = setting(30.0, ge=0)
    # Threads that decode and resize images; the model has its own dedicated thread.
    preprocess_workers: int = setting(2, ge=1)
    # Most connections served at once (uvicorn's limit_concurrency); 0: auto (4 x limits.max_in_flight + 64).
    limit_concurrency: int = setting(0, ge=0)
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (IPs or CIDR networks): the reverse proxy.
    # Anyone else's forwarded headers are ignored, so a client cannot pick its own address (and rate bucket).
    forwarded_allow_ips: list[str] = field(default_factory=lambda: ["127.0.0.1", "::1"])


@dataclass(frozen=True)
class ModelSettings:
    name: str = "Salesforce/blip-image-captioning-base"
    path: str = "weights/blip-image-captioning-base"
    revision: str = "main"
    device: str = "auto"
    dtype: str = setting("auto", choices=("auto", "float32", "float16", "bfloat16"))
    prompt: str = "a picture of "
    # Speed options, each measured in docs/benchmarks.md (see captioner/acceleration.py).
    attention: str = setting("sdpa", choices=("sdpa", "eager"))
    compile: bool = False
    quantize: str = setting("none", choices=("none", "int8"))
    num_threads: int = setting(0, ge=0)  # torch intra-op threads; 0: auto (see auto_threads)
    # How num_threads 0 decides on the CPU: measured (from the model's and the preprocessing's measured cost
    # per image at warm-up: all cores when the model dominates); leave_one (cores - 1).
    auto_threads: str = setting("measured", choices=("measured", "leave_one"))
    # process: generate() in a supervised child process with its own GIL (the default: faster on every
    # benchmark, docs/benchmarks.md); thread: on a thread of the server process (jpeg_decode: device needs it).
    worker: str = setting("process", choices=("process", "thread"))
    # GPU options (docs/benchmarks.md, "GPU"), each checked on the CPU against the reference path:
    # float16/bfloat16 autocast around generate() (weights stay float32; dtype auto then means float32).
    autocast: str = setting("none", choices=("none", "float16", "bfloat16"))
    # static: preallocated self- and cross-attention KV caches, so each decoding step has fixed shapes and,
    # with compile: true, runs as one compiled graph (CUDA graphs on a GPU).
    kv_cache: str = setting("dynamic", choices=("dynamic", "static"))
    # device: JPEGs are decoded with their batch on model.device (torchvision.io.decode_jpeg; nvJPEG on CUDA)
    # instead of by Pillow on the preprocessing threads (cpu).
    jpeg_decode: str = setting("cpu", choices=("cpu", "device"))


@dataclass(frozen=True)
class GenerationSettings:
    num_beams: int = setting(3, ge=1)
    max_length: int = setting(20, ge=1)
    min_length: int = setting(5, ge=0)
    num_captions: int = setting(1, ge=1)
    max_num_captions: int = setting(3, ge=1)
    length_penalty: float = 1.0
    repetition_penalty: float = setting(1.0, gt=0)


@dataclass(frozen=True)
class BatchingSettings:
    max_batch_size: int = setting(16, ge=1)
    max_wait_ms: float = setting(100.0, ge=0)
    max_queue: int = setting(256, ge=1)
    request_timeout_s: float = setting(30.0, gt=0)
    # On a GPU: choose max_batch_size at warm-up from the memory one image takes (up to max_auto_batch_size).
    # Without a GPU, max_batch_size stays as configured.
    auto_batch_size: bool = False
    max_auto_batch_size: int = setting(128, ge=1)
    # static: a batch of up to max_batch_size images per generate(). continuous: decoding steps over a running set
    # of sequences that images join between steps and leave when they end (at most max_batch_size x num_beams
    # rows); max_wait_ms and auto_batch_size then don't apply (docs/configuration.md).
    mode: str = setting("static", choices=("static", "continuous"))


@dataclass(frozen=True)
class HealthSettings:
    """When a replica's model counts as broken (not ready, model work refused with 503), and how it comes back."""

    # This many failed batches in a row -> not ready until a probe batch (the warm-up image) succeeds.
    max_consecutive_failures: int = setting(3, ge=1)
    # While failing: seconds between probe batches (the first runs at once).
    probe_interval_s: float = setting(5.0, gt=0)
    # model.worker: process: a dead model process is respawned after this, doubling per death in a row.
    respawn_backoff_s: float = setting(1.0, gt=0)
    respawn_max_backoff_s: float = setting(30.0, gt=0)
    # model.worker: process: a model process with a batch in flight and no answer for this long is stuck (kill -STOP,
    # a driver hang): not ready, SIGKILLed, respawned; its batch gets 503. 0: off. Must exceed the longest
    # legitimate batch, a first one under model.compile included (docs/configuration.md says why 120).
    watchdog_s: float = setting(120.0, ge=0)


@dataclass(frozen=True)
class CacheSettings:
    max_entries: int = setting(10000, ge=0)
    ttl_s: float = setting(86400.0, gt=0)
    # Empty: in-process only. redis://host:6379/0 adds Redis as a second level shared by every replica.
    redis_url: str = ""
    # Per Redis command; past it (or while Redis is down) the cache goes local-only instead of waiting.
    redis_timeout_s: float = setting(0.25, gt=0)
    # Whose answers a tenant may be served from the cache (serving/privacy.py; docs/operations.md, "Tenants"):
    # global: everyone's (the saving), but "cached": true only for an image this tenant sent before; tenant: only
    # its own, so not even the time of a hit tells one tenant what another sent.
    scope: str = setting("global", choices=("global", "tenant"))


@dataclass(frozen=True)
class JobsSettings:
    # How long a finished async job's result can be fetched (and how long a job's record lives at all).
    ttl_s: float = setting(3600.0, gt=0)
    # Most jobs one replica keeps; when all are still running, new async requests get 503 overloaded.
    max_jobs: int = setting(10000, ge=1)
    # Empty: cache.redis_url if set (so any replica can answer), else in-process only.
    redis_url: str = ""
    # memory: jobs live in the accepting process. redis: a durable queue (Redis Streams) any replica consumes.
    queue: str = setting("memory", choices=("memory", "redis"))
    # A job claimed by a replica that then stops answering is handed to another after this long.
    lease_s: float = setting(30.0, gt=0)
    # Tries per job before it ends with an error result (a poison image can't loop for ever).
    max_attempts: int = setting(3, ge=1)
    # Async jobs one caller (API key, or client address without auth) may have running at once; past it, 429.
    # 0: auto (half of limits.max_in_flight), so one caller can never hold the whole admission budget.
    max_running_per_principal: int = setting(0, ge=0)
    # Per Redis command of the durable queue: longer than the cache's, since a job must not be refused for a blip.
    redis_timeout_s: float = setting(1.0, gt=0)
    # HMAC-SHA256 key that signs job callbacks (X-Captioner-Signature); "" refuses callback_url. Never logged.
    callback_secret: str = field(default="", repr=False, metadata=rule_of())


@dataclass(frozen=True)
class LimitsSettings:
    max_body_bytes: int = setting(10 * 1024 * 1024, ge=1)
    max_pixels: int = setting(40_000_000, ge=1)
    # A request body that has not fully arrived by then is answered 408.
    body_timeout_s: float = setting(30.0, gt=0)
    # A request line + headers that have not fully arrived by then: 408 and the connection is closed.
    header_timeout_s: float = setting(10.0, gt=0)
    # The admission budget: requests accepted and not yet answered (body read, URL fetch, hash, decode, queue,
    # generate; sync requests and async jobs alike). Past it: 503 overloaded + Retry-After, before the body is
    # read. 0: auto (batching.max_queue + 2 x batching.max_batch_size).
    max_in_flight: int = setting(0, ge=0)


@dataclass(frozen=True)
class AuthSettings:
    api_keys: list[str] = field(default_factory=list)
    # Serving a non-loopback address with no keys must be asked for on purpose.
    allow_anonymous: bool = False
    # Keys (same forms as api_keys) that may also read operator endpoints: the drift report and reference,
    # which summarise every caller's traffic. With auth on and no admin keys, those endpoints answer 403.
    admin_keys: list[str] = field(default_factory=list)
    # A YAML file of tenants (name, key hashes, scopes, limits: guard/keys_file.py), re-read when it changes and on
    # SIGHUP; "" = only api_keys (tenant "default") and admin_keys (tenant "admin").
    keys_file: str = ""
    # How often the keys file's stat is looked at (a read only when it changed).
    keys_file_poll_s: float = setting(1.0, gt=0)


@dataclass(frozen=True)
class RateLimitSettings:
    per_key_rps: float = setting(0.0, ge=0)
    burst: int = setting(0, ge=0)
    # Empty: cache.redis_url if set (one bucket per caller across every replica), else a bucket per replica.
    redis_url: str = ""
    # Per Redis call; past it (or while Redis is down) the decision is made without Redis, as fail_open says.
    redis_timeout_s: float = setting(0.1, gt=0)
    # Redis unreachable: true falls back to this replica's own buckets; false refuses with 503 overloaded.
    fail_open: bool = True


@dataclass(frozen=True)
class ContentSettings:
    """Words no caption may contain (serving/content_filter.py): whole words or phrases, case-insensitive."""

    blocked_words: list[str] = field(default_factory=list)
    # One word or phrase per line ("#" starts a comment), added to blocked_words; read at start-up.
    blocked_words_file: str = ""
    # Answered when every caption of an image was blocked.
    fallback_caption: str = "an image"


@dataclass(frozen=True)
class UrlInputSettings:
    enabled: bool = True
    timeout_s: float = setting(5.0, gt=0)
    max_redirects: int = setting(3, ge=0)
    allow_private_networks: bool = False
    # Outbound HTTP calls at once, per process: URL fetches, job callbacks and webhooks share it (httpx
    # max_connections and a semaphore). Caps what one replica can be made to send to third parties; calls past
    # it wait their turn (jobs inside the admission budget) before their timeout starts.
    max_concurrent_fetches: int = setting(16, ge=1)


@dataclass(frozen=True)
class LoggingSettings:
    format: str = setting("json", choices=("json", "text"))
    level: str = setting("info", choices=("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class DriftSettings:
    enabled: bool = True
    # The recent requests compared with the reference, per feature (a few bytes each).
    window: int = setting(1000, ge=10)
    # Without reference_path, the first this-many requests after start-up are the reference.
    reference_size: int = setting(1000, ge=10)
    # A reference saved by `captioner drift save-reference`; "" learns it from the first requests instead.
    reference_path: str = ""
    # PSI above this is logged as a warning (and alerted on); 0.1-0.2 is "some change", > 0.2 "a real shift".
    psi_alert: float = setting(0.2, gt=0)
    # No score until the window holds this many: with 12 bins, PSI's sampling noise alone is ~11/n.
    min_window: int = setting(200, ge=1)
    bins: int = setting(10, ge=2)
    # POSTed the drift report (JSON) once per alert episode, e.g. to start a retraining job; "" = off.
    # The URL input's SSRF policy applies (url_input.allow_private_networks, or the flag below for this URL only).
    webhook_url: str = ""
    webhook_allow_private_networks: bool = False
    webhook_timeout_s: float = setting(10.0, gt=0)


@dataclass(frozen=True)
class RegistrySettings:
    # "" = off; else serve `name`'s `production` alias (and its `canary`, at the canary's weight) from here.
    path: str = ""
    name: str = "captioner"
    # How often a server re-reads the aliases file (a stat, then a read only when it changed).
    poll_s: float = setting(2.0, gt=0)


@dataclass(frozen=True)
class GateSettings:
    """The deploy gate: a candidate is scored against production on this set before it may be promoted."""

    annotations: str = ""
    images: str = ""
    min_cider: float = setting(0.0, ge=0)
    max_regression: float = setting(0.02, ge=0)


@dataclass(frozen=True)
class CanarySettings:
    """When a canary is worse than production by more than these, it is rolled back automatically."""

    min_requests: int = setting(200, ge=1)
    max_error_ratio_increase: float = setting(0.01, ge=0)
    max_p95_ratio: float = setting(1.5, gt=0)
    max_confidence_drop: float = setting(0.1, ge=0)
    # User feedback: the canary's approval (share of ratings >= 4) may fall this far below production's, once
    # both have min_feedback ratings.
    max_approval_drop: float = setting(0.1, ge=0)
    min_feedback: int = setting(20, ge=1)
    # How often the server compares the canary with production.
    interval_s: float = setting(5.0, gt=0)
    # A canary whose model can't take work (down, or failing its batches) this long is rolled back, traffic or
    # none; one whose load failed, at once. Its health never makes a replica unready (production's does).
    max_down_s: float = setting(120.0, gt=0)


@dataclass(frozen=True)
class CascadeSettings:
    """A confidence cascade: a first (small) model captions every cache miss; an answer whose top caption's
    confidence is below ``threshold`` goes on to the main model (serving/cascade.py)."""

    enabled: bool = False
    # A model folder, or "registry:<name>" (that registry name's production version; "registry:<name>@<alias or
    # version>" for another) in registry.path.
    first: str = ""
    # In [0, 1]: 0 accepts every first answer, 1 escalates every image. `captioner cascade calibrate` chooses it.
    threshold: float = setting(0.0, ge=0)


@dataclass(frozen=True)
class FeedbackSettings:
    enabled: bool = True
    # Images sent with feedback are kept only when this is on, and never longer than retention_s.
    keep_images: bool = False
    retention_s: float = setting(2592000.0, gt=0)
    # Without Redis (cache.redis_url / jobs.redis_url), ratings go to daily JSON Lines files in this folder.
    path: str = "feedback"
    # The most ratings kept (the oldest go first); with keep_images, at most one image each.
    max_records: int = setting(1_000_000, ge=1)
    # A rating counts toward the canary analysis only for an image captioned for the same caller within this many
    # seconds, and only the caller's first of that image (feedback/served.py); every rating is kept all the same.
    served_ttl_s: float = setting(86400.0, gt=0)
    # The most (caller, image) pairs this process remembers for that, served and rated each (oldest go first).
    max_served: int = setting(100_000, ge=1)


@dataclass(frozen=True)
class VariantSettings:
    """One A/B variant: a name, a traffic weight and the `model` section with this variant's overrides."""

    variant: str
    weight: float
    model: ModelSettings
    # The model keys this entry sets itself (the others are `model`'s): what a SIGHUP reload re-applies.
    overrides: tuple[str, ...] = field(default=(), compare=False)

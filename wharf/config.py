"""One settings object: environment (WHARF_*), then CLI flags, with defaults that just work."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "smollm2-135m-instruct"
EMBEDDED_MAX_BATCH = 128    # the embedded engine's KV slots when WHARF_MAX_BATCH_SIZE is unset (vLLM's CPU default)
# What the embedded engine's KV cache may grow to: 128 sequences of 2048 tokens of SmolLM2 in bf16.
KV_CACHE_MB = 6144


def default_data_dir() -> Path:
    return Path.home() / ".wharf"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WHARF_", env_nested_delimiter="__", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None          # default: SQLite file under data_dir
    redis_url: str | None = None             # set: limits shared across replicas

    # Models: NAME -> path of a Hugging Face folder or a .gguf file. The embedded
    # default is always registered unless `load_default_model` is off.
    models: dict[str, str] = Field(default_factory=dict)
    aliases: dict[str, str] = Field(default_factory=dict)
    default_model: str = DEFAULT_MODEL
    load_default_model: bool = True

    backend: str = "torch"                   # torch | vllm | upstream
    # Base URL of the upstream engine, or several replicas of it separated by commas
    # (`--upstream-url` repeated joins them so). A plain str, not a list: pydantic-settings
    # would read a list from the environment as JSON, and one URL must keep working as is.
    upstream_url: str | None = None
    upstream_api_key: str | None = None      # bearer key the gateway sends to the upstream engine
    upstream_tokenizer: str | None = None    # HF tokenizer folder for exact prompt counts (else estimated)
    # Extra vLLM AsyncEngineArgs, e.g. {"gpu_memory_utilization": 0.85}.
    vllm_engine_args: dict = Field(default_factory=dict)
    dtype: str = "auto"                      # auto (bf16 only where the CPU has it) | bfloat16 | float32
    # none (exact float) | int8 (fbgemm int8 matmuls) | int4 (the GGUF's 4-bit groups)
    quantize: str = "none"
    threads: int | None = None               # torch threads for decode steps (None: all cores)
    prefill_threads: int | None = None       # torch threads while prefilling a prompt (None: all cores)

    # Engine capacity.
    # Sequences decoded together. None: the backend's own default (EMBEDDED_MAX_BATCH for
    # the embedded engine; vLLM's own max_num_seqs, e.g. 128 on CPU, for --backend vllm).
    max_batch_size: int | None = None

    @property
    def embedded_max_batch(self) -> int:
        return self.max_batch_size or EMBEDDED_MAX_BATCH
    max_model_len: int = 2048                # tokens per sequence (prompt + output)
    max_queue: int = 256                     # waiting requests before "overloaded"
    prefill_chunk: int = 512                 # prompt tokens per scheduler step (bench/README.md, 2026-12-03)
    prefix_cache_mb: int = 256               # KV of repeated prompt prefixes (0: off)
    # What the embedded engine's KV cache may grow to: it bounds the batch to the sequences
    # of max_model_len tokens that fit (6144 MiB: 136 of 2048 tokens for SmolLM2 in bf16, 68 in float32).
    kv_cache_mb: int = Field(KV_CACHE_MB, ge=1)

    lexicon_path: Path | None = None         # sensitive words, one per line (default: data_dir/lexicon.txt)
    # How often each replica checks the shared store for a new lexicon version (one tiny
    # SELECT; a PUT on another replica is enforced here within this many seconds). 0: never.
    lexicon_refresh_s: float = 2.0
    quota_timezone: str = "Asia/Shanghai"    # where a quota day begins

    # Platform defaults for accounts that set none of their own (None: unlimited).
    # Applied per field: an account's own rpm wins over default_rpm, and so on.
    default_rpm: int | None = None
    default_tpm: int | None = None
    default_qps: int | None = None
    default_max_concurrency: int | None = None
    default_quota_chars_per_day: int | None = None
    default_quota_tokens_per_day: int | None = None
    # Account, credential and service limits and these defaults (rpm, tpm, qps,
    # max_concurrency, daily quotas): None (unset) = no limit, 0 = nothing allowed.

    # What one account may hold (None: no cap; 0: none may be created): active
    # credentials and services, whoever creates them (wharf/platform/tenancy.py).
    max_credentials_per_account: int | None = Field(50, ge=0)
    max_services_per_account: int | None = Field(100, ge=0)
    # The longest a self-signed credential may still be valid from now: a SenseNova JWT
    # (exp - now) or a BCE v1 signature (timestamp + expiration - now). Longer: 401 / 14.
    max_token_lifetime_s: int = Field(24 * 3600, ge=60, le=10 * 365 * 24 * 3600)

    request_timeout_s: float = 600.0         # per-request deadline (WeLM 504)
    shutdown_grace_s: float = 30.0           # SIGTERM: in-flight requests get this long to finish
    # Quota reservations left by a killed process (see RELIABILITY.md): "auto" releases, at
    # start, all made before this process started on SQLite (one process per data dir) and
    # those older than request_timeout_s + 60 s elsewhere (replicas share the database);
    # "all" / "stale" force either; "off" skips. Every reconcile_interval_s (0: never) the
    # running server also releases reservations older than request_timeout_s + 60 s.
    reconcile_on_start: str = "auto"
    reconcile_interval_s: float = 60.0
    # One request-body limit for every route (wharf/api/body_limit.py): a declared larger
    # body is refused before it is read, a chunked one when the count passes it.
    max_body_bytes: int = 4 * 1024 * 1024

    # Slow or greedy HTTP clients (wharf/api/slow_clients.py). 0 turns a guard off.
    # Open connections beyond which a request gets 503 (uvicorn's limit_concurrency).
    max_connections: int = Field(1024, ge=0)
    keep_alive_s: float = Field(5.0, ge=0)          # idle between two requests on one connection
    header_timeout_s: float = Field(10.0, ge=0)     # request line + headers within this, else 408
    max_header_bytes: int = Field(64 * 1024, ge=0)  # request line + headers larger: 431
    # A body may stall at most body_timeout_s, and must all arrive within body_timeout_s
    # plus 1 s per body_min_rate bytes received (slower: 408; the connection is closed).
    body_timeout_s: float = Field(10.0, ge=0)
    body_min_rate: int = Field(4096, ge=0)

    # Control plane throttle (admin API, console, OAuth token endpoint; wharf/api/throttle.py):
    # per credential presented (admin API key, console session; OAuth client id + secret,
    # each request of which writes a 30-day token row) and per client IP over all three, on
    # the rate limiter the dialects use (in memory, or Redis when set). 0: that bucket off.
    control_rpm: int = Field(1200, ge=0)
    control_qps: int = Field(50, ge=0)
    oauth_token_rpm: int = Field(60, ge=0)
    control_ip_rpm: int = Field(3000, ge=0)
    control_ip_qps: int = Field(100, ge=0)
    # Expired Qianfan OAuth tokens are deleted this often, in small batches, off the request path.
    token_prune_interval_s: float = Field(60.0, ge=0)
    # Request-log (usage record) retention: records older than this many days are deleted
    # in small batches every request_log_prune_interval_s. 0 keeps them forever (default:
    # they are the usage history the summaries add up).
    request_log_retention_days: float = Field(0, ge=0)
    request_log_prune_interval_s: float = Field(300.0, ge=0)

    @property
    def upstream_urls(self) -> list[str]:
        """`upstream_url` split at commas: each replica once, in the order given."""
        parts = (u.strip().rstrip("/") for u in (self.upstream_url or "").split(","))
        return list(dict.fromkeys(u for u in parts if u))

    @property
    def resolved_lexicon_path(self) -> Path:
        """The lexicon file: seeds the store's lexicon on a first start; the admin API writes it too."""
        return self.lexicon_path or self.data_dir / "lexicon.txt"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'wharf.db'}"

    model_cache_dir: Path | None = None      # converted weights (default: data_dir/models)

    @property
    def cache_dir(self) -> Path:
        return self.model_cache_dir or self.data_dir / "models"

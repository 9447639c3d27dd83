"""Settings by role: every knob is an `NPU_` environment variable (plus `REDIS_URL`).

A process parses only what its role reads, and is handed its settings (constructor or parameter), never
reads them from a global: `RedisSettings` (every process: where Redis is, the client builders, as arq's
`RedisSettings`), `CommonSettings` (what more than one role reads), `CallerSettings` (a backend's
`Dispatcher`), `WorkerSettings` (a worker), `FacadeSettings` (the HTTP facade, itself a caller), and
`Settings`, all of them, for the CLI's `up` (which runs every role) and the backends that build one.
"""

from __future__ import annotations

import json
import socket
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

import redis
import redis.asyncio as aredis
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel

WAIT_SLICE_S = 4.0
"""Longest single blocking Redis call; longer waits are made of slices, so a client with redis-py's
default 5 s socket timeout still works and a vanished server is noticed within seconds."""
REDIS_SOCKET_TIMEOUT_S = 10.0
DEAD_WORKER_MEMORY_S = 3600.0
"""How long a dead worker stays in the workers index (with its expired score), so peers can tell "died"
(take over its jobs) from "never one of ours" (a plain `rq worker`: leave its jobs to RQ)."""
REDIS_RETRIES = 2


class RedisSettings(BaseSettings):
    """Where Redis is and how every process talks to it: the one place clients are built."""

    model_config = SettingsConfigDict(env_prefix="NPU_", extra="ignore")

    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "NPU_REDIS_URL"),
        description="Redis to use; unset means `npu-worker up` starts an embedded one.",
    )
    redis_sentinels: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Redis Sentinel addresses, `host:port,host:port,...`: when set, every "
        "client asks them for the master of `redis_sentinel_master` and follows a failover by itself "
        "(REDIS_URL then only gives the data password and database).")
    redis_sentinel_master: str = Field("mymaster", description="Name of the master the sentinels watch.")
    redis_sentinel_password: SecretStr | None = Field(None, description="Password of the sentinels themselves "
                                                      "(the data password is REDIS_URL's).")
    key_prefix: str = Field("npu", description="First part of every Redis key, so several deployments "
                            "(or test runs) share one Redis without meeting.")
    # the state directory: a running `up` announces its embedded Redis there (`redis_address`)
    state_dir: Path = Field(Path.home() / ".local" / "share" / "npu-worker",
                            description="Prepared models, embedded Redis data, generated credentials.")

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _address_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [a.strip() for a in value.split(",") if a.strip()]
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"a sentinel address is host:port, not {address!r}")
        return value

    @property
    def redis_address(self) -> str:
        """REDIS_URL; else the embedded Redis a running `npu-worker up` announced in the state directory
        (so `status`, `call` and `rq info` find it); else the local default."""
        if self.redis_url:
            return self.redis_url
        announced = self.state_dir / "redis.url"
        if announced.is_file():
            return announced.read_text().strip()
        return "redis://127.0.0.1:6379/0"

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [(host.strip("[]"), int(port)) for host, _, port in (a.rpartition(":") for a in self.redis_sentinels)]

    def _client_options(self) -> dict[str, Any]:
        """Socket options of every client: a socket timeout that outlasts one blocking wait slice
        (`WAIT_SLICE_S`), and few, quick retries: redis-py's default (10 retries, up to 1 s apart) made
        every request wait seconds for its 503 while Redis was gone; callers and the worker loop have
        their own fallbacks."""
        return {"socket_timeout": REDIS_SOCKET_TIMEOUT_S, "socket_connect_timeout": 2, "health_check_interval": 10}

    def _data_options(self) -> dict[str, Any]:
        """Under Sentinel, what REDIS_URL says besides the address: database, user, password."""
        if not self.redis_url:
            return {}
        parsed = parse_url(self.redis_url)  # type: ignore[no-untyped-call, unused-ignore]
        return {k: parsed[k] for k in ("db", "username", "password") if parsed.get(k) is not None}

    def _sentinel_options(self) -> dict[str, Any]:
        password = self.redis_sentinel_password.get_secret_value() if self.redis_sentinel_password else None
        return {"socket_timeout": 1.0, "socket_connect_timeout": 1.0, "password": password}

    def redis(self) -> redis.Redis:
        """The one way a process gets a Redis client: REDIS_URL's server, or Sentinel's current master.

        A Sentinel-managed client asks the sentinels for the master on every new connection, and drops
        its connections when the master answers read-only (demoted), so a failover costs the commands in
        flight a connection error, never a restart.
        """
        retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), REDIS_RETRIES)
        if self.redis_sentinels:
            sentinel = Sentinel(self.sentinel_addresses, sentinel_kwargs=self._sentinel_options())  # type: ignore[no-untyped-call, unused-ignore]
            client: redis.Redis = sentinel.master_for(self.redis_sentinel_master, retry=retry,  # type: ignore[no-untyped-call, unused-ignore]
                                                      **self._client_options(), **self._data_options())
            return client
        return redis.Redis.from_url(self.redis_address, retry=retry, **self._client_options())

    def aredis(self) -> aredis.Redis:
        retry = AsyncRetry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), REDIS_RETRIES)
        if self.redis_sentinels:
            sentinel = AsyncSentinel(self.sentinel_addresses, sentinel_kwargs=self._sentinel_options())  # type: ignore[no-untyped-call, unused-ignore]
            client: aredis.Redis = sentinel.master_for(self.redis_sentinel_master, retry=retry,
                                                       **self._client_options(), **self._data_options())
            return client
        return aredis.Redis.from_url(self.redis_address, retry=retry, **self._client_options())


class CommonSettings(RedisSettings):
    """What more than one role reads besides Redis: the model registry, the generation limits callers
    check and workers enforce, the heartbeat pace callers wait by, logging."""

    models_file: Path | None = Field(None, description="Extra model registry (TOML) merged over the bundled one.")
    cache_dir: str | None = Field(None, description="OpenVINO's compiled-model cache, one subdirectory per device "
                                  "(unset: `<state_dir>/cache`; `off` or empty: no cache). An NPU compiles a model "
                                  "for seconds to minutes; from the cache it loads in a fraction of that.")
    heartbeat_interval_s: float = Field(2.0, gt=0)
    max_new_tokens: int = Field(1024, ge=1, description="Largest max_tokens a generation may ask for.")
    default_new_tokens: int = Field(256, ge=1, description="max_tokens of a generation that does not say "
                                    "(at most max_new_tokens).")
    batch_max: int = Field(32, ge=1, le=1024, description="Most texts in one embedding inference.")
    node_address: str | None = Field(None, description="Base URL of this node's facade, recorded when its "
                                     "workers register the node (for capability probes).")
    log_level: str = "INFO"
    log_json: bool = Field(False, description="One JSON object per log line (with request ids).")
    reply_ttl_s: int = Field(60, ge=1, description="How long a reply, and a caller's cancellation of a job a "
                             "worker holds, are kept for their reader.")

    @property
    def models_dir(self) -> Path:
        return self.state_dir / "models"

    @property
    def compile_cache(self) -> Path | None:
        """Root of the compiled-model cache (NPU_CACHE_DIR), None when it is off."""
        if self.cache_dir is None:
            return self.state_dir / "cache"
        if self.cache_dir.strip().lower() in ("", "off", "none", "false", "0"):
            return None
        return Path(self.cache_dir).expanduser()


class CallerSettings(CommonSettings):
    """What a backend's `Dispatcher` reads: deadlines, both lanes' submission, backpressure, input limits,
    the cloud fallback. No auth, no fleet: a backend that only enqueues parses none of them."""

    # --- Deadlines and the bulk lane
    deadline_s: float = Field(30.0, gt=0, description="Default time budget of an interactive request: the wait "
                              "for a worker to answer (embeddings) or to start (generation), retries and the "
                              "cloud fallback included. Per request: `deadline_s` in the body.")
    generation_idle_s: float = Field(60.0, gt=0, description="Longest silence of a started generation "
                                     "before the caller gives up on it.")
    bulk_result_ttl_s: int = Field(86400, ge=1)
    bulk_job_timeout_s: int = Field(600, ge=1)
    bulk_replicas: int | None = Field(None, ge=0, description="Replicas that must hold a bulk job before "
                                      "`submit_*` returns (Redis WAIT), so a failover cannot lose it "
                                      "unseen; unset: 1 under Sentinel, else 0.")
    bulk_replica_timeout_ms: int = Field(500, ge=1, description="Longest wait for those replicas; short of "
                                         "them, `submit_*` raises 503 `unavailable` (reason `not_replicated`).")

    # --- Backpressure
    max_queue: int = Field(1024, ge=1, description="Interactive jobs waiting per model (stream backlog); beyond it "
                           "callers go to the cloud when allowed, else get 429 `overloaded`.")
    max_bulk_queue: int = Field(100000, ge=1, description="Bulk jobs waiting per model for `submit_*` (429 above).")
    retry_after_s: int = Field(1, ge=1, description="The Retry-After an `overloaded` answer carries.")

    # --- Documented input limits (characters and counts before anything is enqueued; tokens by the worker)
    max_texts: int = Field(256, ge=1, description="Texts in one embedding request (413 above).")
    max_text_chars: int = Field(20000, ge=1, description="Characters in one text (413 above).")
    max_prompt_chars: int = Field(20000, ge=1, description="Characters in one prompt (413 above).")
    max_messages: int = Field(256, ge=1, description="Messages in one chat request (413 above).")

    # --- Cloud fallback (OpenAI-compatible)
    cloud_base_url: str | None = Field(None, description="e.g. https://api.openai.com/v1; unset: no fallback.")
    cloud_api_key: str | None = None
    cloud_timeout_s: float = Field(30.0, gt=0, description="Longest wait for the cloud's answer (within the "
                                   "request's deadline).")
    cloud_share: float = Field(0.25, ge=0, lt=1, description="Share of a request's deadline kept for the cloud "
                               "fallback when one may be asked: the wait for a worker ends that much earlier.")

    @property
    def bulk_wait_replicas(self) -> int:
        if self.bulk_replicas is not None:
            return self.bulk_replicas
        return 1 if self.redis_sentinels else 0


class WorkerSettings(CommonSettings):
    """What a worker process reads: its node, models and devices, batching, liveness and takeover."""

    node_id: str = Field(default_factory=socket.gethostname)
    models: list[str] = Field(default_factory=list, description="Models this worker serves; empty: all.")
    devices: str = Field("NPU,GPU,CPU", description="Device chain tried in order when compiling a model.")
    inference_threads: int = Field(0, ge=0, description="CPU threads per embedding inference; 0: all cores.")
    embed_one_pass: bool = Field(True, description="Tokenize each embedding batch once (for the token count and "
                                 "the inference); false: TextEmbeddingPipeline for everything (as on an NPU).")
    embed_streams: int | None = Field(None, ge=1, description="Streams of the one-pass embedding model on CPU, "
                                      "each one thread, a batch split between them; 1: one inference on every "
                                      "thread (the LATENCY hint). Unset: 2 with two cores or more and "
                                      "inference_threads 0, else 1.")
    batch_window_ms: float = Field(6.0, ge=0, description="How long a busy worker waits to fill a batch.")
    bulk_poll_ms: int = Field(200, ge=10, description="How often an idle worker looks at the bulk lane.")
    max_concurrent: int = Field(32, ge=1, description="Jobs a worker takes at once; utilization's denominator.")
    heartbeat_ttl_s: float = Field(6.0, gt=0, description="A worker silent this long counts as dead: it leaves "
                                   "routing, and its jobs in both lanes are taken over by its peers.")
    reap_interval_s: float = Field(1.0, gt=0, description="How often a worker looks for jobs of dead workers "
                                   "(interactive entries pending on them, bulk jobs started by them).")
    claim_idle_ms: int = Field(1000, ge=0, description="A dead worker's pending interactive job is taken over "
                               "only once idle this long (a guard against a heartbeat that is merely late).")
    max_deliveries: int = Field(2, ge=1, description="Times a job is handed to a worker that dies with it (both "
                                "lanes) before it is failed visibly: the dead-letter stream `<prefix>:dead:<model>` "
                                "or RQ's failed registry. 2: a job is retried once.")
    dead_letter_max: int = Field(10000, ge=1, description="Entries kept per dead-letter stream (oldest trimmed).")
    max_generations: int = Field(8, ge=1, description="Generations a worker runs at once (continuous batching).")
    generation_engine: str | None = Field(None, description="Engine of every generation model, whatever its device "
                                          "or registry entry (`serial`: one at a time, as on an NPU; "
                                          "`continuous-batching`). Unset: the registry's `engine`, else by device "
                                          "(worker/engines.py).")
    embed_engine: str | None = Field(None, description="The same for embedding models (`static-embedding`: fixed "
                                     "shapes, as on an NPU; `text-embedding`).")
    kv_cache_mb: int | None = Field(None, ge=1, description="KV cache of each generation model, in MB (a model's "
                                    "`kv_cache_mb` in the registry wins). Unset: room for max_generations "
                                    "sequences of the model's max_input_tokens + max_new_tokens, from its shape.")
    max_request_tokens: int = Field(16384, ge=1, description="Tokens in one embedding request, all texts together "
                                    "(after truncation when asked for); the worker answers 413 above.")

    @field_validator("node_id", mode="before")
    @classmethod
    def _node_id(cls, value: Any) -> Any:
        """Empty (a compose file's `${NPU_NODE_ID:-}`) means the default, the host name."""
        return socket.gethostname() if isinstance(value, str) and not value.strip() else value


class FacadeSettings(CallerSettings):
    """What the HTTP facade reads besides a caller's settings (it dispatches like any backend): its
    address, authentication, the fleet, body limits and timeouts, the Batch API."""

    # --- Service authentication (docs/architecture.md, Authentication); secrets are SecretStr, so no repr or
    # log shows them
    service_keys: Annotated[dict[str, SecretStr | list[SecretStr]], NoDecode] = Field(
        default_factory=dict, description="Services the facade accepts, JSON: service id -> key, or a list of "
        "keys while one is rotated.")
    service_keys_file: Path | None = Field(None, description="JSON file of the same shape, merged with "
                                           "service_keys (read at start).")
    auth_require_v2: bool = Field(False, description="Refuse v1 (seed) signatures: only v2, which also "
                                  "signs query, nonce and body.")
    auth_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Host header values (`name` or `name:port`) a v2 signature may be made "
        "for: a signature made for another server is refused here. Empty: the names this facade serves as "
        "(its bound address, `localhost`, this machine's host name and NPU_NODE_ADDRESS's host, each with the "
        "bound port); set it when callers reach the facade by another name (a proxy, a mapped port).")
    auth_window_s: int = Field(300, ge=1, le=3600, description="Largest clock difference a signature may "
                               "have; v2 nonces are remembered this long.")
    admin_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Operator bearer tokens that may also change things "
        "(JSON list or comma-separated).")
    viewer_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Operator bearer tokens that may only read "
        "(JSON list or comma-separated).")
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="App keys: bearer tokens that may run inference and list models, "
        "nothing else (for the official `openai` client; JSON list or comma-separated).")
    apps: str | None = Field(None, description="Named apps: JSON `{\"name\": {\"keys\": [...], \"weight\": 2, "
                             "\"limits\": {...}}}`, or the path of a TOML file of such tables (docs/operating.md). "
                             "Bare `api_keys` still work: each is an app of its own, named by its key id.")
    service_id: str | None = Field(None, description="This process's identity when it signs outbound calls.")
    service_key: SecretStr | None = Field(None, description="Key it signs them with.")

    # --- Fleet
    detect_timeout_s: float = Field(3.0, gt=0, description="Longest wait for a node's /health and /models.")
    history_interval_s: float = Field(5.0, gt=0, description="Utilization history: one sample per node this often.")
    history_samples: int = Field(720, ge=1, description="Samples kept per node (720 x 5 s: an hour).")

    # --- Serving
    host: str = "127.0.0.1"
    port: int = 8081
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Addresses whose X-Forwarded-For / X-Forwarded-Proto the facade "
        "believes (JSON list or comma-separated); empty: none, the caller's address is the peer's.")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Largest request body the facade "
                                "reads (413 above, refused while it streams in). The default holds the "
                                "largest request the input limits allow, even JSON-escaped.")
    header_timeout_s: float = Field(10.0, gt=0, le=300, description="Longest a connection may take to send a "
                                    "request's headers (from connect, or from the previous answer): a client "
                                    "that trickles or holds them is disconnected.")
    body_timeout_s: float = Field(60.0, gt=0, le=3600, description="Longest a request's body may take to arrive "
                                  "once its headers did: 408 `request_timeout` after it, the connection closed.")
    metrics_public: bool = Field(False, description="Serve /metrics without credentials (for a scraper on a "
                                 "private network); otherwise it needs a read token or signature.")

    # --- Batch API (`/v1/files`, `/v1/batches`): files live in Redis, see docs/batch-api.md
    batch_file_max_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Largest file `/v1/files` "
                                      "takes (413 above); NPU_MAX_BODY_BYTES caps the upload too.")
    batch_max_lines: int = Field(50000, ge=1, description="Lines in one batch input file (400 above), as OpenAI.")
    batch_line_max_bytes: int = Field(1024 * 1024, ge=64, description="Bytes in one line of a batch file (413 above).")
    batch_file_ttl_s: int = Field(7 * 86400, ge=60, description="How long an uploaded or output file is kept.")
    batch_window: int = Field(64, ge=1, description="Bulk jobs a batch keeps queued or running ahead of its "
                              "results: enough to keep the worker busy, few enough to leave room for others.")
    batch_lease_s: float = Field(10.0, gt=0, description="A facade drives a batch while it renews this lease; "
                                 "another takes the batch over once it lapses.")
    batch_poll_ms: int = Field(100, ge=10, description="How often each facade's driver steps its batches.")

    @field_validator("service_keys", mode="before")
    @classmethod
    def _key_map(cls, value: Any) -> Any:
        """JSON; empty means none (a compose file's `${NPU_SERVICE_KEYS:-}`)."""
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @field_validator("admin_tokens", "viewer_tokens", "api_keys", "trusted_proxies", "auth_hosts",
                     mode="before")
    @classmethod
    def _token_list(cls, value: Any) -> Any:
        """A JSON list, or the comma-separated form that is easier to write in a compose file."""
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)
            return [t.strip() for t in value.split(",") if t.strip()]
        return value


class Settings(FacadeSettings, WorkerSettings):
    """Every role's settings, for `npu-worker up` (Redis, workers and the facade in one command) and
    for backends that build one `Settings()` and pass it to `Dispatcher(settings=...)`."""

    workers: int = Field(1, ge=0, description="Worker processes `npu-worker up` starts.")
    api_workers: int = Field(1, ge=1, description="Facade processes serving the port (`up`, `serve`), for a node "
                             "where one facade process is the limit.")
    redis_maxmemory_mb: int = Field(1024, ge=0, description="Memory bound of the embedded Redis (0: none); when "
                                    "it is reached, writes are refused (503 `redis_full`), nothing is evicted.")


@lru_cache
def get_settings() -> Settings:
    """Every setting, read once from the environment: kept for backends that call it; the project's
    own code builds its role's settings where a process starts and passes them down."""
    return Settings()

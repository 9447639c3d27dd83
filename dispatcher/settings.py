"""The one configuration class: every knob is an `NPU_` environment variable (plus `REDIS_URL`)."""

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
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

WAIT_SLICE_S = 4.0
"""Longest single blocking Redis call; longer waits are made of slices, so a client with redis-py's
default 5 s socket timeout still works and a vanished server is noticed within seconds."""
REDIS_SOCKET_TIMEOUT_S = 10.0
DEAD_WORKER_MEMORY_S = 3600.0
"""How long a dead worker stays in the workers index (with its expired score), so peers can tell "died"
(take over its jobs) from "never one of ours" (a plain `rq worker`: leave its jobs to RQ)."""
REDIS_RETRIES = 2


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NPU_", extra="ignore")

    # --- Redis and keys
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "NPU_REDIS_URL"),
        description="Redis to use; unset means `npu-worker up` starts an embedded one.",
    )
    key_prefix: str = Field("npu", description="First part of every Redis key, so several deployments "
                            "(or test runs) share one Redis without meeting.")

    # --- Where things live
    state_dir: Path = Field(Path.home() / ".local" / "share" / "npu-worker",
                            description="Prepared models, embedded Redis data, generated credentials.")
    models_file: Path | None = Field(None, description="Extra model registry (TOML) merged over the bundled one.")

    # --- Worker
    node_id: str = Field(default_factory=socket.gethostname)
    models: list[str] = Field(default_factory=list, description="Models this worker serves; empty: all.")
    devices: str = Field("NPU,GPU,CPU", description="Device chain tried in order when compiling a model.")
    inference_threads: int = Field(0, ge=0, description="CPU threads per embedding inference; 0: all cores.")
    batch_max: int = Field(32, ge=1, le=1024, description="Most texts in one embedding inference.")
    batch_window_ms: float = Field(6.0, ge=0, description="How long a busy worker waits to fill a batch.")
    bulk_poll_ms: int = Field(200, ge=10, description="How often an idle worker looks at the bulk lane.")
    max_concurrent: int = Field(32, ge=1, description="Jobs a worker takes at once; utilization's denominator.")
    heartbeat_interval_s: float = Field(2.0, gt=0)
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

    # --- Callers
    deadline_s: float = Field(30.0, gt=0, description="Default time budget of an interactive request: the wait "
                              "for a worker to answer (embeddings) or to start (generation), retries and the "
                              "cloud fallback included. Per request: `deadline_s` in the body.")
    generation_idle_s: float = Field(60.0, gt=0, description="Longest silence of a started generation "
                                     "before the caller gives up on it.")
    max_generations: int = Field(8, ge=1, description="Generations a worker runs at once (continuous batching).")
    kv_cache_mb: int | None = Field(None, ge=1, description="KV cache of each generation model, in MB (a model's "
                                    "`kv_cache_mb` in the registry wins). Unset: room for max_generations "
                                    "sequences of the model's max_input_tokens + max_new_tokens, from its shape.")
    reply_ttl_s: int = Field(60, ge=1)
    bulk_result_ttl_s: int = Field(86400, ge=1)
    bulk_job_timeout_s: int = Field(600, ge=1)

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
    max_new_tokens: int = Field(1024, ge=1, description="Largest max_tokens a generation may ask for.")
    default_new_tokens: int = Field(256, ge=1, description="max_tokens of a generation that does not say "
                                    "(at most max_new_tokens).")
    max_request_tokens: int = Field(16384, ge=1, description="Tokens in one embedding request, all texts together "
                                    "(after truncation when asked for); the worker answers 413 above.")

    # --- Cloud fallback (OpenAI-compatible)
    cloud_base_url: str | None = Field(None, description="e.g. https://api.openai.com/v1; unset: no fallback.")
    cloud_api_key: str | None = None
    cloud_timeout_s: float = Field(30.0, gt=0, description="Longest wait for the cloud's answer (within the "
                                   "request's deadline).")
    cloud_share: float = Field(0.25, ge=0, lt=1, description="Share of a request's deadline kept for the cloud "
                               "fallback when one may be asked: the wait for a worker ends that much earlier.")

    # --- Service authentication (docs/architecture.md, Authentication); secrets are SecretStr, so no repr or
    # log shows them
    service_keys: Annotated[dict[str, SecretStr | list[SecretStr]], NoDecode] = Field(
        default_factory=dict, description="Services the facade accepts, JSON: service id -> key, or a list of "
        "keys while one is rotated.")
    service_keys_file: Path | None = Field(None, description="JSON file of the same shape, merged with "
                                           "service_keys (read at start).")
    auth_require_v2: bool = Field(False, description="Refuse v1 (seed) signatures: only v2, which also "
                                  "signs query, nonce and body.")
    auth_window_s: int = Field(300, ge=1, le=3600, description="Largest clock difference a signature may "
                               "have; v2 nonces are remembered this long.")
    admin_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Operator bearer tokens that may also change things "
        "(JSON list or comma-separated).")
    viewer_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Operator bearer tokens that may only read "
        "(JSON list or comma-separated).")
    service_id: str | None = Field(None, description="This process's identity when it signs outbound calls.")
    service_key: SecretStr | None = Field(None, description="Key it signs them with.")

    # --- Fleet
    node_address: str | None = Field(None, description="Base URL of this node's facade, recorded when its "
                                     "workers register the node (for capability probes).")
    detect_timeout_s: float = Field(3.0, gt=0, description="Longest wait for a node's /health and /models.")
    history_interval_s: float = Field(5.0, gt=0, description="Utilization history: one sample per node this often.")
    history_samples: int = Field(720, ge=1, description="Samples kept per node (720 x 5 s: an hour).")

    # --- Facade
    host: str = "127.0.0.1"
    port: int = 8081
    workers: int = Field(1, ge=0, description="Worker processes `npu-worker up` starts.")
    log_level: str = "INFO"
    log_json: bool = Field(False, description="One JSON object per log line (with request ids).")

    @field_validator("service_keys", mode="before")
    @classmethod
    def _key_map(cls, value: Any) -> Any:
        """JSON; empty means none (a compose file's `${NPU_SERVICE_KEYS:-}`)."""
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @field_validator("admin_tokens", "viewer_tokens", mode="before")
    @classmethod
    def _token_list(cls, value: Any) -> Any:
        """A JSON list, or the comma-separated form that is easier to write in a compose file."""
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @property
    def models_dir(self) -> Path:
        return self.state_dir / "models"

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

    def redis(self) -> redis.Redis:
        """A client whose socket timeout outlasts one blocking wait slice (`WAIT_SLICE_S`).

        Few, quick retries: redis-py's default (10 retries, up to 1 s apart) made every request wait
        seconds for its 503 while Redis was gone; callers and the worker loop have their own fallbacks.
        """
        return redis.Redis.from_url(self.redis_address, socket_timeout=REDIS_SOCKET_TIMEOUT_S,
                                    socket_connect_timeout=2, health_check_interval=10,
                                    retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), REDIS_RETRIES))

    def aredis(self) -> aredis.Redis:
        return aredis.Redis.from_url(self.redis_address, socket_timeout=REDIS_SOCKET_TIMEOUT_S,
                                     socket_connect_timeout=2, health_check_interval=10,
                                     retry=AsyncRetry(ExponentialWithJitterBackoff(base=0.01, cap=0.1),
                                                      REDIS_RETRIES))


@lru_cache
def get_settings() -> Settings:
    """Process-wide settings, read once from the environment."""
    return Settings()

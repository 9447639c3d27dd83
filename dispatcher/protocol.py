"""What travels through Redis: key names, job and reply schemas, and the msgpack codec.

Both lanes are defined here once; the worker, the facade and backends import it.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgpack
import numpy as np
from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, TypeAdapter

from .errors import ErrorCode, JobFailedError, NPUError

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""Upper bounds of the batch-size histogram workers keep in their heartbeat counters (`batch_le_<n>`)."""

PROGRESS_S = 0.5
"""How often a worker tells the caller of a generation that sends no text that it still runs (a caller's
idle timer, `NPU_GENERATION_IDLE_S`, must be longer)."""
CANCEL_REASONS = ("client_gone", "caller_cancelled", "deadline")
"""Why a job was cancelled: its HTTP client disconnected, its Python caller cancelled or closed it, or its
budget ended while it ran. Bounded, for metrics labels."""

GROUP = "workers"
"""The one consumer group every worker of a model stream reads in."""

EMBED_TASK = "worker.tasks.embed"
GENERATE_TASK = "worker.tasks.generate"
"""RQ function paths of the bulk lane; strings, so a backend enqueues without importing OpenVINO."""


@dataclass(frozen=True)
class Keys:
    """Every Redis key of one deployment, under its prefix (default `npu`)."""

    prefix: str = "npu"

    def stream(self, model: str, node: str | None = None, tag: str | None = None) -> str:
        """Interactive lane of a model (`npu:stream:<model>`, or `...@<node>` for routed work), and of one
        app's jobs in it (`...~<tag>`, `tag` from `app_tag`: jobs wait per app, so a worker can serve
        apps fairly however long one app's queue is). No tag: jobs of callers that name no app."""
        return f"{self.prefix}:stream:{model}" + (f"@{node}" if node else "") + (f"~{tag}" if tag else "")

    @property
    def apps(self) -> str:
        """Hash: app tag -> its weight, written by facades and dispatchers, read by workers (which
        per-app streams to read, and how much of each)."""
        return f"{self.prefix}:apps"

    def queue(self, model: str, node: str | None = None) -> str:
        """RQ queue name of a model's bulk lane (`npu:<model>`); RQ adds its own `rq:queue:`."""
        return f"{self.prefix}:{model}" + (f"@{node}" if node else "")

    def reply(self, job_id: str) -> str:
        return f"{self.prefix}:reply:{job_id}"

    def cancel(self, worker_id: str) -> str:
        """Set of ids of jobs a worker runs whose callers left (`<job id> <reason>`), read with its outbox."""
        return f"{self.prefix}:cancel:{worker_id}"

    def dead(self, model: str) -> str:
        """Dead-letter stream of interactive jobs that failed too many deliveries."""
        return f"{self.prefix}:dead:{model}"

    def reap_lock(self, execution: str) -> str:
        """Held by the one worker that requeues (or fails) a dead worker's bulk job execution."""
        return f"{self.prefix}:reap:{execution}"

    def live(self, model: str) -> str:
        """Sorted set: worker id -> time its heartbeat expires, per model it serves."""
        return f"{self.prefix}:live:{model}"

    @property
    def workers(self) -> str:
        """Sorted set of all workers: worker id -> heartbeat expiry."""
        return f"{self.prefix}:workers"

    def worker(self, worker_id: str) -> str:
        """A worker's last heartbeat (msgpack of `Heartbeat`), expiring with its TTL."""
        return f"{self.prefix}:worker:{worker_id}"

    def node(self, node_id: str) -> str:
        """A node's registry record (JSON of `dispatcher.nodes.Node`)."""
        return f"{self.prefix}:node:{node_id}"

    @property
    def nodes(self) -> str:
        """Set of registered node ids."""
        return f"{self.prefix}:nodes"

    def history(self, node_id: str) -> str:
        """A node's utilization samples, newest first (`ts:utilization`), an hour of them."""
        return f"{self.prefix}:history:{node_id}"

    @property
    def load_balancing(self) -> str:
        """The load-balancing setting (JSON of `dispatcher.nodes.LoadBalancing`)."""
        return f"{self.prefix}:load-balancing"

    def nonce(self, service_id: str, nonce: str) -> str:
        """A v2 request nonce already used, kept until its timestamp leaves the signature window."""
        return f"{self.prefix}:nonce:{service_id}:{nonce}"

    def file(self, file_id: str) -> str:
        """A Batch API file: a hash of its `meta` (JSON) and its `data` (the bytes), expiring with it."""
        return f"{self.prefix}:file:{file_id}"

    @property
    def files(self) -> str:
        """Sorted set of file ids by creation time, for listing (expired ones are dropped when met)."""
        return f"{self.prefix}:files"

    def batch(self, batch_id: str, part: str = "") -> str:
        """A batch's hash (`obj`, counters, cursor), or one of its parts: `groups`, `results`, `inflight`, `lease`."""
        return f"{self.prefix}:batch:{batch_id}" + (f":{part}" if part else "")

    @property
    def batches(self) -> str:
        """Sorted set of batch ids by creation time, for listing."""
        return f"{self.prefix}:batches"

    @property
    def batches_active(self) -> str:
        """Set of the batches some facade's driver must still step."""
        return f"{self.prefix}:batches:active"


Prompt = str | list[dict[str, str]]
"""What generation takes: one user message, or a chat of {"role", "content"} messages."""


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def app_tag(app: str | None, priority: str = "normal") -> str | None:
    """The per-app part of a stream's name (`Keys.stream`): the app, and `!low` for its low-priority jobs."""
    if not app:
        return "!low" if priority == "low" else None
    return f"{app}!low" if priority == "low" else app


def read_weights(raw: dict[bytes, bytes]) -> dict[str, float]:
    """`Keys.apps` as read (app -> weight); a weight that is not a positive number counts as 1."""
    weights: dict[str, float] = {}
    for name, value in raw.items():
        try:
            weight = float(value)
        except ValueError:
            weight = 1.0
        weights[name.decode()] = weight if 0 < weight < float("inf") else 1.0
    return weights


def new_id() -> str:
    return uuid.uuid4().hex


class Job(BaseModel):
    """An interactive-lane job. A worker drops a job its caller no longer waits for (`budget_ms`)."""

    id: str = Field(default_factory=new_id)
    request_id: str | None = None
    """The facade's X-Request-ID (or the caller's), so worker logs can be matched to requests."""
    kind: Literal["embed", "generate"]
    model: str
    reply: str
    deadline_at: float = Field(validation_alias=AliasChoices("deadline_at", "deadline"), serialization_alias="deadline")
    """When the caller stops waiting, in its wall clock: what workers of the previous release compare with
    (named `deadline` on the wire, as that release reads it)."""
    budget_ms: int | None = None
    """How long the caller waits, from the moment it queued the job. A worker measures it from the stream
    entry's id (Redis's clock when the job was queued), so no two hosts' clocks are ever compared."""
    created: float = Field(default_factory=time.time)
    texts: list[str] | None = None
    truncate: bool = False
    prompt: str | list[dict[str, str]] | None = None
    """A user message, or chat messages (`[{"role": ..., "content": ...}]`) for the model's chat template."""
    max_tokens: int | None = None
    temperature: float | None = None
    stream: bool = False
    """Generation: send text deltas as they come, not only the final text."""
    stop: list[str] | None = None
    """Generation: strings that end it; the text stops before the first one (OpenAI's `stop`)."""
    app: str | None = None
    """The app that asked (its name from configuration, never from a request): the worker shares the
    device among apps by weight. Optional on the wire: a job of an older caller belongs to no app."""
    priority: Literal["normal", "low"] = "normal"
    """"low": served after the app's normal work (its own stream, `app_tag`)."""
    run_ms: int | None = None
    """Generation: the caller's whole budget, from the moment it queued the job (measured as `budget_ms`):
    a generation still running then is cut, its text so far returned with `finish_reason` "length"."""


class _Reply(BaseModel):
    job: str | None = None
    """The job's id, so replies sharing a key (an async dispatcher's inbox) reach their callers."""


class _ServedReply(_Reply):
    """Who served a job and how long it took: carried by every successful reply."""

    ok: Literal[True] = True
    device: str | None = None
    node_id: str | None = None
    worker_id: str | None = None
    queue_ms: float | None = None
    inference_ms: float | None = None
    batch_size: int | None = None


class EmbeddingReply(_ServedReply):
    """The one reply of an embedding job."""

    vectors: bytes
    """float32, row-major, len(texts) x dim."""
    dim: int
    token_counts: list[int] | None = None
    truncated: list[bool] | None = None

    def matrix(self) -> np.ndarray:
        return np.frombuffer(self.vectors, dtype=np.float32).reshape(-1, self.dim)


class StartReply(_ServedReply):
    """A generation was admitted by a worker (the caller's deadline covered the wait for this). Sent again
    every `PROGRESS_S` while a generation that streams no text runs, so its caller's idle timer sees it
    progress (a caller of the previous release reads a repeated start as nothing new)."""

    event: Literal["start"] = "start"


class DeltaReply(_Reply):
    """Text of a streaming generation, as it is produced."""

    ok: Literal[True] = True
    event: Literal["delta"] = "delta"
    delta: str


class DoneReply(_ServedReply):
    """The end of a generation: the whole text and its usage."""

    event: Literal["done"] = "done"
    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    ttft_ms: float | None = None


def _known_code(code: Any) -> Any:
    """A code this release does not know (a newer worker's) still reads as a failed job."""
    return code if code in ErrorCode._value2member_map_ else ErrorCode.JOB_FAILED


class ErrorReply(_Reply):
    """A job the worker could not run (bad input for this model, inference failure, poison job)."""

    model_config = ConfigDict(use_enum_values=True)
    ok: Literal[False] = False
    event: Literal["done"] = "done"
    """Kept on the wire so that a caller of the previous version also reads it as the end of the job."""
    error: Annotated[ErrorCode, BeforeValidator(_known_code)]
    message: str
    status: int = 500
    detail: dict[str, Any] | None = None
    """Machine-readable facts of the error (index, tokens, limit), passed on to the caller."""

    @classmethod
    def of(cls, exc: NPUError) -> ErrorReply:
        return cls(error=exc.code, status=exc.status, message=exc.message, detail=exc.extra or None)

    def exception(self) -> JobFailedError:
        return JobFailedError(self.message, code=self.error, status=self.status, **(self.detail or {}))


def _reply_kind(data: Any) -> str:
    """The variant of a reply, from the fields every version of the wire format has (`ok`, `event`), so
    workers and callers of two releases can meet during a rolling upgrade."""
    fields: dict[str, Any] = data if isinstance(data, dict) else {"ok": data.ok, "event": getattr(data, "event", None)}
    if not fields.get("ok"):
        return "error"
    return str(fields.get("event") or "embedding")


Reply = Annotated[
    Annotated[EmbeddingReply, Tag("embedding")] | Annotated[StartReply, Tag("start")]
    | Annotated[DeltaReply, Tag("delta")] | Annotated[DoneReply, Tag("done")] | Annotated[ErrorReply, Tag("error")],
    Discriminator(_reply_kind),
]
"""What a worker pushes (RPUSH) to a job's reply key, one message per push.

Embeddings: one `EmbeddingReply`. Generation: `StartReply` when the worker admits the job, then
`DeltaReply`s if the job streams, then `DoneReply`. Any job may instead end with an `ErrorReply`.
"""
_REPLY: TypeAdapter[Reply] = TypeAdapter(Reply)


def read_reply(data: dict[str, Any]) -> Reply:
    return _REPLY.validate_python(data)


class KVCache(BaseModel):
    """One generation model's KV cache on a worker, in bytes."""

    configured_bytes: int
    """The most it may take: NPU_KV_CACHE_MB / the registry's kv_cache_mb, or computed from the model's shape
    and the work admitted (the worker admits no generation that would need more)."""
    allocated_bytes: int
    """What the engine holds now: it grows to what the admitted generations needed at once, at most configured."""
    used_bytes: int
    """What running generations occupy."""


class Placement(BaseModel):
    """Where one model really runs on a worker, and why not on the devices before it in the chain."""

    device: str
    """OpenVINO device it compiled on, e.g. `NPU`, `CPU`."""
    engine: str | None = None
    """The engine serving it (`continuous-batching`, `serial`, `text-embedding`, ...)."""
    refused: dict[str, str] = Field(default_factory=dict)
    """Earlier device of the chain -> its one-line refusal, in chain order."""
    max_concurrent: int | None = Field(None, ge=1, le=2**31 - 1)
    """Generation models: the generations its engine really runs at once (1 for the serial engine, an NPU's)."""


class Heartbeat(BaseModel):
    """A worker's self-report, rewritten every heartbeat interval with a short TTL."""

    worker_id: str
    node_id: str
    pid: int
    started: float
    at: float
    models: dict[str, str]
    """model -> device type it runs on (`intel-npu`, `intel-gpu`, `cpu`, ...)."""
    devices: dict[str, str]
    """model -> OpenVINO execution device(s) really used, e.g. `CPU`."""
    max_concurrent: int
    memory_gb: float
    """The memory of the device the models run on where its plugin reports it (NPU, GPU), else the host's."""
    queue_depth: int
    queue_depths: dict[str, dict[str, int]]
    """model -> {"interactive": n, "bulk": n}."""
    running: int
    utilization: float
    """0-100: `utilization(queue_depth, running, max_concurrent)`, as the design card defines it."""
    busy_fraction: float
    """Share of the last interval spent in inference."""
    counters: dict[str, int]
    rss_bytes: int | None = None
    """The worker process's resident memory (absent in heartbeats of older workers)."""
    kv_cache: dict[str, KVCache] | None = None
    """Generation model -> its KV cache on this worker (absent in heartbeats of older workers)."""
    placements: dict[str, Placement] | None = None
    """model -> device, engine and earlier devices' refusals (absent in heartbeats of older workers)."""


def utilization(queued: int, running: int, max_concurrent: int) -> float:
    """0-100: (queued + running) / max_concurrent, capped. The one definition, used for a worker (its
    heartbeat), a node (its workers together, each shared queue counted once) and the fleet (/health)."""
    if max_concurrent <= 0:
        return 0.0
    return round(min(100.0, 100.0 * (queued + running) / max_concurrent), 1)


def memory_gb() -> float:
    """This host's memory, as the seed's `memory_gb` reports it (a worker's heartbeat, the facade's /health)."""
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)


def pack(obj: BaseModel | dict[str, Any]) -> bytes:
    data = obj.model_dump(exclude_none=True, by_alias=True) if isinstance(obj, BaseModel) else obj
    packed: bytes = msgpack.packb(data, use_bin_type=True)
    return packed


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


class MsgpackSerializer:
    """RQ serializer for the bulk lane: `rq info -S dispatcher.protocol.MsgpackSerializer`.

    msgpack rather than pickle so that a queue never executes code smuggled into a payload and
    non-Python backends can read results.
    """

    @staticmethod
    def dumps(obj: Any) -> bytes:
        packed: bytes = msgpack.packb(obj, use_bin_type=True)
        return packed

    @staticmethod
    def loads(data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False)

"""The interactive lane: one Redis Stream per model, read in a consumer group, answered on reply keys.

Embedding jobs are acked after their reply is pushed (a worker that dies mid-batch leaves them
pending, and a peer takes them over once the dead worker's heartbeat expired: `reclaim`); generation
jobs are acked when admitted, since a long generation would otherwise look abandoned to the takeover,
and their caller notices a dead worker by its expired heartbeat and submits the job again.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import redis
from pydantic import ValidationError
from redis.typing import EncodableT, FieldT, StreamIdT

from dispatcher.errors import ErrorCode, NPUError
from dispatcher.logs import request_id
from dispatcher.protocol import (
    CANCEL_REASONS,
    GROUP,
    DeltaReply,
    DoneReply,
    EmbeddingReply,
    ErrorReply,
    Job,
    Keys,
    Reply,
    StartReply,
    pack,
    unpack,
)
from dispatcher.settings import WorkerSettings

from .batch import Embedded, Texts, embed_batch
from .clock import RedisClock, entry_ms
from .deliveries import Deliveries, dead_workers
from .devices import device_type
from .engines import EmbeddingEngine, Engine, GenerationEngine
from .fair import FairQueue, Held, work_of
from .generation import Generated
from .inflight import InFlight
from .served import Served
from .sources import Lane, Sources
from .stats import Stats

log = logging.getLogger(__name__)
Entry = tuple[bytes, dict[bytes, bytes]]
Read = list[tuple[str, list[Entry]]]
CANCEL_READ = 256
"""Most cancellations taken from the cancel set in one step."""
POLL_S = 0.0005
"""Pause between reads while filling a batch: far shorter than the batch window, longer than a round trip."""


class LaneConnection:
    """The lane's reads (XREADGROUP) and reply round trips, on a connection of its own taken from the
    client's pool, sent and read without redis-py's per-command machinery (pool checkout and release,
    response callbacks, telemetry), which cost most of a read's CPU in the worker's main thread
    (docs/benchmarks.md); the worker reads once per lone job and every `POLL_S` while it fills a batch.
    The client's retry policy still applies (a failed attempt drops the connection, the next one connects
    again, through Sentinel when configured), and errors are redis-py's own, so the loop's handling of an
    outage is unchanged.

    The reply typed once, here (RESP2 or RESP3): stream names decoded, entries as (id, fields), fields {}
    for an entry deleted while pending (Redis < 7)."""

    def __init__(self, r: redis.Redis):
        self.redis = r
        self._conn: Any = None

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self.redis.connection_pool.get_connection()
        return self._conn

    def execute(self, commands: list[tuple[EncodableT, ...]]) -> list[Any]:
        """Commands in one round trip, as a non-transactional pipeline runs them (retried whole on a
        connection error); every reply is read before the first error reply is raised."""
        conn = self._connection()

        def run() -> list[Any]:
            _connected(conn)
            conn.send_packed_command(conn.pack_commands(commands))
            replies: list[Any] = []
            error: redis.ResponseError | None = None
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as exc:
                    error = error or exc
                    replies.append(exc)
            if error is not None:
                raise error
            return replies

        return cast(list[Any], conn.retry.call_with_retry(run, lambda _: conn.disconnect()))

    def xreadgroup(self, consumer: str, streams: Mapping[str, str], count: int, block: int | None = None) -> Read:
        args: list[EncodableT] = ["XREADGROUP", "GROUP", GROUP, consumer, "COUNT", count]
        if block is not None:
            args += ["BLOCK", block]
        args += ["STREAMS", *streams, *streams.values()]
        conn = self._connection()

        def read() -> Any:
            _connected(conn)
            conn.send_command(*args)
            return conn.read_response()

        got = conn.retry.call_with_retry(read, lambda _: conn.disconnect())
        # RESP3 (redis-py's default protocol) answers a map of streams, RESP2 a list of pairs.
        streams_read = got.items() if isinstance(got, dict) else got or []
        return [(stream.decode(), [(entry_id, _fields(fields)) for entry_id, fields in entries])
                for stream, entries in streams_read]


def _connected(conn: Any) -> None:
    """Connects a dropped connection through its own `connect()`, as the pool does when it hands one out:
    a Sentinel-managed connection asks the sentinels for the master there. Sending on a dropped connection
    would reconnect to the address it had, a dead master's after a failover."""
    if not conn.is_connected:
        conn.connect()


def _fields(pairs: list[bytes] | None) -> dict[bytes, bytes]:
    it = iter(pairs or ())
    return dict(zip(it, it, strict=True))


@dataclass(frozen=True)
class _Plan:
    """The streams read for the models served now, from the live `Served` and `Sources`."""

    lanes: dict[str, Lane]
    """stream -> whose jobs it holds (model, app, priority)."""
    models: dict[str, str]
    """stream -> model."""
    embedding: list[str]
    """Embedding models' streams."""
    generation: list[str]
    """Generation models' streams."""


class InteractiveLane:
    def __init__(self, settings: WorkerSettings, r: redis.Redis, worker_id: str, served: Served, stats: Stats,
                 clock: RedisClock, sources: Sources, in_flight: InFlight):
        self.settings, self.redis, self.worker_id, self.stats, self.clock = settings, r, worker_id, stats, clock
        self.served, self.sources, self.in_flight = served, sources, in_flight
        self.keys = Keys(settings.key_prefix)
        self.conn = LaneConnection(r)
        self.deliveries = Deliveries(settings.max_deliveries)
        self._recent: dict[str, deque[int]] = {}
        self._plan: tuple[Mapping[str, Engine], bool, dict[str, float], _Plan] | None = None
        self._grouped: set[str] = set()
        self.held: dict[str, FairQueue] = {}
        """Per model, jobs read and not yet served (`worker/fair.py`)."""
        self.recovering = False
        """Set after a Redis failure: this worker's own unacked entries (their replies or acks may not
        have reached Redis) are read again before new ones."""

    @property
    def plan(self) -> _Plan:
        """Worked out again only when the served models, the node's role or the apps changed."""
        engines, shared, apps = self.served.engines, self.sources.shared, self.sources.apps
        if self._plan is None or self._plan[0] is not engines or self._plan[1] != shared or self._plan[2] is not apps:
            lanes = {s: lane for m in engines for s, lane in self.sources.lanes(m).items()}
            self._ensure_groups([s for s in lanes if s not in self._grouped])
            self._plan = (engines, shared, apps, _Plan(
                lanes, {s: lane.model for s, lane in lanes.items()},
                [s for s, lane in lanes.items() if lane.model in self.served.embedding],
                [s for s, lane in lanes.items() if lane.model in self.served.generation]))
        return self._plan[3]

    def _ensure_groups(self, streams: list[str]) -> None:
        """A new app's streams get the consumer group (from id 0: jobs queued before are served)."""
        for stream in streams:
            try:
                self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._grouped.add(stream)

    def queue(self, model: str) -> FairQueue:
        queue = self.held.get(model)
        if queue is None:
            queue = self.held[model] = FairQueue(self.sources.weight)
        return queue

    @property
    def holding(self) -> bool:
        return any(self.held.values())

    # --- reading

    def _wanted(self, streams: list[str], cap: int) -> dict[str, str]:
        """The streams worth reading: those of apps holding less than `cap` of work here."""
        lanes = self.plan.lanes
        return {s: ">" for s in streams if self.queue(lanes[s].model).work(lanes[s].app) < cap}

    def read(self, block: bool) -> Read:
        """New entries, every app's streams in one read. Generation streams only as many as the engines
        have free slots, so no prompt waits in this worker while a peer is idle. Never blocks while jobs
        already read wait here."""
        cap, me, plan = self.settings.batch_max, self.worker_id, self.plan
        gen_slots = min((self.served.generation[plan.models[s]].free_slots for s in plan.generation), default=0)
        embedding = self._wanted(plan.embedding, cap)
        generation = self._wanted(plan.generation, gen_slots) if gen_slots else {}
        streams = {**embedding, **generation}
        if not streams:
            return []
        if self.recovering:
            for queue in self.held.values():
                queue.clear()  # read again below, with the rest of this worker's unacked entries
            own = [(s, e) for s, e in self.conn.xreadgroup(me, dict.fromkeys(plan.models, "0"), cap) if e]
            if own:
                self.stats.add("redelivered_own", sum(len(e) for _, e in own))
                return own
            self.recovering = False
        if not block or self.holding:
            got: Read = []
            if embedding:
                got += self.conn.xreadgroup(me, embedding, cap)
            if generation:
                got += self.conn.xreadgroup(me, generation, gen_slots)
            return got
        # COUNT applies to each stream read: with generation streams in the read, no more than their free
        # slots, and an embedding stream that filled that count is read again for the rest of a batch. An
        # embeddings-only worker takes a whole batch in this one read (a lone job: one round trip, not two).
        count = min(cap, gen_slots) if generation else cap
        got = self.conn.xreadgroup(me, streams, count, block=self.settings.bulk_poll_ms)
        for stream, entries in got:
            if stream in embedding and len(entries) == count < cap:
                entries += next((e for _, e in self.conn.xreadgroup(me, {stream: ">"}, cap - count)), [])
        return got

    def _hold(self, stream: str, entries: list[Entry], drop: dict[str, list[bytes]]) -> None:
        """Decode `entries` into their model's fair queue; ids to ack without running go to `drop`."""
        lane = self.plan.lanes[stream]
        jobs, dropped = self._decode(stream, entries)
        if dropped:
            drop.setdefault(stream, []).extend(dropped)
        queue = self.queue(lane.model)
        for entry_id, job in jobs:
            queue.add(lane.app, lane.low, Held(stream, entry_id, job, work_of(job)))

    def _fill(self, model: str, batch: list[Held], drop: dict[str, list[bytes]]) -> None:
        """Under load, wait a few ms for more jobs so one inference serves them all; a lone job never waits.

        The target, in texts, is the largest of the recent batches: with 8 callers a batch of 8 goes at
        once, with 32 the worker waits for 32 (up to `batch_window_ms`), and one job of 32 texts goes at
        once. Polling, not XREADGROUP BLOCK: Redis checks blocked clients' timeouts only on its cron tick
        (hz 10: ~100 ms), far coarser than the window. Every app's streams are polled in one read, and
        what arrives joins the fair order.
        """
        cap = self.settings.batch_max
        recent = self._recent.setdefault(model, deque(maxlen=8))
        target = min(cap, max(recent, default=1))
        texts = sum(held.work for held in batch)
        window = self.settings.batch_window_ms / 1000
        end = time.monotonic() + window
        queue = self.queue(model)
        streams = [s for s in self.plan.embedding if self.plan.models[s] == model]
        while window > 0 and 0 < texts < target and time.monotonic() < end:
            wanted = self._wanted(streams, cap)
            more = self.conn.xreadgroup(self.worker_id, wanted, target - texts) if wanted else []
            for stream, entries in more:
                self._hold(stream, entries, drop)
            added = queue.take(cap - texts)
            if not added:
                time.sleep(POLL_S)
                continue
            batch += added
            texts += sum(held.work for held in added)
        if texts:
            recent.append(texts)

    def _decode(self, stream: str, entries: list[Entry]) -> tuple[list[tuple[bytes, Job]], list[bytes]]:
        """Jobs still worth running, and ids to ack without running (late or malformed)."""
        now = time.time()
        jobs: list[tuple[bytes, Job]] = []
        drop: list[bytes] = []
        redis_now: float | None = None
        for entry_id, fields in entries:
            if not fields:  # deleted while pending (Redis < 7 still hands such entries out)
                drop.append(entry_id)
                continue
            try:
                job = Job.model_validate(unpack(fields[b"j"]))
            except Exception as exc:
                # what is wrong, not what it holds: a validation error's text quotes the job's input
                what = ("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['type']}" for e in exc.errors()[:5])
                        if isinstance(exc, ValidationError) else type(exc).__name__)
                log.error("malformed job %s on %s dead-lettered: %s", entry_id, stream, what)
                self.redis.xadd(self.keys.dead(self.plan.models[stream]), _dead_entry(fields, b"malformed"),
                                maxlen=self.settings.dead_letter_max, approximate=True)
                self.stats.add("malformed")
                drop.append(entry_id)
                continue
            if job.budget_ms is not None:  # on Redis's clock (see worker/clock.py)
                redis_now = self.clock.now_ms() if redis_now is None else redis_now
                late_ms = redis_now - entry_ms(entry_id) - job.budget_ms
            else:  # a caller of the previous release: its wall clock
                late_ms = (now - job.deadline_at) * 1000
            if late_ms > 0:
                # The caller has given up (and may have a cloud answer): running it would be wasted work.
                self.stats.add("dropped_late")
                _log_job(job, logging.INFO, "dropped job %s: its caller stopped waiting %.0f ms ago", job.id,
                         late_ms)
                drop.append(entry_id)
                continue
            jobs.append((entry_id, job))
        return jobs, drop

    # --- serving

    def serve(self, read: Read) -> None:
        """What was read joins the held jobs; then each model with held jobs gets one batch (embeddings)
        or as many admissions as its engine has free slots (generation), in fair order."""
        drop: dict[str, list[bytes]] = {}
        for stream, entries in read:
            self._hold(stream, entries, drop)
        for model, queue in list(self.held.items()):
            embedding = self.served.embedding.get(model)
            generation = self.served.generation.get(model)
            if embedding is not None:
                batch = queue.take(self.settings.batch_max)
                if batch:
                    self._fill(model, batch, drop)
                self.finish(_acks(batch, drop, model, self.plan.models),
                            self._embed(embedding, [held.job for held in batch]))
            elif generation is not None:
                batch = queue.take(sys.maxsize, generation.free_slots) if generation.free_slots else []
                self.finish(_acks(batch, drop, model, self.plan.models),
                            [self._admit(generation, held.job, held.entry_id) for held in batch])
            else:  # unloaded since read: left pending, taken over or read again
                queue.clear()
        for stream, ids in drop.items():  # models no longer served
            if ids:
                self.finish({stream: ids}, [])

    def _base(self, engine: Engine, job: Job, started: float) -> dict[str, Any]:
        return {"device": device_type(engine.device), "node_id": self.settings.node_id,
                "worker_id": self.worker_id, "queue_ms": max(0.0, (started - job.created) * 1000)}

    def _embed(self, engine: EmbeddingEngine, jobs: list[Job]) -> list[tuple[Job, Reply]]:
        if not jobs:
            return []
        batch = embed_batch(engine, [Texts(job.texts or [], job.truncate) for job in jobs], self.settings.batch_max,
                            self.settings.max_request_tokens, self.stats)
        replies: list[tuple[Job, Reply]] = []
        for job, result in zip(jobs, batch.results, strict=True):
            if not isinstance(result, Embedded):
                replies.append((job, error_reply(result) if isinstance(result, NPUError) else failure_reply(result)))
                continue
            _log_job(job, logging.DEBUG, "embedded job %s: %d texts in a batch of %d, %.1f ms", job.id,
                     len(result.token_counts), batch.texts, batch.inference_ms)
            replies.append((job, EmbeddingReply(**self._base(engine, job, batch.started),
                                                vectors=result.vectors.tobytes(), dim=result.vectors.shape[1],
                                                token_counts=result.token_counts, truncated=result.truncated,
                                                inference_ms=batch.inference_ms, batch_size=batch.texts)))
        self.stats.add("jobs", sum(isinstance(result, Embedded) for result in batch.results))
        for job, result in zip(jobs, batch.results, strict=True):
            if isinstance(result, Embedded):
                self.stats.add(f"app:{job.app or '-'}:work", len(result.token_counts))
        return replies

    def _admit(self, engine: GenerationEngine, job: Job, entry_id: bytes) -> tuple[Job, Reply]:
        """Start a generation in the engine; its tokens and end arrive through the outbox. A caller's whole
        budget (`run_ms`, from the entry's id on Redis's clock) becomes a local monotonic deadline."""
        started = time.time()
        try:
            engine.check(job.prompt or "")
            engine.submit(job.prompt or "", job.max_tokens, job.temperature, stop=job.stop,
                          on_done=partial(self._generated, engine, job, started),
                          on_delta=partial(self._delta, job) if job.stream else None, job_id=job.id,
                          deadline=job.deadline_at)
            now = time.monotonic()
            ends_at = (None if job.run_ms is None
                       else now + (entry_ms(entry_id) + job.run_ms - self.clock.now_ms()) / 1000)
            self.in_flight.generating(job, partial(engine.cancel, job.id), ends_at, now)
        except NPUError as exc:
            return job, error_reply(exc)
        except Exception as exc:
            _log_job(job, logging.ERROR, "could not start generation %s", job.id, exc_info=True)
            return job, failure_reply(exc)
        self.stats.peak("peak_generations", engine.running)
        return job, StartReply(**self._base(engine, job, started))

    def _delta(self, job: Job, text: str) -> None:
        self.in_flight.reply(job, DeltaReply(delta=text))

    def _generated(self, engine: GenerationEngine, job: Job, started: float, result: Generated | Exception) -> None:
        reply: Reply
        if isinstance(result, Exception):
            reply = failure_reply(result)
        else:
            if result.finish_reason != "cancelled":
                self.stats.add("jobs")
            self.stats.count_model(engine.spec.name, 1, result.completion_tokens, result.duration_ms / 1000)
            self.stats.add(f"app:{job.app or '-'}:work", result.completion_tokens)
            reply = DoneReply(**self._base(engine, job, started), text=result.text,
                              prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                              finish_reason=result.finish_reason, ttft_ms=result.ttft_ms,
                              inference_ms=result.duration_ms)
        self.in_flight.reply(job, reply)

    def flush(self) -> None:
        """Push the generations' messages of this step in one round trip, and in the same round trip take
        this worker's cancel set (callers who left): those generations stop at the next step. A generation
        whose caller's budget ended is stopped here without asking Redis."""
        now = time.monotonic()
        for job_id in self.in_flight.overdue(now):
            self.cancel(job_id, "deadline")
        replies = self.in_flight.take_replies(now)
        watch = self.in_flight.has_generations
        if not replies and not watch:
            return
        pipe = self.redis.pipeline(transaction=False)
        for command in self._push(replies):
            pipe.execute_command(*command)
        if watch:
            pipe.spop(self.keys.cancel(self.worker_id), CANCEL_READ)
        got = pipe.execute()
        for member in (got[-1] or []) if watch else []:
            job_id, _, reason = member.decode().partition(" ")
            self.cancel(job_id, reason if reason in CANCEL_REASONS else "caller_cancelled")

    def cancel(self, job_id: str, reason: str) -> None:
        """Stop a generation of either lane running here, counted (`cancelled_<reason>`) and logged."""
        if self.in_flight.cancel(job_id, reason):
            self.stats.add(f"cancelled_{reason}")
            log.info("cancelled generation %s (%s)", job_id, reason)

    def _push(self, replies: list[tuple[Job, Reply]]) -> list[tuple[EncodableT, ...]]:
        """Each reply stamped with its job's id, and one RPUSH per reply key: the replies of a whole batch
        often share one (an async dispatcher's inbox)."""
        by_key: dict[str, list[bytes]] = {}
        for job, reply in replies:
            reply.job = job.id
            by_key.setdefault(job.reply, []).append(pack(reply))
        commands: list[tuple[EncodableT, ...]] = []
        for key, packed in by_key.items():
            commands += [("RPUSH", key, *packed), ("EXPIRE", key, self.settings.reply_ttl_s)]
        return commands

    def finish(self, acks: Mapping[str, list[bytes]], replies: list[tuple[Job, Reply]]) -> None:
        """Replies and acks in one round trip (on the lane's own connection, as its reads). Entries are
        deleted once acked, so XLEN is the backlog."""
        commands = self._push(replies)
        for stream, entry_ids in acks.items():
            if entry_ids:
                commands += [("XACK", stream, GROUP, *entry_ids), ("XDEL", stream, *entry_ids)]
        if commands:
            self.conn.execute(commands)

    # --- dead consumers

    def reclaim(self) -> bool:
        """Take over entries pending on workers whose heartbeat expired (they died mid-batch).

        Only dead consumers' entries are claimed, never a live worker's: XAUTOCLAIM cannot tell a dead
        consumer from one in a long batch, so a short idle time would have it steal live work, and a long
        one would leave a dead worker's jobs waiting. An entry already handed `max_deliveries` times to
        workers that died with it is a poison job: it goes to the dead-letter stream and its caller (if
        still waiting) gets an error, instead of killing worker after worker. Dead consumers with nothing
        pending are removed from the group, so restarts do not grow it.
        """
        r, s, me = self.redis, self.settings, self.worker_id
        pipe = r.pipeline(transaction=False)
        streams = list(self.plan.models)
        for stream in streams:
            pipe.xinfo_consumers(stream, GROUP)
        consumers = {stream: [(c["name"].decode(), c["pending"], c["idle"]) for c in info]
                     for stream, info in zip(streams, pipe.execute(), strict=True)}
        names = sorted({name for found in consumers.values() for name, _, _ in found if name != me})
        dead = dead_workers(r, self.keys, names)
        did = False
        for stream, found in consumers.items():
            for name, pending, idle in found:
                if name not in dead:
                    continue
                if pending == 0:
                    if idle >= s.claim_idle_ms:
                        r.xgroup_delconsumer(stream, GROUP, name)
                    continue
                did |= self._take_over(stream, name)
        return did

    def _take_over(self, stream: str, consumer: str) -> bool:
        s, model = self.settings, self.plan.models[stream]
        pending = self._pending(stream, consumer, s.batch_max, idle=s.claim_idle_ms)
        if not pending:
            return False
        # Every delivery of an entry pending on a dead consumer was lost with a worker.
        poison = [entry_id for entry_id, times in pending if self.deliveries.exhausted(times)]
        retry = [entry_id for entry_id, times in pending if not self.deliveries.exhausted(times)]
        if poison:
            self._dead_letter(model, stream, poison)
        if retry:
            claimed = self._claim(stream, retry)
            if claimed:
                log.warning("took over %d job(s) of dead worker %s on %s", len(claimed), consumer, stream)
                self.stats.add("reclaimed", len(claimed))
                self.serve([(stream, claimed)])
        return True

    def _claim(self, stream: str, ids: list[bytes]) -> list[Entry]:
        """Claim `ids` for this worker; XCLAIM's min-idle-time makes a race between two peers harmless (the
        loser claims nothing). Entries deleted while pending are claimed too but come back without an id
        (Redis 6.2) or not at all (7): they are acked here, as there is nothing to run."""
        me = self.worker_id
        claimed = cast(list[tuple[bytes | None, dict[bytes, bytes] | None]],
                       self.redis.xclaim(stream, GROUP, me, self.settings.claim_idle_ms, list[StreamIdT](ids)))
        entries = [(entry_id, fields) for entry_id, fields in claimed if entry_id is not None and fields]
        if len(entries) < len(claimed):
            kept = {entry_id for entry_id, _ in entries}
            mine = self._pending(stream, me, len(ids) + self.settings.batch_max)
            vanished = [entry_id for entry_id, _ in mine if entry_id in set(ids) - kept]
            if vanished:
                self.redis.xack(stream, GROUP, *vanished)
        return entries

    def _pending(self, stream: str, consumer: str, count: int, idle: int | None = None) -> list[tuple[bytes, int]]:
        """A consumer's pending entries: (id, times delivered), XPENDING's reply typed once, here."""
        found = cast(list[dict[str, Any]], self.redis.xpending_range(stream, GROUP, "-", "+", count,
                                                                      consumername=consumer, idle=idle))
        return [(p["message_id"], int(p["times_delivered"])) for p in found]

    def _dead_letter(self, model: str, stream: str, ids: list[bytes]) -> None:
        s = self.settings
        entries = self._claim(stream, ids)
        replies: list[tuple[Job, Reply]] = []
        for _, fields in entries:
            self.redis.xadd(self.keys.dead(model), _dead_entry(fields, b"too many deliveries"),
                            maxlen=s.dead_letter_max, approximate=True)
            self.stats.add("dead_lettered")
            log.error("dead-lettered a job on %s: its workers died %d times", stream, s.max_deliveries)
            try:
                job = Job.model_validate(unpack(fields[b"j"]))
            except Exception:
                continue
            replies.append((job, ErrorReply(error=ErrorCode.JOB_FAILED,
                                            message=f"the job was handed to {s.max_deliveries} workers that "
                                                    "died running it; kept in the dead-letter stream")))
        self.finish({stream: [entry_id for entry_id, _ in entries]}, replies)


def _acks(batch: list[Held], drop: dict[str, list[bytes]], model: str,
          models: Mapping[str, str]) -> dict[str, list[bytes]]:
    """The ids to ack with `model`'s batch: its jobs', and the dropped ones of its streams (taken from `drop`)."""
    acks: dict[str, list[bytes]] = {}
    for stream in [s for s in drop if models.get(s) == model]:
        acks[stream] = drop.pop(stream)
    for held in batch:
        acks.setdefault(held.stream, []).append(held.entry_id)
    return acks


def _log_job(job: Job, level: int, message: str, *args: Any, exc_info: bool = False) -> None:
    """Log under the job's request id, so a request can be followed from the facade's logs to here."""
    if not log.isEnabledFor(level):
        return
    token = request_id.set(job.request_id or job.id)
    try:
        log.log(level, message, *args, exc_info=exc_info)
    finally:
        request_id.reset(token)


def _dead_entry(fields: dict[bytes, bytes], reason: bytes) -> dict[FieldT, EncodableT]:
    """A job's stream entry as the dead-letter stream keeps it: its fields, and why."""
    entry: dict[FieldT, EncodableT] = {name: value for name, value in fields.items()}
    entry[b"reason"] = reason
    return entry


def error_reply(exc: NPUError) -> ErrorReply:
    return ErrorReply.of(exc)


def failure_reply(exc: Exception) -> ErrorReply:
    return ErrorReply(error=ErrorCode.INFERENCE_FAILED, message=f"inference failed: {exc}")

"""The bulk lane: RQ queues per model, served by the same process when the interactive lane is idle.

Jobs are plain RQ jobs (so backends use `Queue.enqueue`, `Job.latest_result`, callbacks, Retry and
operators `rq info`), but several jobs' texts go through one inference. RQ's bookkeeping is done by
an `rq.SimpleWorker` that never runs its own loop: it registers this process with RQ, moves each job
through the started/finished/failed registries and stores results, exactly as `rq worker` would.
Only RQ's public worker methods are used (`prepare_execution`, `handle_job_success`, `handle_job_failure`,
...), the ones `rq worker` itself calls around `Job.perform()`. Jobs a dead worker had started are
requeued by its peers (`worker/reaper.py`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any

import redis
from rq import Queue, SimpleWorker
from rq.callbacks import execute_failure_callback, execute_success_callback
from rq.job import Job as RQJob
from rq.job import JobStatus
from rq.job_lifecycle import format_exc_info
from rq.utils import now

from dispatcher.errors import InvalidInputError
from dispatcher.protocol import EMBED_TASK, GENERATE_TASK, MsgpackSerializer
from dispatcher.settings import WorkerSettings

from .batch import Embedded, Texts, embed_batch
from .engines import EmbeddingEngine, Engine, GenerationEngine
from .generation import Generated
from .inflight import InFlight
from .served import Served
from .sources import Sources
from .stats import Stats
from .tasks import embed_result, generate_result

if TYPE_CHECKING:
    from rq.executions import Execution

ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
Taken = list[tuple[RQJob, "Execution"]]

log = logging.getLogger(__name__)


class BulkLane:
    def __init__(self, settings: WorkerSettings, r: redis.Redis, worker_id: str, served: Served, stats: Stats,
                 sources: Sources, in_flight: InFlight):
        self.settings, self.redis, self.stats = settings, r, stats
        self.served, self.sources, self.in_flight = served, sources, in_flight
        self.worker_id = worker_id
        self._rq: SimpleWorker | None = None
        self._registered = False
        self._seen: tuple[Mapping[str, Engine], bool] | None = None
        self._queues: dict[str, Queue] = {}
        self._models: dict[str, str] = {}

    @property
    def rq(self) -> SimpleWorker:
        """The RQ worker doing RQ's bookkeeping; made at first use (making one talks to Redis)."""
        if self._rq is None:
            # log_job_description=False: rq would log each job's arguments (another client's texts) at INFO.
            self._rq = SimpleWorker(list(self._queues.values()), connection=self.redis, name=self.worker_id,
                                    serializer=MsgpackSerializer, log_job_description=False)
        return self._rq

    @property
    def queues(self) -> dict[str, Queue]:
        """Queue name -> queue: each served model's routed (this node's) queue, then its shared one. When
        the served models or the node's role changed, RQ is told the new list (`rq info` shows it)."""
        engines, shared = self.served.engines, self.sources.shared
        if self._seen is None or self._seen[0] is not engines or self._seen[1] != shared:
            names = {name: m for m in engines for name in self.sources.queues(m)}
            queues = {name: self._queues.get(name) or Queue(name, connection=self.redis, serializer=MsgpackSerializer)
                      for name in names}
            moved = self._registered and list(queues) != list(self._queues)
            if moved:
                self.rq.register_death()  # under the old queues: RQ takes it off their worker lists
            self.rq.queues = list(queues.values())
            if moved:
                self.rq.register_birth()  # a Redis failure before this: the next look does both again
            self._queues, self._models, self._seen = queues, names, (engines, shared)
        return self._queues

    def heartbeat(self) -> None:
        """RQ's own worker heartbeat (called from the heartbeat thread: it only writes RQ's worker key)."""
        if self._registered and self._rq is not None:
            self._rq.heartbeat()

    def register(self) -> None:
        """Announce this worker to RQ with the queues it serves (again after Redis lost its data)."""
        self.rq.queues = list(self.queues.values())
        try:
            self.rq.register_birth()
        except ValueError:  # RQ still knows this worker alive: only some of our keys were lost
            self.rq.heartbeat()
        self._registered = True

    def close(self) -> None:
        if self._rq is None:
            return
        try:
            self._rq.register_death()
        except Exception as exc:  # Redis may be the reason we are stopping
            log.warning("could not deregister from rq: %s", exc)

    def serve_once(self) -> bool:
        """Run one batch from the first model with bulk work; False when every bulk queue is empty."""
        for name, queue in self.queues.items():
            model = self._models[name]
            engine = self.served[model]
            taken: Taken = []
            try:
                if engine.task == "embedding":
                    self._take(queue, self.settings.batch_max, taken)
                    if taken:
                        self._embed(queue, engine, self._ours(model, queue, EMBED_TASK, taken))
                else:
                    self._take(queue, engine.free_slots, taken)
                    if taken:
                        self._generate(queue, engine, self._ours(model, queue, GENERATE_TASK, taken))
            except BaseException:
                self.in_flight.bulk_interrupted()
                raise
            if taken:
                self.rq.set_state("idle")
                return True
        return False

    def _take(self, queue: Queue, room: int, taken: Taken) -> None:
        """Dequeue jobs into `taken` while there is `room`: texts for an embedding model, generations free
        for a generation model (one job of another function takes one)."""
        while room > 0:
            found = Queue.dequeue_any([queue], None, connection=self.redis, serializer=MsgpackSerializer)
            if found is None:
                break
            job = found[0]
            self.in_flight.bulk_taken(job.id)
            execution = self.rq.prepare_execution(job)
            self.rq.prepare_job_execution(job, remove_from_intermediate_queue=True)
            job.started_at = now()
            taken.append((job, execution))
            room -= len(job.kwargs.get("texts") or [None]) if job.func_name == EMBED_TASK else 1

    def _ours(self, model: str, queue: Queue, function: str, taken: Taken) -> Taken:
        """The jobs of the model's own function; anything else on the queue runs as `rq worker` would run
        it, and a job naming another model fails."""
        ours: Taken = []
        for job, execution in taken:
            if job.func_name != function:
                try:
                    self.rq.perform_job(job, queue, execution)
                finally:
                    self.in_flight.bulk_ended(job.id)
            elif job.kwargs.get("model", model) != model:
                self._fail(job, queue, execution,
                           ValueError(f"job for {job.kwargs.get('model')!r} is on the {model!r} queue"))
            else:
                ours.append((job, execution))
        return ours

    def _embed(self, queue: Queue, engine: EmbeddingEngine, jobs: Taken) -> None:
        """One batch (`worker.batch`) for all the jobs; each gets its own RQ result or failure."""
        runnable: list[tuple[RQJob, Execution, Texts]] = []
        for job, execution in jobs:
            texts = job.kwargs.get("texts")
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                self._fail(job, queue, execution, InvalidInputError("texts must be a list of strings"))
                continue
            runnable.append((job, execution, Texts(texts, bool(job.kwargs.get("truncate")))))
        if not runnable:
            return
        batch = embed_batch(engine, [texts for _, _, texts in runnable], self.settings.batch_max,
                            self.settings.max_request_tokens, self.stats)
        for (job, execution, _), result in zip(runnable, batch.results, strict=True):
            if isinstance(result, Embedded):
                self._succeed(job, queue, execution, embed_result(engine, result.vectors, result.token_counts,
                                                                  result.truncated, self.settings.node_id))
            else:
                self._fail(job, queue, execution, result)

    def _generate(self, queue: Queue, engine: GenerationEngine, jobs: Taken) -> None:
        for job, execution in jobs:
            try:
                self._start_generation(queue, engine, job, execution)
            except Exception as exc:  # a job that cannot run fails visibly; the others go on
                self._fail(job, queue, execution, exc)

    def _start_generation(self, queue: Queue, engine: GenerationEngine, job: RQJob, execution: Execution) -> None:
        """Join the running batch; RQ learns the outcome when the engine finishes it."""
        kwargs = job.kwargs
        engine.check(kwargs["prompt"])

        def done(result: Generated | Exception) -> None:
            if isinstance(result, Exception):
                self._fail(job, queue, execution, result)
            elif result.finish_reason == "cancelled":  # by its submitter (`cancel_bulk`): RQ's canceled
                self._cancelled(job, queue)
            else:
                self._succeed(job, queue, execution, generate_result(engine, result, self.settings.node_id))

        engine.submit(kwargs["prompt"], kwargs.get("max_tokens"), kwargs.get("temperature"), on_done=done,
                      job_id=job.id)
        self.in_flight.bulk_generating(job.id, partial(engine.cancel, job.id))

    def _cancelled(self, job: RQJob, queue: Queue) -> None:
        self.in_flight.bulk_ended(job.id)
        self.rq.handle_execution_ended(job, queue, job.failure_callback_timeout)
        if not job.is_canceled:
            job.cancel()

    def _succeed(self, job: RQJob, queue: Queue, execution: Execution, result: dict[str, Any]) -> None:
        """What `rq worker` does after `Job.perform()` returned: success callback, result, registries."""
        self.in_flight.bulk_ended(job.id)  # first: if Redis fails below, the reaper finds the job orphaned
        self.rq.handle_execution_ended(job, queue, job.success_callback_timeout)
        # Not public: RQ has no setter for a return value computed outside `Job.perform()` (here, one
        # inference for many jobs), and `handle_job_success` stores `job._result` as the job's Result.
        job._result = result
        try:
            execute_success_callback(job, self.rq.death_penalty_class, result)
        except Exception:  # as in `rq worker`: a raising success callback fails the job
            self._record_failure(job, queue, execution, sys.exc_info())
            return
        self.stats.add("bulk_jobs")
        self.rq.handle_job_success(job, queue, queue.started_job_registry, execution)
        job.send_webhooks(JobStatus.FINISHED)

    def _fail(self, job: RQJob, queue: Queue, execution: Execution, exc: BaseException) -> None:
        """What `rq worker` does after `Job.perform()` raised: failure callback, handlers, Retry or failed registry."""
        self.in_flight.bulk_ended(job.id)
        self.rq.handle_execution_ended(job, queue, job.failure_callback_timeout)
        exc_info: ExcInfo = (type(exc), exc, exc.__traceback__)
        try:
            execute_failure_callback(job, self.rq.death_penalty_class, *exc_info)
        except Exception:  # the callback's error replaces the job's, as in `rq worker`
            exc_info = sys.exc_info()
        self._record_failure(job, queue, execution, exc_info)

    def _record_failure(self, job: RQJob, queue: Queue, execution: Execution,
                        exc_info: ExcInfo) -> None:
        self.stats.add("bulk_failed")
        self.rq.handle_exception(job, *exc_info)
        self.rq.handle_job_failure(job, queue, queue.started_job_registry, exc_string=format_exc_info(exc_info),
                                   execution=execution)

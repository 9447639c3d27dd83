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
from types import TracebackType
from typing import TYPE_CHECKING, Any

import redis
from rq import Queue, SimpleWorker
from rq.callbacks import execute_failure_callback, execute_success_callback
from rq.job import Job as RQJob
from rq.job import JobStatus
from rq.job_lifecycle import format_exc_info
from rq.utils import now

from dispatcher.protocol import EMBED_TASK, GENERATE_TASK, Keys, MsgpackSerializer
from dispatcher.settings import Settings

from . import inference
from .generation import Generated, Generator
from .pipelines import Embedder
from .routes import Routes
from .served import Served
from .stats import Stats
from .tasks import embed_result, generate_result

if TYPE_CHECKING:
    from rq.executions import Execution

ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]

log = logging.getLogger(__name__)


class BulkLane:
    def __init__(self, settings: Settings, r: redis.Redis, worker_id: str, served: Served, stats: Stats,
                 routes: Routes | None = None):
        self.settings, self.redis, self.stats = settings, r, stats
        self.pipelines = served.pipelines
        """The models served when the lane was made (a model change makes a new lane)."""
        routes = routes or Routes(Keys(settings.key_prefix), settings.node_id)
        self.queues = {name: Queue(name, connection=r, serializer=MsgpackSerializer)
                       for m in self.pipelines for name in routes.queues(m)}
        """Queue name -> queue: each model's routed (this node's) queue, then its shared one."""
        self.models = {name: m for m in self.pipelines for name in routes.queues(m)}
        # log_job_description=False: rq would log each job's arguments (another client's texts) at INFO.
        self.rq = SimpleWorker(list(self.queues.values()), connection=r, name=worker_id,
                               serializer=MsgpackSerializer, log_job_description=False)
        self.rq.register_birth()
        self.inflight: set[str] = set()
        """Ids of the jobs this process is running: a job started under its name but not here was
        orphaned by a Redis failure, and the reaper requeues it like a dead worker's."""
        self.generating: set[str] = set()
        """Ids of bulk generations in the engine: they outlive the step that started them."""

    def heartbeat(self) -> None:
        self.rq.heartbeat()

    def register(self) -> None:
        """Announce this worker to RQ again, after Redis lost its data (`rq info` lists it again)."""
        try:
            self.rq.register_birth()
        except ValueError:  # RQ still knows this worker alive: only some of our keys were lost
            self.rq.heartbeat()

    def close(self) -> None:
        try:
            self.rq.register_death()
        except Exception as exc:  # Redis may be the reason we are stopping
            log.warning("could not deregister from rq: %s", exc)

    def serve_once(self) -> bool:
        """Run one batch from the first model with bulk work; False when every bulk queue is empty."""
        for name, queue in self.queues.items():
            model = self.models[name]
            pipeline = self.pipelines[model]
            taken: list[tuple[RQJob, Execution]] = []
            try:
                self._take(queue, pipeline, taken)
                if taken:
                    self._run(model, queue, pipeline, taken)
            except BaseException:
                # Redis failed mid-batch: only generations in the engine still run here (embedding batches
                # never outlive this call), so the rest, even a job caught half-dequeued, is orphaned.
                self.inflight &= self.generating
                raise
            if taken:
                return True
        return False

    def _take(self, queue: Queue, pipeline: Embedder | Generator, taken: list[tuple[RQJob, Execution]]) -> None:
        """Dequeue up to a batch of texts' worth of jobs (one job for generation) into `taken`."""
        budget = self.settings.batch_max if isinstance(pipeline, Embedder) else pipeline.free_slots
        while budget > 0:
            found = Queue.dequeue_any([queue], None, connection=self.redis, serializer=MsgpackSerializer)
            if found is None:
                break
            job = found[0]
            self.inflight.add(job.id)
            execution = self.rq.prepare_execution(job)
            self.rq.prepare_job_execution(job, remove_from_intermediate_queue=True)
            job.started_at = now()
            taken.append((job, execution))
            budget -= len(job.kwargs.get("texts") or [None]) if job.func_name == EMBED_TASK else 1

    def _run(self, model: str, queue: Queue, pipeline: Embedder | Generator,
             jobs: list[tuple[RQJob, Execution]]) -> None:
        ours = EMBED_TASK if isinstance(pipeline, Embedder) else GENERATE_TASK
        batch: list[tuple[RQJob, Execution, list[int], list[bool]]] = []
        counts_of = self._count_tokens(pipeline, [job for job, _ in jobs if job.func_name == ours])
        for job, execution in jobs:
            if job.func_name != ours:
                # Anything else on the queue runs as `rq worker` would run it.
                try:
                    self.rq.perform_job(job, queue, execution)
                finally:
                    self.inflight.discard(job.id)
                continue
            if job.kwargs.get("model", model) != model:
                self._fail(job, queue, execution,
                           ValueError(f"job for {job.kwargs.get('model')!r} is on the {model!r} queue"))
                continue
            try:
                if isinstance(pipeline, Generator):
                    self._start_generation(queue, pipeline, job, execution)
                    continue
                counts, truncated = pipeline.check(job.kwargs["texts"], bool(job.kwargs.get("truncate")),
                                                   counts_of.get(job.id), self.settings.max_request_tokens)
            except Exception as exc:  # a job that cannot run fails visibly; the rest of the batch goes on
                self._fail(job, queue, execution, exc)
                continue
            batch.append((job, execution, counts, truncated))
        if batch:
            self._embed(queue, pipeline, batch)  # type: ignore[arg-type]
        self.rq.set_state("idle")

    @staticmethod
    def _count_tokens(pipeline: Embedder | Generator, jobs: list[RQJob]) -> dict[str, list[int]]:
        """Token counts of every well-formed embedding job, in one tokenizer call."""
        if not isinstance(pipeline, Embedder):
            return {}
        valid = [j for j in jobs if isinstance(j.kwargs.get("texts"), list)
                 and all(isinstance(t, str) for t in j.kwargs["texts"])]
        counts = pipeline.count_tokens([t for j in valid for t in j.kwargs["texts"]]) if valid else []
        out, row = {}, 0
        for job in valid:
            n = len(job.kwargs["texts"])
            out[job.id] = counts[row:row + n]
            row += n
        return out

    def _embed(self, queue: Queue, pipeline: Embedder,
               batch: list[tuple[RQJob, Execution, list[int], list[bool]]]) -> None:
        texts = [t for job, *_ in batch for t in job.kwargs["texts"]]
        try:
            vectors = inference.embed(pipeline, texts, self.settings.batch_max, self.stats,
                                      [n for _, _, counts, _ in batch for n in counts])
        except Exception as exc:
            log.exception("bulk embedding failed for %d jobs", len(batch))
            for job, execution, *_ in batch:
                self._fail(job, queue, execution, exc)
            return
        row = 0
        for job, execution, counts, truncated in batch:
            n = len(job.kwargs["texts"])
            result = embed_result(pipeline, vectors[row:row + n], counts, truncated, self.settings.node_id)
            row += n
            self._succeed(job, queue, execution, result)

    def _start_generation(self, queue: Queue, pipeline: Generator, job: RQJob, execution: Execution) -> None:
        """Join the running batch; RQ learns the outcome when the engine finishes it."""
        kwargs = job.kwargs
        pipeline.check(kwargs["prompt"])

        def done(result: Generated | Exception) -> None:
            self.generating.discard(job.id)
            if isinstance(result, Exception):
                self._fail(job, queue, execution, result)
            else:
                self._succeed(job, queue, execution,
                              generate_result(pipeline, result, self.settings.node_id))

        pipeline.submit(kwargs["prompt"], kwargs.get("max_tokens"), kwargs.get("temperature"), on_done=done)
        self.generating.add(job.id)

    def _succeed(self, job: RQJob, queue: Queue, execution: Execution, result: dict[str, Any]) -> None:
        """What `rq worker` does after `Job.perform()` returned: success callback, result, registries."""
        self.inflight.discard(job.id)  # first: if Redis fails below, the reaper finds the job orphaned
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
        self.inflight.discard(job.id)
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

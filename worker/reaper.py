"""The bulk lane's reaper: RQ jobs a dead worker had started are requeued within seconds.

RQ itself notices an abandoned job only when its started-registry entry expires (job_timeout + 60 s,
minutes with the defaults) and then fails it. Here the worker heartbeat decides instead: a job started
by a worker whose heartbeat expired is requeued at the front of its queue (jobs are idempotent), and
after `max_deliveries` workers died running it, it is failed into RQ's failed registry with the reason,
so a poison job cannot take down the fleet one worker at a time. Every live worker runs a pass every
`reap_interval_s`; a per-execution lock in Redis makes sure one of them acts on each job.

Also covered: a job this very process had started but lost track of (Redis failed mid-batch), and a
job left in RQ's intermediate queue (moved off the queue, never started) for longer than a heartbeat TTL.

RQ's `StartedJobRegistry.cleanup` is not used: it decides by the registry score (job timeout + 60 s)
and fails the job, where this decides by the worker heartbeat and requeues up to `max_deliveries`
(`worker.deliveries`). What it does to a job is done with the same public pieces it uses
(`Queue.enqueue_job`, `record_job_failure`, `execute_failure_callback`, `enqueue_dependents`).
"""

from __future__ import annotations

import logging
import time

import redis
from rq import SimpleWorker
from rq.callbacks import execute_failure_callback
from rq.exceptions import AbandonedJobError, NoSuchJobError
from rq.executions import Execution
from rq.job import Job as RQJob
from rq.job import JobStatus
from rq.job_lifecycle import record_job_failure
from rq.queue import Queue
from rq.rate_limit import release_slot
from rq.utils import as_text, now, parse_composite_key

from dispatcher.protocol import Keys, MsgpackSerializer
from dispatcher.settings import DEAD_WORKER_MEMORY_S, WorkerSettings

from .bulk import BulkLane
from .deliveries import DELIVERIES, Deliveries, worker_expiries
from .stats import Stats

log = logging.getLogger(__name__)
LOCK_S = 60
"""Life of a reap lock: long enough for its holder to act (milliseconds); once it did, the registry entry
is gone, and if it died first, a peer acts after this."""

# Move a stranded job from the intermediate queue back to the front of its queue, once. Not RQ's API: RQ
# has no "requeue from the intermediate queue" (its own cleanup fails such a job), and only a script makes
# the check and the move one step, so two reapers cannot both push the job.
_UNSTRAND = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


class BulkReaper:
    def __init__(self, settings: WorkerSettings, r: redis.Redis, worker_id: str, lane: BulkLane, stats: Stats):
        self.settings, self.redis, self.worker_id, self.lane, self.stats = settings, r, worker_id, lane, stats
        self.keys = Keys(settings.key_prefix)
        self.deliveries = Deliveries(settings.max_deliveries)
        self._stranded_since: dict[str, float] = {}
        self._unstrand = self.redis.register_script(_UNSTRAND)

    def run(self) -> int:
        """One pass over the queues this worker serves; returns how many jobs were requeued or failed."""
        queues, now_s = list(self.lane.queues.values()), time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrangebyscore(self.keys.workers, now_s - DEAD_WORKER_MEMORY_S, now_s)
        for queue in queues:
            # Scores are needed (a plain `rq worker`'s entry is abandoned once its score passed), which
            # `StartedJobRegistry.get_job_and_execution_ids` leaves out: read the registry's key directly.
            pipe.zrange(queue.started_job_registry.key, 0, -1, withscores=True)
            pipe.lrange(queue.intermediate_queue_key, 0, -1)
        dead, *found = pipe.execute()
        started = {q.name: [(*parse_composite_key(as_text(m)), score) for m, score in found[2 * i]]
                   for i, q in enumerate(queues)}
        stranded = {q.name: [as_text(j) for j in found[2 * i + 1]] for i, q in enumerate(queues)}
        done = self._reap_started(queues, started) if any(started.values()) else 0
        done += self._reap_stranded(queues, started, stranded)
        self._bury([as_text(d) for d in dead])
        return done

    # --- jobs started by a worker that is gone

    def _reap_started(self, queues: list[Queue], started: dict[str, list[tuple[str, str, float]]]) -> int:
        entries = [(q, job_id, execution_id, score) for q in queues for job_id, execution_id, score in started[q.name]]
        pipe = self.redis.pipeline(transaction=False)
        for _, job_id, _, _ in entries:
            pipe.hget(RQJob.key_for(job_id), "worker_name")
        names = [as_text(n) if n else "" for n in pipe.execute()]
        expiries = worker_expiries(self.redis, self.keys, sorted({n for n in names if n}))
        me, now_s, done = self.worker_id, time.time(), 0
        for (queue, job_id, execution_id, score), name in zip(entries, names, strict=True):
            if name == me:
                orphaned = not self.lane.in_flight.runs_bulk(job_id)
            elif (expiry := expiries.get(name)) is not None:
                orphaned = expiry < now_s  # one of ours, and its heartbeat expired
            else:
                orphaned = score < now_s  # not ours (a plain `rq worker`) or long gone: RQ's own rule
            if orphaned and self._reap(queue, job_id, execution_id, name):
                done += 1
        return done

    def _reap(self, queue: Queue, job_id: str, execution_id: str, worker_name: str) -> bool:
        composite = f"{job_id}:{execution_id}"
        if not self.redis.set(self.keys.reap_lock(composite), self.worker_id, nx=True, ex=LOCK_S):
            return False  # a peer is on it (or did it)
        execution = Execution(execution_id, job_id, self.redis, worker_name)
        try:
            job = RQJob.fetch(job_id, connection=self.redis, serializer=MsgpackSerializer)
        except NoSuchJobError:
            queue.started_job_registry.remove_execution(execution)
            return False
        if job.get_status(refresh=False) != JobStatus.STARTED:  # finished meanwhile: a leftover entry
            queue.started_job_registry.remove_execution(execution)
            return False
        if worker_name == self.worker_id:
            self.lane.rq.executions.pop(execution_id, None)
        lost = [*job.meta.get(DELIVERIES, []), worker_name or "unknown"]
        job.meta[DELIVERIES] = lost
        give_up = self.deliveries.exhausted(len(lost))
        reason = (f"AbandonedJobError: {len(lost)} worker(s) died while running this job ({', '.join(lost)}); "
                  f"failed after {self.settings.max_deliveries} deliveries by the npu-worker reaper")
        if give_up:
            job.ended_at = now()
        else:
            job.started_at = None
            if job.has_rate_limit:
                # RQ takes no pipeline for a rate-limited job: it is queued first, so a failure before the
                # MULTI below leaves a queued job whose registry entry the next pass drops as a leftover.
                queue.enqueue_job(job, at_front=True)
        try:
            with self.redis.pipeline() as pipe:  # MULTI: requeued (or failed) and out of the registry at once
                if give_up:
                    record_job_failure(job, reason, pipe)
                elif not job.has_rate_limit:
                    queue.enqueue_job(job, pipeline=pipe, at_front=True)  # first: it starts the MULTI
                execution.delete(job, pipe)
                pipe.lrem(queue.intermediate_queue_key, 0, job_id)
                pipe.execute()
        except redis.WatchError:  # the job's dependencies changed meanwhile (enqueue_job watches them)
            self.redis.delete(self.keys.reap_lock(composite))  # nothing was done: the next pass tries again
            return False
        self.stats.add("bulk_failed_abandoned" if give_up else "bulk_requeued")
        if give_up:
            log.error("bulk job %s failed: %s", job_id, reason)
            self._after_failure(queue, job, reason)
        else:
            log.warning("requeued bulk job %s of dead worker %s (delivery %d of %d)", job_id, worker_name,
                        len(lost), self.settings.max_deliveries)
        return True

    def _after_failure(self, queue: Queue, job: RQJob, reason: str) -> None:
        """What RQ's started-registry cleanup does for an abandoned job besides recording the failure."""
        try:
            execute_failure_callback(job, self.lane.rq.death_penalty_class, AbandonedJobError, AbandonedJobError(),
                                     None)
        except Exception:
            log.exception("failure callback of bulk job %s raised", job.id)
        try:
            queue.enqueue_dependents(job)
        except Exception:
            log.exception("could not enqueue the dependents of bulk job %s", job.id)
        job.send_webhooks(JobStatus.FAILED, exc_string=reason)
        release_slot(job)

    def _bury(self, dead: list[str]) -> None:
        """Mark dead workers dead for RQ too, so `rq info` stops listing them (they never said goodbye)."""
        if not dead:
            return
        listed = SimpleWorker.all_keys(connection=self.redis)
        for name in dead:
            key = SimpleWorker.redis_worker_namespace_prefix + name
            if key not in listed:
                continue
            rq_worker = SimpleWorker.find_by_key(key, connection=self.redis, serializer=MsgpackSerializer)
            if rq_worker is not None:
                rq_worker.register_death()

    # --- jobs moved off a queue but never started

    def _reap_stranded(self, queues: list[Queue], started: dict[str, list[tuple[str, str, float]]],
                       stranded: dict[str, list[str]]) -> int:
        """A job sits in RQ's intermediate queue for the instant between dequeue and start; one still
        there a heartbeat TTL later lost its worker in that instant (RQ would fail it after a minute)."""
        mono, done, seen = time.monotonic(), 0, set()
        for queue in queues:
            running = {job_id for job_id, _, _ in started[queue.name]}
            for job_id in stranded[queue.name]:
                if job_id in running:  # the started-registry pass owns it
                    continue
                seen.add(job_id)
                since = self._stranded_since.setdefault(job_id, mono)
                if mono - since >= self.settings.heartbeat_ttl_s and self._unstrand(
                        keys=[queue.intermediate_queue_key, queue.key], args=[job_id]):
                    log.warning("requeued bulk job %s stranded in %s's intermediate queue", job_id, queue.name)
                    self.stats.add("bulk_unstranded")
                    done += 1
        self._stranded_since = {j: t for j, t in self._stranded_since.items() if j in seen}
        return done

"""Dead workers' jobs in both lanes, taken over by live peers within seconds, against real worker processes.

The interactive cases stage the dead consumer by hand (a consumer name that reads an entry and never
answers), because which worker a stream entry reaches is up to Redis; the bulk cases kill real worker
processes with jobs that exit the process running them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from rq import Queue, SimpleWorker
from rq.job import JobStatus
from rq.worker_registration import REDIS_WORKER_KEYS

from dispatcher.protocol import GROUP, Job, Keys, MsgpackSerializer, Reply, app_tag, pack, read_reply, unpack
from dispatcher.settings import Settings
from npu_worker.redis_server import EmbeddedRedis
from tests.conftest import WorkerProcess
from worker.deliveries import DELIVERIES

MODEL = "all-minilm-l6-v2"


def _pending_on(r, stream: str, consumer: str, job: Job, times: int = 1) -> bytes:
    """Add `job` and have `consumer` read it (`times` deliveries) without ever answering: a dead worker."""
    entry = r.xadd(stream, {"j": pack(job)})
    r.xreadgroup(GROUP, consumer, {stream: ">"}, count=1)
    for _ in range(times - 1):
        r.xclaim(stream, GROUP, consumer, 0, [entry])
    return entry


def _job(keys: Keys, text: str) -> Job:
    job = Job(kind="embed", model=MODEL, reply="", deadline=time.time() + 60, texts=[text])
    job.reply = keys.reply(job.id)
    return job


def _reply(r, job: Job, timeout: float) -> Reply:
    raw = r.blpop([job.reply], timeout=timeout)
    assert raw is not None, "no reply"
    return read_reply(unpack(raw[1]))


def test_interactive_jobs_of_a_dead_worker_are_taken_over_and_poison_is_dead_lettered(isolated: Settings) -> None:
    r, keys = isolated.redis(), Keys(isolated.key_prefix)
    stream = keys.stream(MODEL)
    r.xgroup_create(stream, GROUP, id="0", mkstream=True)
    now = time.time()
    r.zadd(keys.workers, {"dead-worker": now - 5, "busy-worker": now + 3600})  # expired / fresh heartbeats
    orphan, poison, busy = _job(keys, "orphaned by a dead worker"), _job(keys, "poison"), _job(keys, "busy")
    _pending_on(r, stream, "dead-worker", orphan)
    _pending_on(r, stream, "dead-worker", poison, times=2)  # already handed to 2 workers that died with it
    busy_entry = _pending_on(r, stream, "busy-worker", busy)  # alive, in a long batch: not to be touched
    # a job an app's worker held in its fair queue (read, unacked) when it died: taken over the same way
    r.hset(keys.apps, "takeover-app", 1)
    app_stream = keys.stream(MODEL, None, app_tag("takeover-app"))
    r.xgroup_create(app_stream, GROUP, id="0", mkstream=True)
    held = _job(keys, "held by a dead worker")
    held.app = "takeover-app"
    _pending_on(r, app_stream, "dead-worker", held)

    proc = WorkerProcess(isolated, models=[MODEL])
    try:
        proc.wait_live()
        started = time.monotonic()
        answered = _reply(r, orphan, timeout=15)
        assert answered.ok and answered.matrix().shape == (1, 384) and answered.worker_id != "dead-worker"
        assert time.monotonic() - started < 5  # one reap interval (1 s) plus the claim idle time (1 s)
        assert _reply(r, held, timeout=10).ok
        failed = _reply(r, poison, timeout=5)
        assert not failed.ok and failed.error == "job_failed" and "dead-letter" in (failed.message or "")
        dead = r.xrange(keys.dead(MODEL))
        assert len(dead) == 1 and dead[0][1][b"reason"] == b"too many deliveries"
        assert Job.model_validate(unpack(dead[0][1][b"j"])).id == poison.id
        # The live worker's entry is still its own, and the dead consumer left the group once emptied.
        pending = r.xpending_range(stream, GROUP, "-", "+", 10)
        assert [(p["message_id"], p["consumer"]) for p in pending] == [(busy_entry, b"busy-worker")]
        time.sleep(2.5)
        consumers = {c["name"] for c in r.xinfo_consumers(stream, GROUP)}
        assert b"dead-worker" not in consumers and b"busy-worker" in consumers
        beat = proc.beat()
        assert beat and beat.counters["reclaimed"] == 2 and beat.counters["dead_lettered"] == 1
    finally:
        proc.stop()


def _wait_status(job, statuses: set[JobStatus], timeout: float) -> JobStatus:
    deadline = time.monotonic() + timeout
    while (status := job.get_status()) not in statuses and time.monotonic() < deadline:
        time.sleep(0.2)
    return status


def test_bulk_jobs_of_a_dead_worker_are_requeued_once_then_failed(isolated: Settings, tmp_path: Path) -> None:
    """A job that kills its worker once is requeued by the surviving peer and finishes; one that killed
    `max_deliveries` workers is failed into RQ's failed registry; one stranded between dequeue and start
    is put back. All within seconds, not RQ's job_timeout + 60 s."""
    r, keys = isolated.redis(), Keys(isolated.key_prefix)
    queue = Queue(keys.queue(MODEL), connection=r, serializer=MsgpackSerializer)
    first, second = WorkerProcess(isolated, models=[MODEL]), WorkerProcess(isolated, models=[MODEL])
    third = None
    try:
        first.wait_live()
        second.wait_live()
        marker = tmp_path / "died"
        job = queue.enqueue("tests.jobs.exit_first_time", args=[str(marker)], result_ttl=300)
        died = _wait_for_death([first, second], timeout=20)
        killed_at = time.monotonic()
        assert _wait_status(job, {JobStatus.FINISHED, JobStatus.FAILED}, timeout=20) == JobStatus.FINISHED
        recovered_in = time.monotonic() - killed_at
        assert recovered_in < isolated.heartbeat_ttl_s + 5, recovered_in
        assert job.latest_result().return_value == "survived"
        job.refresh()
        assert len(job.meta[DELIVERIES]) == 1
        survivor = second if died is first else first
        # The dead worker is out of `rq info` too, not listed for minutes.
        dead_id = job.meta[DELIVERIES][0]
        assert f"rq:worker:{dead_id}".encode() not in r.smembers(REDIS_WORKER_KEYS)

        # A poison job that already killed one worker kills the survivor, and is then failed visibly.
        poison = queue.enqueue("tests.jobs.always_exit", meta={DELIVERIES: ["an-earlier-worker"]}, result_ttl=300)
        _wait_for_death([survivor], timeout=20)
        # A job moved off the queue by a worker that died before starting it.
        stranded = queue.enqueue("worker.tasks.embed", kwargs={"texts": ["stranded"], "model": MODEL},
                                 result_ttl=300)
        assert r.lmove(queue.key, queue.intermediate_queue_key) == stranded.id.encode()
        third = WorkerProcess(isolated, models=[MODEL])
        third.wait_live()
        assert _wait_status(poison, {JobStatus.FAILED}, timeout=20) == JobStatus.FAILED
        assert poison.id in queue.failed_job_registry.get_job_ids()
        assert "AbandonedJobError" in poison.latest_result().exc_string
        assert _wait_status(stranded, {JobStatus.FINISHED}, timeout=isolated.heartbeat_ttl_s + 10) == \
            JobStatus.FINISHED
        assert third.proc.poll() is None
    finally:
        for proc in (first, second, third):
            if proc:
                proc.stop()


def _wait_for_death(procs: list[WorkerProcess], timeout: float) -> WorkerProcess:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.proc.poll() is not None:
                return proc
        time.sleep(0.1)
    pytest.fail("no worker died")


def test_a_dead_workers_entry_deleted_while_pending_is_acked_not_run(isolated: Settings, tmp_path: Path) -> None:
    """On the embedded Redis (6.2), which hands such an entry back without an id (7 leaves it out)."""
    embedded = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    isolated = isolated.model_copy(update={"redis_url": embedded.url})
    r, keys = isolated.redis(), Keys(isolated.key_prefix)
    stream = keys.stream(MODEL)
    r.xgroup_create(stream, GROUP, id="0", mkstream=True)
    gone = _pending_on(r, stream, "dead-worker", _job(keys, "deleted while pending"))
    kept = _job(keys, "still there")
    _pending_on(r, stream, "dead-worker", kept)
    r.xdel(stream, gone)
    proc = WorkerProcess(isolated, models=[MODEL])
    try:
        proc.wait_live()
        assert _reply(r, kept, timeout=15).ok
        deadline = time.monotonic() + 5
        while r.xpending(stream, GROUP)["pending"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert r.xpending(stream, GROUP)["pending"] == 0
        assert proc.proc.poll() is None
    finally:
        proc.stop()
        embedded.stop()


def test_a_bulk_job_a_live_worker_lost_track_of_is_requeued(isolated: Settings) -> None:
    """Redis failing mid-batch leaves a job started under a live worker's name that it no longer runs
    (its heartbeat is fine, so no peer would touch it): the worker requeues it itself."""
    r, keys = isolated.redis(), Keys(isolated.key_prefix)
    queue = Queue(keys.queue(MODEL), connection=r, serializer=MsgpackSerializer)
    proc = WorkerProcess(isolated, models=[MODEL])
    try:
        beat = proc.wait_live()
        # Started under the live worker's name, the way its own lane would have, then forgotten.
        job = queue.create_job("worker.tasks.embed", kwargs={"texts": ["orphaned by an outage"], "model": MODEL},
                               result_ttl=300)
        job.save()
        impostor = SimpleWorker([queue], connection=r, name=beat.worker_id, serializer=MsgpackSerializer)
        impostor.prepare_execution(job)
        impostor.prepare_job_execution(job)
        assert job.get_status() == JobStatus.STARTED
        assert _wait_status(job, {JobStatus.FINISHED}, timeout=15) == JobStatus.FINISHED
        job.refresh()
        assert job.meta[DELIVERIES] == [beat.worker_id]
    finally:
        proc.stop()

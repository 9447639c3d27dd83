"""Prometheus metrics, named as Prometheus expects (`_total` counters, `_seconds`, 0-1 `_ratio`s) and in the
spirit of TEI and OVMS.

Two sources, rendered one after the other:
- the facade's own registry (`REGISTRY`): requests, tokens, durations, fallbacks, auth refusals. It lives
  in the process, so `/metrics` answers from it even while Redis is down.
- the fleet, read from Redis at scrape time (workers' heartbeats, queue lengths): one scrape of any facade
  shows the whole fleet. When Redis cannot be read within the scrape's budget these series are left out
  and `npu_fleet_up` is 0, rather than the scrape failing or hanging.

A fleet series is one function of `FleetState` in `FLEET_FAMILIES`: a new one (say a worker's memory) is a
function added there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from dispatcher import apps
from dispatcher.logs import note_access
from dispatcher.protocol import BATCH_BUCKETS, CANCEL_REASONS, Heartbeat
from dispatcher.results import EmbedResult, GenerateResult

from . import limiting

disable_created_metrics()  # no `_created` series: they double the exposition and no dashboard reads them

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

INFERENCE_ROUTES = frozenset({"/embeddings", "/inference", "/v1/embeddings", "/v1/chat/completions"})
"""The routes `npu_requests_total` counts: the ones that run (or refuse to run) an inference."""

REQUESTS = Counter(
    "npu_requests", "Inference requests (POST /embeddings, /inference, /v1/embeddings, /v1/chat/completions) "
    "by route, model, source (npu, cloud; none when refused or failed), HTTP status and app (a configured app, "
    "a service id or an operator role), answered or refused.",
    ["route", "model", "source", "status", "app"])
REQUEST_SECONDS = Histogram("npu_request_duration_seconds", "Time to answer an inference request.",
                            ["route", "model", "source"], buckets=_LATENCY)
QUEUE_SECONDS = Histogram("npu_queue_wait_seconds", "Time a job waited in its lane before a worker took it.",
                          ["model"], buckets=_LATENCY)
INFERENCE_SECONDS = Histogram("npu_inference_duration_seconds", "Worker inference time of the batch that "
                              "served a request.", ["model"], buckets=_LATENCY)
TTFT_SECONDS = Histogram("npu_time_to_first_token_seconds", "Generations served by a worker: time from the job's "
                         "enqueueing to its first generated token.", ["model"], buckets=_LATENCY)
PROMPT_TOKENS = Counter("npu_prompt_tokens", "Input tokens of answered requests (embedding texts, generation "
                        "prompts with their chat template), by model, source and app.", ["model", "source", "app"])
COMPLETION_TOKENS = Counter("npu_completion_tokens", "Generated tokens of answered requests, by model, source and "
                            "app.", ["model", "source", "app"])
FALLBACKS = Counter("npu_fallbacks", "Requests answered by the cloud, by model and reason (no_worker, deadline, "
                    "overloaded, redis_unavailable, worker_lost).", ["model", "reason"])
AUTH_FAILURES = Counter(
    "npu_auth_failures", "Requests refused by authentication (401) or authorization (403), by precise cause "
    "(missing_headers, outside_window, bad_signature, unknown_service, replayed_nonce, bad_token, forbidden, ...).",
    ["reason"])


CANCELLED = Counter("npu_cancelled", "Jobs this facade cancelled because nobody waited for them any more, by "
                    "reason (client_gone: the HTTP client disconnected; deadline: the request's budget ended "
                    "before a worker started it).", ["reason"])


def cancelled(reason: str) -> None:
    """A job this facade's dispatcher cancelled (its `on_cancel`)."""
    CANCELLED.labels(reason).inc()


def observe(route: str, result: EmbedResult | GenerateResult, seconds: float) -> None:
    """An answered inference request."""
    model, source, timings = result.model, result.source, result.timings
    app = apps.app.get() or "-"
    note_access(model=model, source=source)
    REQUESTS.labels(route, model, source, "200", app).inc()
    REQUEST_SECONDS.labels(route, model, source).observe(seconds)
    if isinstance(result, EmbedResult):
        prompt, completion = sum(result.token_counts or []), 0
    else:
        prompt, completion = result.prompt_tokens or 0, result.completion_tokens or 0
    if prompt:
        PROMPT_TOKENS.labels(model, source, app).inc(prompt)
    if completion:
        COMPLETION_TOKENS.labels(model, source, app).inc(completion)
    limiting.charge(prompt + completion)
    if source == "npu":
        if "queue_ms" in timings:
            QUEUE_SECONDS.labels(model).observe(timings["queue_ms"] / 1000)
        if "inference_ms" in timings:
            INFERENCE_SECONDS.labels(model).observe(timings["inference_ms"] / 1000)
        if "ttft_ms" in timings:
            TTFT_SECONDS.labels(model).observe((timings.get("queue_ms", 0.0) + timings["ttft_ms"]) / 1000)
    elif result.fallback_reason:
        FALLBACKS.labels(model, result.fallback_reason).inc()


def refused(route: str, status: int) -> None:
    """An inference request answered with an error (counted in `npu_requests_total` with source `none`)."""
    if route in INFERENCE_ROUTES:
        REQUESTS.labels(route, "-", "none", str(status), apps.app.get() or "-").inc()


# --- the fleet, read from Redis at scrape time


@dataclass
class FleetState:
    """What one scrape read from Redis: live workers' heartbeats and each model's queue lengths per lane."""

    beats: list[Heartbeat]
    depths: dict[str, dict[str, int]] = field(default_factory=dict)


def _queue_depth(state: FleetState) -> Metric:
    depth = GaugeMetricFamily("npu_queue_depth", "Jobs waiting, by model and lane (interactive, bulk), read "
                              "from Redis at scrape time (also for a model with no live worker).",
                              labels=["model", "lane"])
    for model, lanes in state.depths.items():
        for lane, n in lanes.items():
            depth.add_metric([model, lane], n)
    return depth


def _utilization(state: FleetState) -> Metric:
    util = GaugeMetricFamily("npu_worker_utilization_ratio", "(queued + running) / max_concurrent of a worker, "
                             "0-1 (capped at 1).", labels=["node", "worker"])
    for b in state.beats:
        util.add_metric([b.node_id, b.worker_id], round(b.utilization / 100, 4))
    return util


def _busy(state: FleetState) -> Metric:
    busy = GaugeMetricFamily("npu_worker_busy_ratio", "Share of a worker's last heartbeat interval spent in "
                             "inference, 0-1.", labels=["node", "worker"])
    for b in state.beats:
        busy.add_metric([b.node_id, b.worker_id], b.busy_fraction)
    return busy


def _live(state: FleetState) -> Metric:
    live = GaugeMetricFamily("npu_workers_live", "Live workers, by model and device type.", labels=["model", "device"])
    per_model: dict[tuple[str, str], int] = {}
    for b in state.beats:
        for model, device in b.models.items():
            per_model[(model, device)] = per_model.get((model, device), 0) + 1
    for (model, device), n in sorted(per_model.items()):
        live.add_metric([model, device], n)
    return live


JOB_OUTCOMES = {("interactive", "served"): "jobs", ("interactive", "dropped_late"): "dropped_late",
                ("interactive", "malformed"): "malformed", ("interactive", "dead_lettered"): "dead_lettered",
                ("bulk", "served"): "bulk_jobs", ("bulk", "failed"): "bulk_failed"}
"""(lane, outcome) -> the worker's counter: each job ends in exactly one of these."""


def _jobs(state: FleetState) -> Metric:
    jobs = CounterMetricFamily("npu_worker_jobs", "Jobs a worker finished, by lane and outcome (served, "
                               "dropped_late, malformed, dead_lettered, failed), since it started; each job is "
                               "counted once.", labels=["node", "worker", "lane", "outcome"])
    for b in state.beats:
        for (lane, outcome), counter in JOB_OUTCOMES.items():
            jobs.add_metric([b.node_id, b.worker_id, lane, outcome], b.counters.get(counter, 0))
    return jobs


def _cancelled(state: FleetState) -> Metric:
    stopped = CounterMetricFamily("npu_worker_cancelled", "Generations a worker stopped before their end, by "
                                  "reason (client_gone, caller_cancelled: nobody waits any more; deadline: the "
                                  "caller's budget ended, its text so far returned).",
                                  labels=["node", "worker", "reason"])
    for b in state.beats:
        for reason in CANCEL_REASONS:
            stopped.add_metric([b.node_id, b.worker_id, reason], b.counters.get(f"cancelled_{reason}", 0))
    return stopped


def _reclaimed(state: FleetState) -> Metric:
    taken = CounterMetricFamily("npu_worker_reclaimed_jobs", "Interactive jobs a worker took over from dead "
                                "workers (then counted again when served).", labels=["node", "worker"])
    for b in state.beats:
        taken.add_metric([b.node_id, b.worker_id], b.counters.get("reclaimed", 0))
    return taken


def _batches(state: FleetState) -> Metric:
    batches = HistogramMetricFamily("npu_batch_size", "Texts per embedding inference.", labels=["node", "worker"])
    for b in state.beats:
        buckets = [(str(le), b.counters.get(f"batch_le_{le}", 0)) for le in BATCH_BUCKETS]
        buckets.append(("+Inf", b.counters.get("batches", 0)))
        batches.add_metric([b.node_id, b.worker_id], buckets, b.counters.get("batch_texts", 0))
    return batches


def _rss(state: FleetState) -> Metric:
    """Not `process_resident_memory_bytes`: the facade's own process collector exports that name for itself,
    and two families of one name make the exposition unreadable to Prometheus."""
    rss = GaugeMetricFamily("npu_worker_resident_memory_bytes", "A worker process's resident memory.",
                            labels=["node", "worker"])
    for b in state.beats:
        if b.rss_bytes is not None:
            rss.add_metric([b.node_id, b.worker_id], b.rss_bytes)
    return rss


def _kv_cache(kind: str, help_text: str) -> Callable[[FleetState], Metric]:
    def family(state: FleetState) -> Metric:
        gauge = GaugeMetricFamily(f"npu_kv_cache_{kind}_bytes", help_text, labels=["node", "worker", "model"])
        for b in state.beats:
            for model, cache in (b.kv_cache or {}).items():
                gauge.add_metric([b.node_id, b.worker_id, model], getattr(cache, f"{kind}_bytes"))
        return gauge
    return family


FLEET_FAMILIES: list[Callable[[FleetState], Metric]] = [
    _queue_depth, _utilization, _busy, _live, _jobs, _cancelled, _reclaimed, _batches, _rss,
    _kv_cache("configured", "Most KV cache a generation model may take on a worker (NPU_KV_CACHE_MB, or computed)."),
    _kv_cache("allocated", "KV cache the engine holds now."),
    _kv_cache("used", "KV cache occupied by running generations."),
]


class _Fleet:
    def __init__(self, state: FleetState | None):
        self.state = state

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("npu_fleet_up", "1 when this scrape read the fleet's state from Redis; 0 when it "
                               "could not, and the fleet's series (queues, workers) are left out.")
        up.add_metric([], 1 if self.state is not None else 0)
        yield up
        if self.state is not None:
            for family in FLEET_FAMILIES:
                yield family(self.state)


def render(state: FleetState | None) -> bytes:
    """The facade's registry and the fleet's series; `state` None: Redis could not be read."""
    fleet = CollectorRegistry(auto_describe=False)
    fleet.register(_Fleet(state))
    return generate_latest(REGISTRY) + generate_latest(fleet)

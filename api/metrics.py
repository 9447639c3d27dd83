"""Prometheus metrics, named in the spirit of TEI and OVMS.

The facade counts what it sees (requests, fallbacks, durations); what workers see (queue depth,
utilization, batch sizes, dropped and reclaimed jobs) comes from their heartbeats at scrape time, so
one scrape of any facade shows the whole fleet.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from dispatcher.protocol import BATCH_BUCKETS, Heartbeat

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter("npu_requests_total", "Inference requests answered, by route, model, source and status.",
                   ["route", "model", "source", "status"])
REQUEST_SECONDS = Histogram("npu_request_duration_seconds", "Time to answer an inference request.",
                            ["route", "model", "source"], buckets=_LATENCY)
QUEUE_SECONDS = Histogram("npu_queue_wait_seconds", "Time a job waited in its lane before a worker took it.",
                          ["model"], buckets=_LATENCY)
INFERENCE_SECONDS = Histogram("npu_inference_duration_seconds", "Worker inference time of the batch that "
                              "served a request.", ["model"], buckets=_LATENCY)
FALLBACKS = Counter("npu_fallbacks_total", "Requests answered by the cloud, by reason.", ["model", "reason"])
AUTH_FAILURES = Counter(
    "npu_auth_failures", "Requests refused by authentication (401) or authorization (403), by precise cause "
    "(missing_headers, outside_window, bad_signature, unknown_service, replayed_nonce, bad_token, forbidden, ...).",
    ["reason"])


def observe(route: str, model: str, source: str, seconds: float, timings: dict[str, float],
            fallback_reason: str | None) -> None:
    REQUESTS.labels(route, model, source, "200").inc()
    REQUEST_SECONDS.labels(route, model, source).observe(seconds)
    if source == "npu":
        if "queue_ms" in timings:
            QUEUE_SECONDS.labels(model).observe(timings["queue_ms"] / 1000)
        if "inference_ms" in timings:
            INFERENCE_SECONDS.labels(model).observe(timings["inference_ms"] / 1000)
    elif fallback_reason:
        FALLBACKS.labels(model, fallback_reason).inc()


class _Fleet:
    """One scrape's view of the workers' heartbeats."""

    def __init__(self, beats: list[Heartbeat]):
        self.beats = beats

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily("npu_queue_depth", "Jobs waiting, by model and lane.", labels=["model", "lane"])
        seen: set[str] = set()
        for b in self.beats:
            for model, lanes in b.queue_depths.items():
                if model not in seen:  # every worker of a model reports the same shared queues
                    seen.add(model)
                    for lane, n in lanes.items():
                        depth.add_metric([model, lane], n)
        util = GaugeMetricFamily("npu_worker_utilization", "(queued + running) / max_concurrent, 0-100.",
                                 labels=["node", "worker"])
        busy = GaugeMetricFamily("npu_worker_busy_ratio", "Share of the last heartbeat interval in inference.",
                                 labels=["node", "worker"])
        live = GaugeMetricFamily("npu_workers_live", "Live workers, by model and device type.",
                                 labels=["model", "device"])
        jobs = CounterMetricFamily("npu_worker_jobs", "Jobs by outcome, per worker (since it started).",
                                   labels=["node", "worker", "outcome"])
        batches = HistogramMetricFamily("npu_batch_size", "Texts per embedding inference.",
                                        labels=["node", "worker"])
        per_model: dict[tuple[str, str], int] = {}
        for b in self.beats:
            util.add_metric([b.node_id, b.worker_id], b.utilization)
            busy.add_metric([b.node_id, b.worker_id], b.busy_fraction)
            for model, device in b.models.items():
                per_model[(model, device)] = per_model.get((model, device), 0) + 1
            for outcome in ("jobs", "bulk_jobs", "bulk_failed", "dropped_late", "reclaimed", "dead_lettered",
                            "malformed"):
                jobs.add_metric([b.node_id, b.worker_id, outcome], b.counters.get(outcome, 0))
            buckets = [(str(le), b.counters.get(f"batch_le_{le}", 0)) for le in BATCH_BUCKETS]
            buckets.append(("+Inf", b.counters.get("batches", 0)))
            batches.add_metric([b.node_id, b.worker_id], buckets, b.counters.get("batch_texts", 0))
        for (model, device), n in per_model.items():
            live.add_metric([model, device], n)
        yield from (depth, util, busy, live, jobs, batches)
        yield from _memory(self.beats)


def _memory(beats: list[Heartbeat]) -> Iterable[Metric]:
    """Each worker's resident memory and its generation models' KV cache (issue: Memory).

    Not `process_resident_memory_bytes`: the facade's own process collector already exports that name for
    itself, and two families of one name make the exposition unreadable to Prometheus.
    """
    rss = GaugeMetricFamily("npu_worker_resident_memory_bytes", "A worker process's resident memory.",
                            labels=["node", "worker"])
    labels = ["node", "worker", "model"]
    configured = GaugeMetricFamily("npu_kv_cache_configured_bytes", "Most KV cache a generation model may take "
                                   "on a worker (NPU_KV_CACHE_MB, or computed).", labels=labels)
    allocated = GaugeMetricFamily("npu_kv_cache_allocated_bytes", "KV cache the engine holds now.", labels=labels)
    used = GaugeMetricFamily("npu_kv_cache_used_bytes", "KV cache occupied by running generations.", labels=labels)
    for b in beats:
        if b.rss_bytes is not None:
            rss.add_metric([b.node_id, b.worker_id], b.rss_bytes)
        for model, cache in (b.kv_cache or {}).items():
            configured.add_metric([b.node_id, b.worker_id, model], cache.configured_bytes)
            allocated.add_metric([b.node_id, b.worker_id, model], cache.allocated_bytes)
            used.add_metric([b.node_id, b.worker_id, model], cache.used_bytes)
    yield from (rss, configured, allocated, used)


def render(beats: list[Heartbeat]) -> bytes:
    from prometheus_client import REGISTRY

    fleet = CollectorRegistry(auto_describe=False)
    fleet.register(_Fleet(beats))  # type: ignore[arg-type]
    return generate_latest(REGISTRY) + generate_latest(fleet)

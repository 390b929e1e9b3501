"""Prometheus metrics of both workers, on prometheus_client's default registry.

One module-level object per metric, so any code in the process records into the same series and one
HTTP endpoint (`start_metrics_server`, or ServerConfig.metrics_port) exports them all.

| Metric                         | Type      | Labels                | Meaning                                        |
|--------------------------------|-----------|-----------------------|------------------------------------------------|
| sam3_rpcs_total                | counter   | service, method, code | Finished rpcs by final status code name (OK,   |
|                                |           |                       | NOT_FOUND, ...); health/reflection excluded.   |
| sam3_rpc_duration_seconds      | histogram | service, method       | Wall time of each rpc in the worker (a stream  |
|                                |           |                       | counts once, from open to close).              |
| sam3_stage_duration_seconds    | histogram | worker, stage         | Time per serving stage, from the Timings the   |
|                                |           |                       | servicers report (hash, model, fetch, ...).    |
| sam3_embedding_lookups_total   | counter   | result                | Decoder embedding lookups: local (in-process   |
|                                |           |                       | LRU), redis, miss, corrupt (failed checks);    |
|                                |           |                       | the values are sam3_serving.outcome.Outcome's. |
| sam3_concept_lookups_total     | counter   | kind, result          | Concept inputs by where they came from: kind   |
|                                |           |                       | "features" (an image's detector features:      |
|                                |           |                       | local, redis, miss, corrupt) or "text" (a      |
|                                |           |                       | phrase's features: local, redis, encoded).     |
| sam3_single_flight_waits_total | counter   | outcome               | Encoder waits for another replica's encode of  |
|                                |           |                       | the same image: ready, timeout, holder_failed. |
| sam3_model_runs_total          | counter   | worker                | Model invocations (vision encoder or mask      |
|                                |           |                       | decoder runs).                                 |
| sam3_in_flight_requests        | gauge     | worker                | Application rpcs running now (admitted, not    |
|                                |           |                       | finished); the encoder's HPA scales on it.     |
| sam3_local_cache_bytes         | gauge     | (none)                | Bytes held by the decoder's in-process LRU of  |
|                                |           |                       | stored values (embeddings, concept features).  |
| sam3_local_cache_evictions_total | counter | (none)                | Values the decoder's LRU dropped to stay in    |
|                                |           |                       | its byte budget (rising fast: raise --cache-mb)|
| sam3_encode_queue_seconds      | histogram | priority, outcome     | Time an encode waited for a model slot         |
|                                |           |                       | (interactive / batch; started, gave_up, full). |
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

from sam3_serving.outcome import Outcome

__all__ = [
    "CACHE_LOOKUPS",
    "CONCEPT_LOOKUPS",
    "ENCODE_QUEUE_SECONDS",
    "IN_FLIGHT",
    "LOCAL_CACHE_BYTES",
    "LOCAL_CACHE_EVICTIONS",
    "MODEL_RUNS",
    "RPCS",
    "RPC_SECONDS",
    "SINGLE_FLIGHT_WAITS",
    "STAGE_SECONDS",
    "in_flight",
    "observe_stages",
    "start_metrics_server",
]

# A cached decode is ~5 ms, a cold CPU encode of a large photo can approach two minutes.
RPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
# Stages go lower than whole rpcs: hashing or a local-cache fetch takes well under a millisecond.
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, *RPC_BUCKETS)

RPCS = Counter(
    "sam3_rpcs_total",
    "Finished rpcs by final gRPC status code (health and reflection excluded).",
    ["service", "method", "code"],
)
RPC_SECONDS = Histogram(
    "sam3_rpc_duration_seconds",
    "Wall time of each rpc inside the worker (a stream counts as one rpc).",
    ["service", "method"],
    buckets=RPC_BUCKETS,
)
STAGE_SECONDS = Histogram(
    "sam3_stage_duration_seconds",
    "Time per serving stage, as reported in the responses' Timings.",
    ["worker", "stage"],
    buckets=STAGE_BUCKETS,
)
CACHE_LOOKUPS = Counter(
    "sam3_embedding_lookups_total",
    "Embedding lookups by where the embedding was found: local, redis, miss, corrupt.",
    ["result"],
)
CONCEPT_LOOKUPS = Counter(
    "sam3_concept_lookups_total",
    "Concept inputs by kind (features: an image's detector features; text: a phrase's) and where they came from.",
    ["kind", "result"],
)
SINGLE_FLIGHT_WAITS = Counter(
    "sam3_single_flight_waits_total",
    "Waits for another replica's encode of the same image, by outcome: ready, timeout, holder_failed.",
    ["outcome"],
)
MODEL_RUNS = Counter("sam3_model_runs_total", "Model invocations.", ["worker"])
IN_FLIGHT = Gauge(
    "sam3_in_flight_requests",
    "Application rpcs currently running in the worker (the encoder HPA's scaling metric).",
    ["worker"],
)
ENCODE_QUEUE_SECONDS = Histogram(
    "sam3_encode_queue_seconds",
    "Time an encode waited for a model slot, by priority and outcome: started, gave_up, full.",
    ["priority", "outcome"],
    buckets=STAGE_BUCKETS,
)
LOCAL_CACHE_BYTES = Gauge("sam3_local_cache_bytes", "Bytes held by the decoder's in-process LRU of stored values.")
LOCAL_CACHE_EVICTIONS = Counter(
    "sam3_local_cache_evictions_total", "Values the decoder's in-process LRU dropped to stay within its byte budget."
)

# The outcomes each lookup can have (`Outcome`'s values are the `result` labels).
_STORED_VALUE_OUTCOMES = (Outcome.LOCAL, Outcome.REDIS, Outcome.MISS, Outcome.CORRUPT)
_TEXT_FEATURE_OUTCOMES = (Outcome.LOCAL, Outcome.REDIS, Outcome.ENCODED)
# Pre-create the known label values so dashboards and rate() see zeros instead of absent series.
for _outcome in _STORED_VALUE_OUTCOMES:
    CACHE_LOOKUPS.labels(result=_outcome)
    CONCEPT_LOOKUPS.labels(kind="features", result=_outcome)
for _outcome in _TEXT_FEATURE_OUTCOMES:
    CONCEPT_LOOKUPS.labels(kind="text", result=_outcome)
for _outcome in ("ready", "timeout", "holder_failed"):
    SINGLE_FLIGHT_WAITS.labels(outcome=_outcome)


def observe_stages(worker: str, milliseconds: Mapping[str, float]) -> None:
    """Record a response's Timings.milliseconds map (ms in, seconds stored, like every Prometheus time)."""
    for stage, value in milliseconds.items():
        if value is None or not math.isfinite(value) or value < 0:
            continue
        STAGE_SECONDS.labels(worker=worker, stage=stage).observe(value / 1000.0)


def in_flight(worker: str) -> float:
    """Current value of sam3_in_flight_requests{worker=...} (0 before the worker's first rpc)."""
    value = REGISTRY.get_sample_value("sam3_in_flight_requests", {"worker": worker})
    return 0.0 if value is None else value


def start_metrics_server(port: int, host: str = "0.0.0.0") -> WSGIServer:
    """Serve /metrics for the default registry on a daemon thread; port 0 picks a free one (`server_port`).

    Returns the HTTP server, so whoever started it can shut it down (the worker does, with its gRPC server).
    """
    server, _thread = start_http_server(port, addr=host)
    return server

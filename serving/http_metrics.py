"""The ingress replica's Prometheus metrics (prometheus-client registry of `mrgen.platform.metrics`).

Kept in their own module and used through its functions: Serve pickles the ingress class by value, which
would copy metric objects referenced from its methods instead of sharing the process registry.
"""
from __future__ import annotations

from mrgen.platform import metrics

ROUTES = ("/v1/generate", "/v1/modalities", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs")
REQUESTS = metrics.counter("mrgen_serve_requests_total", "HTTP requests by route and status", ("route", "status"))
LATENCY = metrics.histogram("mrgen_serve_request_seconds", "HTTP request latency by route and status",
                            ("route", "status"), buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120))
BATCH_SIZE = metrics.histogram("mrgen_serve_batch_size", "requests in the sampling batch of each generate request",
                               buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32))
CANDIDATES = metrics.counter("mrgen_serve_candidates_total", "candidates generated, stopped early, kept by the filter "
                             "(requests with keep), and returned", ("stage",))
INFLIGHT = metrics.gauge("mrgen_serve_inflight_requests", "generate requests in flight in this ingress replica")


def record_request(path: str, status: int, seconds: float) -> None:
    route = path if path in ROUTES else "other"
    REQUESTS.labels(route, str(status)).inc()
    LATENCY.labels(route, str(status)).observe(seconds)


def record_generation(batch_size: int, generated: int, stopped: int = 0) -> None:
    BATCH_SIZE.observe(batch_size)
    CANDIDATES.labels("generated").inc(generated)
    CANDIDATES.labels("stopped_early").inc(stopped)


def record_kept(kept: int) -> None:
    CANDIDATES.labels("kept").inc(kept)


def record_returned(returned: int) -> None:
    CANDIDATES.labels("returned").inc(returned)


def inflight(delta: int) -> None:
    INFLIGHT.inc(delta)


def exposition() -> str:
    return metrics.exposition().decode()

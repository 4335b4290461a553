"""Prometheus metrics for jobs and services, on one registry per process.

Jobs write them as text at the end of a run (``write_metrics``) and the HTTP ingress serves them
(``exposition``); Ray Serve replicas use ``ray.serve.metrics`` instead, which Ray exports itself.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mrgen.platform.storage import write_bytes

REGISTRY = CollectorRegistry(auto_describe=True)
_metrics: dict[str, object] = {}


def _get(kind, name: str, doc: str, labels: tuple[str, ...], **kwargs):
    metric = _metrics.get(name)
    if metric is None:
        metric = kind(name, doc, labelnames=labels, registry=REGISTRY, **kwargs)
        _metrics[name] = metric
    return metric


def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
    return _get(Counter, name, doc, labels)


def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
    return _get(Gauge, name, doc, labels)


def histogram(name: str, doc: str, labels: tuple[str, ...] = (), buckets=Histogram.DEFAULT_BUCKETS) -> Histogram:
    return _get(Histogram, name, doc, labels, buckets=buckets)


def exposition() -> bytes:
    """The registry in Prometheus text format."""
    return generate_latest(REGISTRY)


def write_metrics(uri: str) -> None:
    write_bytes(uri, exposition())

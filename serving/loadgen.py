"""A bounded load generator for the generation service, and the batching benchmark (`mrgen bench serve`).

`run_load` drives N concurrent closed-loop clients against a loopback URL for a fixed duration and reports
throughput, latency percentiles and errors. `benchmark` deploys the service twice side by side in one process
(batching on, and off = max batch 1; same bundle, replicas and clients), loads each in turn for a few rounds (the
order alternating, so that a drift of the machine falls on both) and prints both and their ratio with its interval
over rounds, and the ceiling that the generator alone sets on it: images/s of the replica's pipeline at one request
a call against a full batch, in the same process before the service starts (on a CPU a compute-bound model gains
little from batching, and no service can gain more than its model does).
"""
from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import torch
from ray import serve

from mrgen.models.bundle import build_random_bundle
from mrgen.models.metrics.bootstrap import ratio_interval
from mrgen.platform.cluster import RayConfig, init_ray
from mrgen.serving.app import build_app_from_config
from mrgen.serving.client import request_body
from mrgen.serving.config import ServeConfig
from mrgen.serving.generator import replica_pipeline, sample_jobs
from mrgen.serving.inputs import parse_request
from mrgen.serving.schemas import GenerateRequest, GenerationJob

LOOPBACK_NAMES = {"localhost"}


class LoadError(ValueError):
    pass


@dataclass
class LoadResult:
    label: str
    clients: int
    duration_s: float
    latencies_s: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    batch_sizes: list[int] = field(default_factory=list)
    images: int = 0

    @property
    def ok(self) -> int:
        return len(self.latencies_s)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return self.ok / self.duration_s if self.duration_s else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) if self.latencies_s else float("nan")

    @classmethod
    def merge(cls, runs: list[LoadResult]) -> LoadResult:
        """Several runs of one service as one: their requests pooled over their summed duration."""
        merged = cls(label=runs[0].label, clients=runs[0].clients, duration_s=sum(r.duration_s for r in runs))
        for r in runs:
            merged.latencies_s += r.latencies_s
            merged.errors += r.errors
            merged.batch_sizes += r.batch_sizes
            merged.images += r.images
        return merged

    def summary(self) -> dict:
        return {"label": self.label, "clients": self.clients, "seconds": round(self.duration_s, 2),
                "requests_ok": self.ok, "errors": self.error_count, "error_kinds": dict(self.errors),
                "req_per_s": round(self.throughput, 3), "images_per_s": round(self.images / self.duration_s, 3),
                "p50_s": round(self.percentile(50), 4), "p95_s": round(self.percentile(95), 4),
                "p99_s": round(self.percentile(99), 4),
                "mean_batch": round(float(np.mean(self.batch_sizes)), 2) if self.batch_sizes else None}

    def line(self) -> str:
        s = self.summary()
        return (f"{s['label']:<14} clients={s['clients']:<3} ok={s['requests_ok']:<5} errors={s['errors']:<3} "
                f"throughput={s['req_per_s']:.2f} req/s ({s['images_per_s']:.2f} img/s)  p50={s['p50_s']:.3f}s "
                f"p95={s['p95_s']:.3f}s p99={s['p99_s']:.3f}s  mean batch={s['mean_batch']}")


def check_loopback(url: str) -> None:
    """Refuse anything but a loopback address: this tool must never load someone else's service."""
    host = urlparse(url).hostname or ""
    if host in LOOPBACK_NAMES:
        return
    try:
        address = ipaddress.ip_address(host if host else socket.gethostbyname(host))
    except ValueError:
        raise LoadError(f"{url}: the load generator only targets loopback addresses "
                        "(127.0.0.1, ::1, localhost)") from None
    if not address.is_loopback:
        raise LoadError(f"{url}: {host} is not a loopback address; the load generator only targets this machine")


def check_load(clients: int, duration_s: float) -> None:
    if not 1 <= clients <= 256:
        raise LoadError(f"clients must be in 1..256, got {clients}")
    if not 0 < duration_s <= 3600:
        raise LoadError(f"duration_s must be in (0, 3600], got {duration_s}")


async def _client(http: httpx.AsyncClient, body: dict, seed0: int, deadline: float, result: LoadResult,
                  stop: threading.Event | None) -> None:
    i = 0
    while time.monotonic() < deadline and not (stop and stop.is_set()):
        start = time.perf_counter()
        try:
            response = await http.post("/v1/generate", json={**body, "seed": seed0 + i})
        except httpx.HTTPError as exc:
            result.errors[type(exc).__name__] += 1
        else:
            if response.status_code == 200:
                data = response.json()
                result.latencies_s.append(time.perf_counter() - start)
                result.batch_sizes.append(int(data["batch_size"]))
                result.images += len(data["candidates"])
            else:
                result.errors[f"HTTP {response.status_code}"] += 1
        i += 1


def run_load(url: str, body: dict, clients: int = 8, duration_s: float = 20.0, token: str | None = None,
             label: str = "load", stop: threading.Event | None = None, timeout_s: float = 120.0) -> LoadResult:
    """`clients` closed-loop clients post `body` (seed varied per request) for `duration_s` seconds."""
    check_loopback(url)
    check_load(clients, duration_s)
    result = LoadResult(label=label, clients=clients, duration_s=duration_s)

    async def main() -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s,
                                     limits=limits) as http:
            start = time.monotonic()
            deadline = start + duration_s
            await asyncio.gather(*(_client(http, body, 1_000_000 * (c + 1), deadline, result, stop)
                                   for c in range(clients)))
            result.duration_s = time.monotonic() - start

    asyncio.run(main())
    return result


def _bench_mask(size: int) -> np.ndarray:
    """The benchmark's request mask: two organs (ids 1, 2) on a ``size``² grid."""
    mask = np.zeros((size, size), np.uint8)
    mask[size // 8: size // 2, size // 8: size // 2] = 1
    mask[size // 2: -size // 8, size // 2: -size // 6] = 2
    return mask


def benchmark_configs(model: str | None = None, clients: int = 8, duration_s: float = 20.0, n: int = 1,
                      steps: int = 4, max_batch_size: int = 8, warmup_s: float = 3.0, config: str = "tiny",
                      size: int = 64, overrides: dict | None = None, rounds: int = 3) -> dict[str, Any]:
    """What :func:`benchmark` deploys, by name, without deploying anything: the service configs ``batching on`` and
    ``batching off``; raises if the load cannot run (clients, durations) or if the service would refuse the
    benchmark's request (``n``, ``steps``, ``size`` against its limits)."""
    check_load(clients, duration_s)
    check_load(clients, warmup_s)
    if rounds < 1:
        raise LoadError(f"rounds must be at least 1, got {rounds}")
    base = ServeConfig.load(config).with_overrides({
        "model": model, "autoscaling.min_replicas": 1, "autoscaling.max_replicas": 1,
        "max_ongoing_requests": max(max_batch_size, clients), "limits.max_steps": max(steps, 1),
        "filter.kind": "none",  # its requests ask for no keep: no filter replica beside the measured generator
        **(overrides or {})})
    configs = {label: base.with_overrides({"batching.max_batch_size": batch})
               for label, batch in (("batching on", max_batch_size), ("batching off", 1))}
    bench_job(base, n, steps, size)
    return configs


def bench_job(config: ServeConfig, n: int, steps: int, size: int) -> GenerationJob:
    """The generator's job for the benchmark's request; LoadError if the service would refuse it."""
    request = GenerateRequest(**request_body(_bench_mask(size), "T2 SPIR", {1: "liver", 2: "spleen"}, n=n,
                                             steps=steps), seed=0)
    try:
        return parse_request(request, config).job
    except ValueError as exc:  # BadRequest: every request of the run would fail
        raise LoadError(f"the service would refuse the benchmark's request: {exc}") from None


def batching_ceiling(model: str, config: ServeConfig, job: GenerationJob, repeats: int = 3) -> dict[str, Any]:
    """The generator alone (no Ray, no HTTP) as a replica of ``config`` runs it: images/s at one request a call and
    at ``batching.max_batch_size`` (median of ``repeats`` calls after a warm-up call each), and their ratio, the
    most that batching can give this model on this machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.resources.torch_threads)
    try:
        pipeline = replica_pipeline(model, config.resources.generator_gpus > 0, config.organ_weights or None)
        rates = {}
        for batch in sorted({1, config.batching.max_batch_size}):
            group = [job] * batch
            sample_jobs(pipeline, group)
            seconds = []
            for _ in range(repeats):
                start = time.perf_counter()
                sample_jobs(pipeline, group)
                seconds.append(time.perf_counter() - start)
            rates[batch] = batch * len(job.seeds) / statistics.median(seconds)
    finally:
        torch.set_num_threads(threads)
        pipeline = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the replica loads its own copy
    full = config.batching.max_batch_size
    return {"images_per_s_batch_1": round(rates[1], 3), f"images_per_s_batch_{full}": round(rates[full], 3),
            "ratio": round(rates[full] / rates[1], 3)}


def benchmark(model: str | None = None, clients: int = 8, duration_s: float = 20.0, n: int = 1, steps: int = 4,
              max_batch_size: int = 8, warmup_s: float = 3.0, config: str = "tiny", size: int = 64,
              overrides: dict | None = None, rounds: int = 3) -> dict:
    """Batching on vs off (max batch 1) on this machine, one Serve instance, printed and returned;
    ``overrides``: ServeConfig keys (dotted) set on top of the ``config`` preset."""
    tmp = None if model else tempfile.TemporaryDirectory(prefix="mrgen-serve-bench-")
    configs = benchmark_configs(model or f"{tmp.name}/bundle", clients, duration_s, n, steps, max_batch_size, warmup_s,
                                config, size, overrides, rounds)  # a bad setting fails before anything is built
    if tmp is not None:
        model = f"{tmp.name}/bundle"
        print(f"bench serve: no --model, using a random tiny bundle at {model}", flush=True)
        build_random_bundle("tiny").save(model)
    ceiling = batching_ceiling(model, configs["batching on"], bench_job(configs["batching on"], n, steps, size))
    print(f"bench serve: the generator alone (no service): batch {max_batch_size} / batch 1 = ×{ceiling['ratio']:.2f} "
          f"images/s, the most batching can give here", flush=True)
    os.environ.setdefault("MRGEN_RAY_LOG_TO_DRIVER", "0")  # replica access logs would drown the figures
    init_ray(RayConfig())
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    body = request_body(_bench_mask(size), "T2 SPIR", {1: "liver", 2: "spleen"}, n=n, steps=steps)
    urls = {label: f"http://127.0.0.1:{port}/{_slug(label)}" for label in configs}
    runs: dict[str, list[LoadResult]] = {label: [] for label in configs}
    try:
        for label, cfg in configs.items():
            print(f"bench serve: deploying with max_batch_size={cfg.batching.max_batch_size} ...", flush=True)
            serve.run(build_app_from_config(cfg), name=f"mrgen-bench-{_slug(label)}", route_prefix=f"/{_slug(label)}")
            run_load(urls[label], body, clients, warmup_s, label="warmup")
        for r in range(rounds):
            for label in (list(configs) if r % 2 == 0 else list(configs)[::-1]):
                runs[label].append(run_load(urls[label], body, clients, duration_s, label=label))
                print(f"round {r + 1}/{rounds}  {runs[label][-1].line()}", flush=True)
    finally:
        for label in configs:
            serve.delete(f"mrgen-bench-{_slug(label)}")
        serve.shutdown()
        if tmp is not None:
            tmp.cleanup()
    on, off = (LoadResult.merge(runs[label]) for label in ("batching on", "batching off"))
    ratio = on.throughput / off.throughput if off.throughput else float("inf")
    p99_ratio = on.percentile(99) / off.percentile(99) if off.latencies_s else float("nan")
    span = ratio_interval([r.throughput for r in runs["batching on"]], [r.throughput for r in runs["batching off"]],
                          statistic=np.mean)
    print(f"batching on / off: throughput ×{ratio:.2f} (95 % interval over {rounds} rounds [{span['low']:.2f}, "
          f"{span['high']:.2f}]), p99 ×{p99_ratio:.2f}; the generator alone ×{ceiling['ratio']:.2f}; errors "
          f"{on.error_count + off.error_count} ({clients} clients, {rounds} x {duration_s:.0f} s each, n={n}, "
          f"steps={steps}, max batch {max_batch_size})", flush=True)
    return {"on": on.summary(), "off": off.summary(), "rounds": rounds, "throughput_ratio": round(ratio, 3),
            "throughput_ratio_interval_95": [round(span["low"], 3), round(span["high"], 3)],
            "p99_ratio": round(p99_ratio, 3), "generator_alone": ceiling}


def _slug(label: str) -> str:
    return label.split()[-1]  # "batching on" → "on"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

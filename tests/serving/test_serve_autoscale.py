"""Capacity of the generator: 503 beyond `max_queued_requests`; autoscaling 1 → 2 replicas under bounded
loopback load, and back to 1 when it stops.

Short metric push intervals reach the replicas through their runtime_env (`autoscaling.metrics_interval_s`),
so this works on the shared Ray session that started before this module.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest


def _replicas(app: str) -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or "Generator" not in status.deployments:
        return 0
    return int(status.deployments["Generator"].replica_states.get("RUNNING", 0))


def _wait_for(predicate, limit_s: float) -> bool:
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.5)
    return predicate()


def test_generator_scales_up_under_load_and_back(serve_port, serve_bundle):
    from ray import serve

    from mrgen.serving.app import GeneratorAppArgs, build_app
    from mrgen.serving.client import request_body
    from mrgen.serving.loadgen import run_load

    app = build_app(GeneratorAppArgs(model=serve_bundle, config="tiny", overrides=[
        "autoscaling.min_replicas=1", "autoscaling.max_replicas=2", "autoscaling.target_ongoing_requests=1",
        "autoscaling.upscale_delay_s=0.5", "autoscaling.downscale_delay_s=2", "autoscaling.look_back_period_s=1",
        "autoscaling.metrics_interval_s=0.25", "batching.max_batch_size=1", "default_steps=6"]))
    t0 = time.monotonic()
    serve.run(app, name="mrgen-scale", route_prefix="/scale")
    print(f"deployed in {time.monotonic() - t0:.1f} s")
    url = f"http://127.0.0.1:{serve_port}/scale"
    try:
        assert _replicas("mrgen-scale") == 1
        mask = np.zeros((64, 64), np.uint8)
        mask[8:40, 8:40] = 1
        body = request_body(mask, "T1", {1: "liver"}, n=2)
        stop = threading.Event()
        loads = []
        worker = threading.Thread(target=lambda: loads.append(run_load(url, body, clients=4, duration_s=120,
                                                                       label="scale", stop=stop)))
        worker.start()
        try:
            t0 = time.monotonic()
            scaled_up = _wait_for(lambda: _replicas("mrgen-scale") == 2, 120)
            print(f"2 replicas after {time.monotonic() - t0:.1f} s of load")
        finally:
            stop.set()
            worker.join(timeout=150)
        assert scaled_up, "the generator never reached 2 replicas under load"
        assert loads and loads[0].ok > 0 and loads[0].error_count == 0, loads[0].summary() if loads else None
        t0 = time.monotonic()
        assert _wait_for(lambda: _replicas("mrgen-scale") == 1, 120), "the generator never scaled back to 1"
        print(f"back to 1 replica {time.monotonic() - t0:.1f} s after the load stopped")
    finally:
        serve.delete("mrgen-scale")


def test_requests_beyond_the_queue_get_503_and_the_service_recovers(serve_port, serve_bundle):
    import concurrent.futures

    import httpx
    from ray import serve

    from mrgen.serving.app import GeneratorAppArgs, build_app
    from mrgen.serving.client import request_body

    app = build_app(GeneratorAppArgs(model=serve_bundle, config="tiny", overrides=[
        "autoscaling.min_replicas=1", "autoscaling.max_replicas=1", "max_ongoing_requests=1",
        "max_queued_requests=1", "batching.max_batch_size=1", "default_steps=30"]))
    serve.run(app, name="mrgen-capacity", route_prefix="/capacity")
    url = f"http://127.0.0.1:{serve_port}/capacity/v1/generate"
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 8:40] = 1
    body = request_body(mask, "T1", {1: "liver"}, n=2)
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda _: httpx.post(url, json=body, timeout=120), range(8)))
        codes = sorted(r.status_code for r in responses)
        print(codes)
        refused = [r for r in responses if r.status_code == 503]
        assert refused and 200 in codes and set(codes) <= {200, 503}, codes  # beyond the queue: refused, not failed
        assert all("max_queued_requests" in r.json()["detail"] and r.headers.get("retry-after") for r in refused)
        again = httpx.post(url, json=body, timeout=120)
        assert again.status_code == 200, again.text
    finally:
        serve.delete("mrgen-capacity")


def test_loadgen_refuses_non_loopback():
    from mrgen.serving.loadgen import LoadError, check_loopback

    check_loopback("http://127.0.0.1:8000")
    check_loopback("http://localhost:8000")
    with pytest.raises(LoadError, match="loopback"):
        check_loopback("http://10.1.2.3:8000")


"""Connecting to Ray: a local cluster on this machine, or an existing one by address (``ray://`` or ``auto``).

Storage credentials travel to every worker through the runtime environment, because variables set in the
driver after ``ray.init`` never reach them.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from pydantic import Field

from mrgen.platform.config import ConfigBase
from mrgen.platform.console import current

# Ray Data 2.60's default Parquet reader (datasource V2) spends ~30 s before the first batch of a small DB
# (measured by `mrgen bench db`: 512 slices in ~30 s vs 0.9 s with V1); MRGen-DB reads use V1.
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S: Ray Train's controller collects a worker's ray.train.report only when it
# polls (default every 2 s, result queue of 1), so each report blocked its worker up to 2 s (measured: 2.0 s per
# back-to-back report; half the wall time of a stage reporting every 10 steps).
_DEFAULT_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1",
                "RAY_DATA_USE_DATASOURCE_V2": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
_FORWARDED = ("RAY_DATA_USE_DATASOURCE_V2", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "AWS_ACCESS_KEY_ID",
              "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION",
              "MRGEN_S3_ENDPOINT", "HF_HUB_OFFLINE", "OMP_NUM_THREADS")


class RayConfig(ConfigBase):
    """Where jobs run."""

    section = "ray"
    address: str | None = Field(None, description="existing cluster ('auto', 'ray://host:10001'); "
                                                  "None starts a local one")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local cluster (default: all)")
    object_store_memory_mb: int | None = Field(None, ge=64, description="object store of a local cluster")
    no_progress_timeout_s: float = Field(600.0, gt=0,
                                         description="Ray Data fails a dataset that makes no progress this long")


def runtime_env_vars() -> dict[str, str]:
    return {k: os.environ[k] for k in _FORWARDED if os.environ.get(k)}


def init_ray(config: RayConfig | None = None, **overrides: Any):
    """Start or join Ray once per process; returns the context (a no-op when already connected)."""
    for key, value in _DEFAULT_ENV.items():
        os.environ.setdefault(key, value)
    import ray  # Ray is imported where it is used: the CLI imports this module at its start-up

    if ray.is_initialized():
        return ray.get_runtime_context()
    config = config or RayConfig()
    kwargs: dict[str, Any] = dict(
        address=config.address,
        runtime_env={"env_vars": runtime_env_vars()},
        log_to_driver=os.environ.get("MRGEN_RAY_LOG_TO_DRIVER", "1") == "1",
        ignore_reinit_error=True,
    )
    if config.address is None:
        kwargs.update(include_dashboard=False, num_cpus=config.num_cpus)
        if config.object_store_memory_mb:
            kwargs["object_store_memory"] = config.object_store_memory_mb * 1024 * 1024
    kwargs.update(overrides)
    ctx = ray.init(**kwargs)
    context = ray.data.DataContext.get_current()
    context.execution_no_progress_timeout_s = config.no_progress_timeout_s
    context.use_datasource_v2 = os.environ["RAY_DATA_USE_DATASOURCE_V2"] == "1"
    return ctx


@contextlib.contextmanager
def ray_stopped_after():
    """Shut down, when the body ends, a Ray the body started; inside a console this keeps the workers' last lines
    in its log rather than on the terminal."""
    import ray

    started = not ray.is_initialized()
    try:
        yield
    finally:
        if started and ray.is_initialized():
            ray.shutdown()


def wait_for(refs: dict[str, Any], label: str, minutes: float | None = None) -> dict[str, Any]:
    """Results of named Ray tasks, with a progress bar on the running command's console: over ``minutes`` (the
    tasks' budget) or, without one, a count of those finished."""
    import ray

    started, done, pending = time.monotonic(), {}, dict(refs)
    while pending:
        ready, _ = ray.wait(list(pending.values()), num_returns=1, timeout=5)
        for ref in ready:
            name = next(n for n, r in pending.items() if r == ref)
            done[name] = ray.get(pending.pop(name))
        console = current()
        if console is not None:
            elapsed = (time.monotonic() - started) / 60
            if minutes:
                total = max(0.1, round(minutes, 1))
                console.progress(label, min(round(elapsed, 1), total) if pending else total, total,
                                 f"min; {len(done)}/{len(refs)} done")
            else:
                console.progress(label, len(done), len(refs), f"{elapsed:.1f} min")
    return done

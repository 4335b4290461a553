"""A training node dies: Ray Train + DeepSpeed with two workers, one per node, loses the worker node (killed, not
drained); ``FailureConfig`` restarts the worker group on the replacement node, which resumes from the latest
checkpoint in object storage and ends at the planned step. Runs on a :class:`~mrgen.jobs.bench.elastic.LocalCluster`
of ``TRAIN_HEAD_CPUS``."""
from __future__ import annotations

import time
from typing import Any

from mrgen.jobs.bench.elastic import Background, LocalCluster, wait_until
from mrgen.jobs.train.config import TrainConfig
from mrgen.jobs.train.run import run_training
from mrgen.platform import storage

# A worker takes 2 CPUs, so each node holds one; the head's third CPU is for the data reads (a 1-CPU task each).
TRAIN_HEAD_CPUS, TRAIN_NODE_CPUS, WORKER_CPUS = 3, 2, 2
STAGE = "vae"


def train_settings(steps: int, every: int) -> list[str]:
    """The tiny preset's autoencoder stage, 2 workers, a checkpoint every ``every`` steps; data streamed from the DB
    (not cached in the object store, whose blocks on a lost node would have to be rebuilt); 2 warm-up steps (fewer
    in a run of under 3 steps)."""
    return ["num_workers=2", f"cpus_per_worker={WORKER_CPUS}", f"{STAGE}.max_steps={steps}",
            f"{STAGE}.warmup_steps={min(2, steps - 1)}", f"checkpoint_every={every}", "log_every=5", "sample_every=0",
            "sample_steps=2", "sample_count=2", "max_failures=2", "cache_data=false"]


def train_config(steps: int, every: int) -> TrainConfig:
    """Both training scenarios' config (:func:`train_settings` on the tiny preset)."""
    return TrainConfig.load("tiny", train_settings(steps, every))


def checkpoints(out: str) -> int:
    names = storage.listdir(storage.join(out, STAGE))
    return sum(n.startswith("checkpoint_") and not n.endswith(".json") for n in names)


def train(db: str, out: str, steps: int, every: int) -> tuple[Any, float]:
    """(TrainResult, wall seconds) of the stage in this process."""
    start = time.perf_counter()
    result = run_training(train_config(steps, every), db, out, STAGE)
    return result, time.perf_counter() - start


def _figures(result, seconds: float, steps: int) -> dict[str, Any]:
    return {"planned_steps": steps, "steps": result.steps, "restarts_from": result.restarts,
            "reported_steps": [h["step"] for h in result.history], "checkpoint": result.checkpoint_path,
            "wall_s": round(seconds, 1)}


def training_undisturbed(cluster: LocalCluster, db: str, out: str, steps: int = 60, every: int = 10) -> dict[str, Any]:
    cluster.workers(1, cpus=TRAIN_NODE_CPUS)
    return _figures(*train(db, out, steps, every), steps)


def training_node_dies(cluster: LocalCluster, db: str, out: str, steps: int = 60, every: int = 10) -> dict[str, Any]:
    """The worker node is killed once two checkpoints are in storage (so the first is complete), then a replacement
    node joins, as an autoscaler would start one."""
    (node,) = cluster.workers(1, cpus=TRAIN_NODE_CPUS)
    job = Background(lambda: train(db, out, steps, every))
    wait_until(lambda: job.done() or checkpoints(out) >= 2, 900, "two training checkpoints")
    in_storage = checkpoints(out)  # at most keep_checkpoints: older ones are deleted
    cluster.kill(node)
    cluster.add(TRAIN_NODE_CPUS)
    return {**_figures(*job.result(), steps), "checkpoints_in_storage_at_kill": in_storage}

"""Training throughput: Ray Train + DeepSpeed against a bare PyTorch loop on the same model and batch.

Both train the stage-2 UNet (the paper's longest stage) of the same bundle at the same micro-batch with one
torch thread: the bare loop on tensors already in memory (pure compute, the upper bound), Ray Train on one
CPU worker streaming the MRGen-DB through Ray Data. Reported: steady-state samples/s of each (the first
logging interval, which includes worker and dataset start-up, is left out), their ratio with its 95 % bootstrap
interval (medians of the rates per logging interval, the bare loop timed in blocks of as many steps), and the share
of step time the Ray Train worker spent waiting for data.
"""
from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrgen.datasets.phantom import PhantomConfig, build_phantom_db
from mrgen.jobs.train.config import TrainConfig
from mrgen.jobs.train.data import decode, read_slices
from mrgen.jobs.train.run import run_training
from mrgen.jobs.train.stages import build_task
from mrgen.models.bundle import ModelBundle, build_random_bundle
from mrgen.models.configs import model_config
from mrgen.models.metrics.bootstrap import ratio_interval
from mrgen.platform.cluster import init_ray
from mrgen.platform.config import ConfigBase


def bare_loop(bundle_uri: str, images: np.ndarray, prompts: list[str], steps: int, lr: float,
              batch_size: int, block: int) -> list[float]:
    """samples/s of a plain torch AdamW loop on the same task (in-memory batches, no Ray, no DeepSpeed), per block of
    ``block`` steps (as Ray Train's logging intervals)."""
    bundle = ModelBundle.load(bundle_uri, parts=("vae", "text_encoder", "scheduler"))
    task = build_task("unet", model_config("tiny"), bundle, 1e-4, 0.2, 0.1, seed=0)
    optimizer = torch.optim.AdamW([p for p in task.trainable.parameters() if p.requires_grad], lr=lr)
    model = task.trainable
    n = len(images)

    def step(i: int) -> None:
        idx = [(i * batch_size + j) % n for j in range(batch_size)]
        batch = {"image": images[idx], "prompt": [prompts[k] for k in idx]}
        loss, _ = task.loss(model, batch, torch.device("cpu"), torch.float32)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    for i in range(3):  # warm-up
        step(i)
    rates = []
    for first in range(0, steps, block):
        start = time.perf_counter()
        for i in range(first, min(first + block, steps)):
            step(i)
        rates.append((min(first + block, steps) - first) * batch_size / (time.perf_counter() - start))
    return rates


def train_bench_configs(db_uri: str | None = None, steps: int = 40, batch_size: int = 8,
                        log_every: int = 5) -> dict[str, ConfigBase]:
    """What :func:`run_train_bench` builds, by name, without building anything: ``train`` (the Ray Train run) and,
    without ``db_uri``, ``phantom`` (the DB it streams).

    The run is the tiny preset's UNet stage for ``steps`` steps at ``batch_size`` on one worker and one torch thread,
    one checkpoint at the end, without warm-up: the bare loop it is compared with runs at a constant learning rate,
    and the preset's 100 warm-up steps are longer than the benchmark (a step costs the same at any learning rate, so
    samples/s does not depend on the schedule)."""
    train = TrainConfig.load("tiny", [
        "num_workers=1", "cpus_per_worker=1", "torch_threads=1", f"unet.max_steps={steps}", "unet.warmup_steps=0",
        f"unet.batch_size={batch_size}", f"log_every={log_every}", f"checkpoint_every={steps}", "sample_every=0"])
    return {"train": train} if db_uri else {"train": train, "phantom": PhantomConfig.load("tiny")}


def run_train_bench(db_uri: str | None = None, steps: int = 40, batch_size: int = 8,
                    log_every: int = 5) -> dict[str, Any]:
    configs = train_bench_configs(db_uri, steps, batch_size, log_every)  # a bad setting fails before Ray starts
    config = configs["train"]
    torch.set_num_threads(1)
    init_ray()
    work = Path(tempfile.mkdtemp(prefix="mrgen-train-bench-"))
    if db_uri is None:
        db_uri = str(work / "db")
        build_phantom_db(db_uri, configs["phantom"])
    bundle_uri = str(work / "init-bundle")
    build_random_bundle("tiny", seed=0).save(bundle_uri)

    rows = read_slices(db_uri, ["height", "width", "image", "prompt"], split="train").take_batch(64,
                                                                                                 batch_format="numpy")
    data = decode(rows)
    bare_rates = bare_loop(bundle_uri, data["image"], data["prompt"], steps, config.unet.lr, batch_size, log_every)
    bare = statistics.median(bare_rates)
    print(f"[bench train] bare PyTorch loop: {bare:.1f} samples/s (median of {len(bare_rates)} blocks)", flush=True)

    try:
        result = run_training(config, db_uri, str(work / "out"), "unet", init=bundle_uri)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    steady = result.history[1:] or result.history
    ray_rate = statistics.median(h["samples_per_s"] for h in steady)
    ratio = ratio_interval([h["samples_per_s"] for h in steady], bare_rates)
    wait = statistics.mean(h["data_wait_fraction"] for h in steady)
    first_wait = result.history[0]["data_wait_fraction"]
    figures = {
        "model": "tiny UNet (stage 2)", "batch_size": batch_size, "steps": steps, "workers": 1,
        "bare_samples_per_s": round(bare, 2), "ray_deepspeed_samples_per_s": round(ray_rate, 2),
        "ratio_vs_bare": round(ratio["value"], 3),
        "ratio_interval_95": [round(ratio["low"], 3), round(ratio["high"], 3)], "data_wait_fraction": round(wait, 4),
        "data_wait_fraction_first_interval": round(first_wait, 4), "goal": "ratio >= 0.9, data wait < 0.05",
        "wall_s": round(result.seconds, 1),
    }
    print(f"[bench train] Ray Train + DeepSpeed: {ray_rate:.1f} samples/s (steady state, median of "
          f"{len(steady)} intervals) = {ratio['value']:.2f}x the bare loop, 95 % interval "
          f"[{ratio['low']:.2f}, {ratio['high']:.2f}]; data wait {wait:.1%} of step time "
          f"({first_wait:.0%} in the first interval, start-up)", flush=True)
    return figures

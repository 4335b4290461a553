"""The per-worker training loop: one DeepSpeed engine per Ray Train worker, the same code on CPU and GPU."""
from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrgen.jobs.train import checkpoint as ckpt
from mrgen.jobs.train.config import TrainConfig
from mrgen.jobs.train.data import BatchStream
from mrgen.jobs.train.stages import StageTask, build_task, trained_model
from mrgen.platform.budget import TimeBudget, units_that_fit

# What each stage takes from the previous stage's bundle.
INIT_PARTS = {"vae": None, "unet": ("vae", "text_encoder", "scheduler"),
              "controlnet": ("vae", "text_encoder", "unet", "scheduler")}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def deepspeed_config(config: TrainConfig, stage: str, world_size: int) -> dict[str, Any]:
    s = config.stage(stage)
    precision = config.resolved_precision()
    return {
        "train_micro_batch_size_per_gpu": s.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "train_batch_size": s.batch_size * config.grad_accum * world_size,
        # torch_adam: torch.optim.AdamW, which runs everywhere (DeepSpeed's fused Adam needs a CUDA build).
        "optimizer": {"type": "AdamW", "params": {"lr": s.lr, "betas": list(config.adam_betas), "eps": config.adam_eps,
                                                  "weight_decay": config.weight_decay, "torch_adam": True}},
        "zero_optimization": {"stage": config.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "gradient_clipping": config.grad_clip,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def cosine_lambda(warmup: int, total: int | Callable[[], int], floor: float):
    """Linear warm-up, then cosine decay to ``floor`` at step ``total`` (a callable when a time budget moves it)."""
    steps = total if callable(total) else lambda: total

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps() - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


class StepPlan:
    """The run's last step: ``max_steps``, or fewer when the stage's ``max_minutes`` say so. The budget counts from
    the loop's start (start-up before it is the caller's to allow for); replanned at log intervals from the mean step
    time since the first step (checkpoints and sample grids included); all ranks take the smallest plan."""

    def __init__(self, max_steps: int, minutes: float | None):
        self.max_steps, self.minutes = max_steps, minutes
        self.total = max_steps
        self.spent_before = 0.0  # budget seconds spent before a restart of this run
        self.budget: TimeBudget | None = None
        self._first: tuple[int, float] | None = None  # (step, time) after the first step of this attempt

    def start(self) -> None:
        self.budget = TimeBudget.minutes(self.minutes, self.spent_before)

    def stepped(self, step: int) -> None:
        if self._first is None:
            self._first = (step, time.monotonic())

    def replan(self, step: int, device: torch.device, world: int) -> int:
        if self.budget is None or self._first is None or step <= self._first[0]:
            return self.total
        per_step = (time.monotonic() - self._first[1]) / (step - self._first[0])
        planned = min(self.max_steps, step + units_that_fit(self.budget.remaining(), per_step))
        if world > 1:
            value = torch.tensor([planned], dtype=torch.int64, device=device)
            torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
            planned = int(value.item())
        self.total = planned
        return planned

    def saved(self, run_id: str) -> dict[str, Any]:
        return {"run_id": run_id, "steps": self.total,
                "train_seconds": self.budget.elapsed() if self.budget is not None else None}


class Examples:
    """A few rows kept from the first batches for sample grids (distinct prompts; masked rows for stage 3)."""

    def __init__(self, stage: str, count: int):
        self.stage, self.count = stage, count
        self.rows: list[dict[str, Any]] = []
        self._keys: set[str] = set()

    @property
    def full(self) -> bool:
        return len(self.rows) >= self.count

    def offer(self, batch: dict[str, Any]) -> None:
        for i in range(len(batch["image"])):
            if self.full:
                return
            if self.stage == "controlnet" and not batch["mask"][i].any():  # show masks with organs in them
                continue
            key = batch["prompt"][i].split(";")[0] if self.stage == "unet" else str(len(self.rows))
            if key in self._keys:
                continue
            self._keys.add(key)
            self.rows.append({k: v[i] for k, v in batch.items()})

    def batch(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image": np.stack([r["image"] for r in self.rows])}
        if self.stage != "vae":
            out["prompt"] = [r["prompt"] for r in self.rows]
        if self.stage == "controlnet":
            out["mask"] = np.stack([r["mask"] for r in self.rows])
            out["organ_map"] = [r["organ_map"] for r in self.rows]
        return out


class Metrics:
    """Prometheus gauges of this run (rank 0), written to ``metrics.prom`` at the end."""

    def __init__(self, stage: str):
        from mrgen.platform import metrics

        labels = ("stage",)
        self.loss = metrics.gauge("mrgen_train_loss", "mean training loss of the last interval", labels).labels(stage)
        self.lr = metrics.gauge("mrgen_train_learning_rate", "current learning rate", labels).labels(stage)
        self.rate = metrics.gauge("mrgen_train_samples_per_second", "samples/s over all workers", labels).labels(stage)
        self.wait = metrics.gauge("mrgen_train_data_wait_fraction", "share of step time waiting for data",
                                  labels).labels(stage)
        self.steps = metrics.counter("mrgen_train_steps", "optimizer steps done", labels).labels(stage)

    def update(self, m: dict[str, Any], steps: int) -> None:
        self.loss.set(m["loss"])
        self.lr.set(m["lr"])
        self.rate.set(m["samples_per_s"])
        self.wait.set(m["data_wait_fraction"])
        self.steps.inc(steps)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_loop_per_worker(args: dict[str, Any]) -> None:
    """Ray Train entry: ``args`` = config (dict), stage, init bundle URI or None, run URI, run id."""
    import deepspeed
    import ray.train
    import ray.train.torch


    config = TrainConfig.model_validate(args["config"])
    stage, run_uri = args["stage"], args["run_uri"]
    settings = config.stage(stage)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config.torch_threads)
    device = ray.train.torch.get_device()
    dtype = DTYPES[config.resolved_precision()]

    bundle = None
    if args.get("init"):
        from mrgen.models.bundle import ModelBundle

        bundle = ModelBundle.load(args["init"], device="cpu", dtype=torch.float32, parts=INIT_PARTS[stage])
        bundle.manifest.update(args.get("condition") or {})  # the controller's organ vocabulary
    task: StageTask = build_task(stage, config.build_model_config(), bundle, config.kl_weight, config.augment_p,
                                 config.prompt_drop_p, seed=config.seed, pair_augment_p=config.pair_augment_p)
    task.to(device, dtype)
    frozen_at_start = task.frozen_hashes()

    plan = StepPlan(settings.max_steps, settings.max_minutes)
    params = [p for p in task.trainable.parameters() if p.requires_grad]
    engine, _, _, lr_schedule = deepspeed.initialize(
        model=task.trainable, model_parameters=params, config=deepspeed_config(config, stage, world),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
            opt, cosine_lambda(settings.warmup_steps, lambda: plan.total, config.min_lr_ratio)))
    model = trained_model(task)

    stream = BatchStream(ray.train.get_dataset_shard("train"), settings.batch_size, config.shuffle_buffer,
                         config.seed + rank)
    state: dict[str, Any] = {"step": 0, "history": [], "restored_from": [], "run_id": args["run_id"], "stage": stage}
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as folder:
            state, rank_state = ckpt.load(Path(folder), engine, rank)
        state["restored_from"] = state.get("restored_from", []) + [state["step"]]
        saved_plan = state.get("plan", {})
        if saved_plan.get("run_id") == args["run_id"]:  # Ray Train restarted this run: same plan, budget partly spent
            plan.total, plan.spent_before = saved_plan["steps"], saved_plan["train_seconds"] or 0.0
        stream.skip_to(rank_state["position"])
        ckpt.set_rng_state(rank_state["rng"])
        if rank == 0:
            print(f"[train {stage}] resumed from step {state['step']} (epoch {rank_state['position']['epoch']})",
                  flush=True)
    else:
        _seed_all(config.seed * 1000 + rank + 1)

    metrics = Metrics(stage) if rank == 0 else None
    examples = Examples(stage, config.sample_count)
    step = start_step = state["step"]
    interval = {"loss": 0.0, "micro": 0, "steps": 0, "t0": time.perf_counter(), "wait0": stream.wait_s}
    engine.train()
    plan.start()
    while step < plan.total:
        for _ in range(config.grad_accum):
            batch = stream.next()
            if rank == 0 and not examples.full:
                examples.offer(batch)
            loss, _parts = task.loss(engine, batch, device, dtype)
            engine.backward(loss)
            engine.step()
            interval["loss"] += float(loss.detach())
            interval["micro"] += 1
        step += 1
        interval["steps"] += 1
        plan.stepped(step)
        if config.fail_at_step is not None and step == config.fail_at_step and start_step == 0 and rank == 0:
            raise RuntimeError(f"injected failure at step {step} (train.fail_at_step, tests only)")

        if step % config.log_every == 0 and step < plan.total:
            plan.replan(step, device, world)
        last = step >= plan.total
        do_log = step % config.log_every == 0 or last
        do_ckpt = step % config.checkpoint_every == 0 or last
        if config.sample_every and step % config.sample_every == 0 or last:
            if rank == 0 and examples.rows:
                grid_start = time.perf_counter()
                _write_grid(stage, task, model, bundle, examples, config, run_uri, step)
                interval["t0"] += time.perf_counter() - grid_start  # sampling is not training step time
        if not (do_log or do_ckpt):
            continue
        report = _interval_metrics(interval, stream, lr_schedule, settings.batch_size * config.grad_accum * world,
                                   device, world)
        report.update(step=step, epoch=stream.epoch, prompt_drop_rate=task.dropped / max(1, task.prompts_seen),
                      prompts_seen=task.prompts_seen)
        state["step"] = step
        # `mrgen train --resume` starts a new run (new run id) from the checkpoint: new max_steps, fresh budget
        state["plan"] = plan.saved(args["run_id"])
        state["history"].append(report)
        if rank == 0:
            metrics.update(report, interval["steps"])
            print(f"[train {stage}] step {step}/{plan.total} loss={report['loss']:.4f} lr={report['lr']:.3g} "
                  f"samples/s={report['samples_per_s']:.1f} data_wait={report['data_wait_fraction']:.1%}", flush=True)
        interval = {"loss": 0.0, "micro": 0, "steps": 0, "t0": time.perf_counter(), "wait0": stream.wait_s}
        if last:
            state["frozen_hashes"] = {"start": frozen_at_start, "end": task.frozen_hashes()}
            state["prompt_drop"] = {"dropped": task.dropped, "seen": task.prompts_seen}
            if rank == 0:
                from mrgen.platform import metrics as prom
                from mrgen.platform.storage import join

                prom.write_metrics(join(run_uri, "metrics.prom"))
        if do_ckpt:
            folder = Path(tempfile.mkdtemp(prefix=f"mrgen-{stage}-ckpt-"))
            try:
                ckpt.save(folder, engine, rank, state, {"position": stream.position, "rng": ckpt.rng_state()},
                          model, stage)
                ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        else:
            ray.train.report(report)  # its time counts in the next interval's samples/s: it is paid every interval
        if do_ckpt:
            interval["t0"] = time.perf_counter()  # checkpoint time is not step time


def _interval_metrics(interval: dict[str, Any], stream: BatchStream, lr_schedule, samples_per_step: int,
                      device: torch.device, world: int) -> dict[str, Any]:
    elapsed = max(1e-9, time.perf_counter() - interval["t0"])
    loss = torch.tensor([interval["loss"] / max(1, interval["micro"])], dtype=torch.float64, device=device)
    if world > 1:
        torch.distributed.all_reduce(loss)
        loss /= world
    return {"loss": float(loss.item()), "lr": float(lr_schedule.get_last_lr()[0]),
            "samples_per_s": samples_per_step * interval["steps"] / elapsed,
            "data_wait_fraction": (stream.wait_s - interval["wait0"]) / elapsed,
            "peak_memory_mib": _peak_memory_mib(device)}


def _peak_memory_mib(device: torch.device) -> float | None:
    """Peak memory this rank's tensors took on its GPU so far (None on the CPU)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def _write_grid(stage: str, task: StageTask, model, bundle, examples: Examples, config: TrainConfig,
                run_uri: str, step: int) -> None:
    from mrgen.jobs.train.grid import sample_grid
    from mrgen.platform.storage import join, write_bytes

    try:
        png = sample_grid(stage, task, model, bundle, examples.batch(), config.sample_steps, config.seed)
    except ImportError as exc:  # the sampling pipeline may not be installed in a minimal deployment
        print(f"[train {stage}] no sample grid at step {step}: {exc}", flush=True)
        return
    write_bytes(join(run_uri, "samples", f"step_{step:06d}.png"), png)
    if os.environ.get("MRGEN_TRAIN_VERBOSE"):
        print(f"[train {stage}] sample grid for step {step} written", flush=True)

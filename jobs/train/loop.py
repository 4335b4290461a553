"""The per-worker training loop: one DeepSpeed engine per Ray Train worker, the same code on CPU and GPU."""
from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch

from mrgen.jobs.train import checkpoint as ckpt
from mrgen.jobs.train.config import TrainConfig
from mrgen.jobs.train.data import BatchStream
from mrgen.jobs.train.grid import sample_grid
from mrgen.jobs.train.progress import write_progress
from mrgen.jobs.train.stages import StageTask, build_task, trained_model
from mrgen.models.bundle import ModelBundle
from mrgen.platform import metrics as prom
from mrgen.platform.budget import TimeBudget, units_that_fit
from mrgen.platform.storage import join, write_bytes

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
        labels = ("stage",)
        self.loss = prom.gauge("mrgen_train_loss", "mean training loss of the last interval", labels).labels(stage)
        self.lr = prom.gauge("mrgen_train_learning_rate", "current learning rate", labels).labels(stage)
        self.rate = prom.gauge("mrgen_train_samples_per_second", "samples/s over all workers", labels).labels(stage)
        self.wait = prom.gauge("mrgen_train_data_wait_fraction", "share of step time waiting for data",
                               labels).labels(stage)
        self.steps = prom.counter("mrgen_train_steps", "optimizer steps done", labels).labels(stage)

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


@dataclass
class TrainState:
    """What ``train_state.json`` holds (rank 0's copy): a checkpoint restores it whole, a run's result reads it."""

    step: int = 0
    """optimizer steps done (saved at log intervals)"""
    history: list[dict[str, Any]] = field(default_factory=list)
    """one report per logged interval"""
    restored_from: list[int] = field(default_factory=list)
    """the step of each restore from a checkpoint"""
    run_id: str = ""
    """the run that started from step 0 (a `--resume` run keeps it; its own id is in ``plan``)"""
    stage: str = ""
    plan: dict[str, Any] | None = None
    """:meth:`StepPlan.saved` at the last report: run id, planned steps, budget seconds spent"""
    frozen_hashes: dict[str, dict[str, str]] | None = None
    """at the end: hashes of the frozen parts at the start and the end (they must not move)"""
    prompt_drop: dict[str, int] | None = None
    """at the end: prompts replaced by '' and prompts seen"""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        return cls(**data)


@dataclass
class Interval:
    """Loss, steps and time since the last report (sampling and checkpoint time taken out)."""

    wait0: float
    """the stream's data wait at the start"""
    loss: float = 0.0
    micro: int = 0
    steps: int = 0
    t0: float = field(default_factory=time.perf_counter)

    def metrics(self, stream: BatchStream, lr_schedule, samples_per_step: int, device: torch.device,
                world: int) -> dict[str, Any]:
        elapsed = max(1e-9, time.perf_counter() - self.t0)
        loss = torch.tensor([self.loss / max(1, self.micro)], dtype=torch.float64, device=device)
        if world > 1:
            torch.distributed.all_reduce(loss)
            loss /= world
        return {"loss": float(loss.item()), "lr": float(lr_schedule.get_last_lr()[0]),
                "samples_per_s": samples_per_step * self.steps / elapsed,
                "data_wait_fraction": (stream.wait_s - self.wait0) / elapsed,
                "peak_memory_mib": _peak_memory_mib(device)}


class Trainer:
    """One Ray Train worker's run of one stage, as torchtitan's trainer in small: :meth:`build` the task and its
    DeepSpeed engine, :meth:`restore` a checkpoint (if Ray Train hands one), then :meth:`train` =
    :meth:`step` until the plan's last step, with :meth:`report` and :meth:`checkpoint` at log intervals."""

    def __init__(self, args: dict[str, Any]):
        """``args`` = config (dict), stage, init bundle URI or None, condition, run URI, run id."""
        self.args = args
        self.config = TrainConfig.model_validate(args["config"])
        self.stage, self.run_uri, self.run_id = args["stage"], args["run_uri"], args["run_id"]
        self.settings = self.config.stage(self.stage)
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.state = TrainState(run_id=self.run_id, stage=self.stage)
        self.plan = StepPlan(self.settings.max_steps, self.settings.max_minutes)

    def build(self) -> None:
        """The stage's task (from the previous stage's bundle), its DeepSpeed engine and this rank's data stream."""
        import deepspeed  # the Ray Train workers' only: the driver, which imports this module, never loads it

        config, stage = self.config, self.stage
        torch.set_num_threads(config.torch_threads)
        self.device = ray.train.torch.get_device()
        self.dtype = DTYPES[config.resolved_precision()]
        self.bundle = None
        if self.args.get("init"):
            self.bundle = ModelBundle.load(self.args["init"], device="cpu", dtype=torch.float32,
                                           parts=INIT_PARTS[stage] + ((stage,) if config.warm_start else ()))
            self.bundle.manifest.update(self.args.get("condition") or {})  # the controller's organ vocabulary
        self.task: StageTask = build_task(stage, config.build_model_config(), self.bundle, config.kl_weight,
                                          config.augment_p, config.prompt_drop_p, seed=config.seed,
                                          pair_augment_p=config.pair_augment_p,
                                          controller_timesteps=config.controller_timesteps,
                                          warm_start=config.warm_start)
        self.task.to(self.device, self.dtype)
        self.frozen_at_start = self.task.frozen_hashes()
        params = [p for p in self.task.trainable.parameters() if p.requires_grad]
        self.engine, _, _, self.lr_schedule = deepspeed.initialize(
            model=self.task.trainable, model_parameters=params, config=deepspeed_config(config, stage, self.world),
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
                opt, cosine_lambda(self.settings.warmup_steps, lambda: self.plan.total, config.min_lr_ratio)))
        self.model = trained_model(self.task)
        self.stream = BatchStream(ray.train.get_dataset_shard("train"), self.settings.batch_size,
                                  config.shuffle_buffer, config.seed + self.rank)
        self.metrics = Metrics(stage) if self.rank == 0 else None
        self.examples = Examples(stage, config.sample_count)

    def restore(self) -> None:
        """Engine, train state, data position and RNG from Ray Train's checkpoint; fresh seeds without one."""
        restored = ray.train.get_checkpoint()
        if restored is None:
            _seed_all(self.config.seed * 1000 + self.rank + 1)
            return
        with restored.as_directory() as folder:
            saved, rank_state = ckpt.load(Path(folder), self.engine, self.rank)
        self.state = TrainState.from_json(saved)
        self.state.restored_from.append(self.state.step)
        saved_plan = self.state.plan or {}
        if saved_plan.get("run_id") == self.run_id:  # Ray Train restarted this run: same plan, budget partly spent
            self.plan.total, self.plan.spent_before = saved_plan["steps"], saved_plan["train_seconds"] or 0.0
        self.stream.skip_to(rank_state["position"])
        ckpt.set_rng_state(rank_state["rng"])
        if self.rank == 0:
            print(f"[train {self.stage}] resumed from step {self.state.step} "
                  f"(epoch {rank_state['position']['epoch']})", flush=True)

    def train(self) -> None:
        self.build()
        self.restore()
        self.start_step = self.state.step
        self.interval = Interval(self.stream.wait_s)
        self.engine.train()
        self.plan.start()
        while self.state.step < self.plan.total:
            self.step()
            self.after_step()

    def step(self) -> None:
        """One optimizer step: ``grad_accum`` micro-batches (rank 0 keeps a few rows for sample grids)."""
        for _ in range(self.config.grad_accum):
            batch = self.stream.next()
            if self.rank == 0 and not self.examples.full:
                self.examples.offer(batch)
            loss, _parts = self.task.loss(self.engine, batch, self.device, self.dtype)
            self.engine.backward(loss)
            self.engine.step()
            self.interval.loss += float(loss.detach())
            self.interval.micro += 1
        self.state.step += 1
        self.interval.steps += 1
        self.plan.stepped(self.state.step)

    def after_step(self) -> None:
        """Fault injection, replanning, sample grids, then at log and checkpoint steps a report."""
        config, step = self.config, self.state.step
        injected = config.fail_at_step is not None and step == config.fail_at_step
        if injected and self.start_step == 0 and self.rank == 0:
            raise RuntimeError(f"injected failure at step {step} (train.fail_at_step, tests only)")
        if step % config.log_every == 0 and step < self.plan.total:
            self.plan.replan(step, self.device, self.world)
        last = step >= self.plan.total
        do_ckpt = step % config.checkpoint_every == 0 or last
        if config.sample_every and step % config.sample_every == 0 or last:
            if self.rank == 0 and self.examples.rows:
                grid_start = time.perf_counter()
                self.sample_grid()
                self.interval.t0 += time.perf_counter() - grid_start  # sampling is not training step time
        if step % config.log_every == 0 or do_ckpt:
            report = self.report(last)
            if do_ckpt:
                self.checkpoint(report)
                self.interval.t0 = time.perf_counter()  # checkpoint time is not step time
            else:
                ray.train.report(report)  # its time counts in the next interval's samples/s: it is paid every interval

    def report(self, last: bool) -> dict[str, Any]:
        """The interval's metrics into the state's history (rank 0: gauges and a console line); a new interval."""
        config, step = self.config, self.state.step
        samples_per_step = self.settings.batch_size * config.grad_accum * self.world
        report = self.interval.metrics(self.stream, self.lr_schedule, samples_per_step, self.device, self.world)
        report.update(step=step, epoch=self.stream.epoch,
                      prompt_drop_rate=self.task.dropped / max(1, self.task.prompts_seen),
                      prompts_seen=self.task.prompts_seen)
        # `mrgen train --resume` starts a new run (new run id) from the checkpoint: new max_steps, fresh budget
        self.state.plan = self.plan.saved(self.run_id)
        self.state.history.append(report)
        if self.rank == 0:
            self.metrics.update(report, self.interval.steps)
            print(f"[train {self.stage}] step {step}/{self.plan.total} loss={report['loss']:.4f} "
                  f"lr={report['lr']:.3g} samples/s={report['samples_per_s']:.1f} "
                  f"data_wait={report['data_wait_fraction']:.1%}", flush=True)
            write_progress(self.run_uri, {"run_id": self.run_id, "step": step, "total": self.plan.total,
                                          "loss": report["loss"]})
        self.interval = Interval(self.stream.wait_s)
        if last:
            self.state.frozen_hashes = {"start": self.frozen_at_start, "end": self.task.frozen_hashes()}
            self.state.prompt_drop = {"dropped": self.task.dropped, "seen": self.task.prompts_seen}
            if self.rank == 0:
                prom.write_metrics(join(self.run_uri, "metrics.prom"))
        return report

    def checkpoint(self, report: dict[str, Any]) -> None:
        """Every rank saves (DeepSpeed's save is collective) into a local folder that Ray Train reports."""
        folder = Path(tempfile.mkdtemp(prefix=f"mrgen-{self.stage}-ckpt-"))
        try:
            ckpt.save(folder, self.engine, self.rank, self.state.to_json(),
                      {"position": self.stream.position, "rng": ckpt.rng_state()}, self.model, self.stage)
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def sample_grid(self) -> None:
        stage, step = self.stage, self.state.step
        try:
            png = sample_grid(stage, self.task, self.model, self.bundle, self.examples.batch(),
                              self.config.sample_steps, self.config.seed)
        except ImportError as exc:  # the sampling pipeline may not be installed in a minimal deployment
            print(f"[train {stage}] no sample grid at step {step}: {exc}", flush=True)
            return
        write_bytes(join(self.run_uri, "samples", f"step_{step:06d}.png"), png)
        if os.environ.get("MRGEN_TRAIN_VERBOSE"):
            print(f"[train {stage}] sample grid for step {step} written", flush=True)


def train_loop_per_worker(args: dict[str, Any]) -> None:
    """Ray Train entry: ``args`` = config (dict), stage, init bundle URI or None, run URI, run id."""
    Trainer(args).train()


def _peak_memory_mib(device: torch.device) -> float | None:
    """Peak memory this rank's tensors took on its GPU so far (None on the CPU)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


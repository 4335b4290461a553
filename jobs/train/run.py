"""Driver of a training stage: a Ray Train ``TorchTrainer`` over the stage's data, then the model bundle.

Output layout under ``OUT``::

    OUT/<stage>/                  Ray Train run (checkpoints, latest k kept), samples/*.png, metrics.prom,
                                  history.json
    OUT/<stage>/bundle/           the bundle after this stage (stage 1: vae + text encoder; 2: + unet; 3: + controlnet)
    OUT/bundle/                   the newest bundle (after ``mrgen train all``: the complete model)

The same code runs 1 CPU worker, 2 CPU workers or N GPUs across nodes: only ``ScalingConfig`` changes.
"""
from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.train
import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from ray.train.torch import TorchTrainer

from mrgen.datasets.store import load_index, organ_first_ids, rank_organs
from mrgen.jobs.train.checkpoint import read_train_state
from mrgen.jobs.train.config import STAGES, TrainConfig
from mrgen.jobs.train.data import build_dataset, decode, read_slices
from mrgen.jobs.train.loop import train_loop_per_worker
from mrgen.jobs.train.progress import watch_progress
from mrgen.models.autoencoder import measure_latent_scaling
from mrgen.models.bundle import ModelBundle
from mrgen.models.manifest import DB_NAME, MANIFEST, db_record, new_manifest
from mrgen.models.condition import MaskCondition
from mrgen.models.text_encoder import TextEncoder
from mrgen.platform import storage
from mrgen.platform.cluster import RayConfig, init_ray
from mrgen.platform.provenance import code_version, command_line

PREVIOUS = {"unet": "vae", "controlnet": "unet"}


@dataclass
class TrainResult:
    stage: str
    run_uri: str
    bundle_uri: str
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    train_state: dict[str, Any] = field(default_factory=dict)
    checkpoint_path: str | None = None
    seconds: float = 0.0

    @property
    def restarts(self) -> list[int]:
        return list(self.train_state.get("restored_from", []))


def default_init(out_uri: str, stage: str) -> str | None:
    if stage not in PREVIOUS:
        return None
    return storage.join(out_uri, PREVIOUS[stage], "bundle")


def _check_run_folder(run_uri: str, resume: bool) -> None:
    existing = [n for n in storage.listdir(run_uri) if n not in ("samples",)]
    if existing and not resume:
        raise FileExistsError(f"{run_uri} already holds a training run ({', '.join(existing[:4])}): pass --resume to "
                              "continue it, or choose another --out")


def _storage(out_uri: str) -> tuple[str, Any]:
    if storage.is_local(out_uri):
        path = str(Path(storage.local_path(out_uri)).absolute())
        Path(path).mkdir(parents=True, exist_ok=True)
        return path, None
    fs, path = storage.arrow_filesystem(out_uri)
    return path, fs


def run_training(config: TrainConfig, db_uri: str, out_uri: str, stage: str, resume: bool = False,
                 init: str | None = None, ray_address: str | None = None) -> TrainResult:
    """Train one stage and write its bundle; returns what happened (history of reported metrics included)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: choose from {STAGES}")
    db_uri, out_uri = storage.absolute(db_uri), storage.absolute(out_uri)
    init = storage.absolute(init) if init else default_init(out_uri, stage)
    if init is not None and not storage.exists(init):
        raise FileNotFoundError(f"stage {stage!r} starts from the {PREVIOUS[stage]!r} stage's bundle, but {init} does "
                                f"not exist: train that stage first (mrgen train {PREVIOUS[stage]}) or pass --init")
    if config.warm_start and (stage == "vae" or not storage.exists(storage.join(init, stage, "config.json"))):
        raise ValueError(f"warm_start fine-tunes the --init bundle's own {stage} part, but "
                         + ("the autoencoder stage takes no --init" if stage == "vae" else f"{init} has none"))
    load_index(db_uri)  # not an MRGen-DB: said before Ray starts
    run_uri = storage.join(out_uri, stage)
    _check_run_folder(run_uri, resume)
    init_ray(RayConfig(address=ray_address))

    started = time.monotonic()
    settings = config.stage(stage)
    run_id = f"{stage}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    condition = organ_vocabulary(db_uri, config) if stage == "controlnet" else {}
    path, fs = _storage(out_uri)
    gpus = config.gpus_per_worker
    resources = {"CPU": config.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.model_dump(mode="json"), "stage": stage, "init": init,
                           "run_uri": run_uri, "run_id": run_id, "condition": condition},
        scaling_config=ray.train.ScalingConfig(num_workers=config.num_workers, use_gpu=gpus > 0,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=stage, storage_path=path, storage_filesystem=fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures)),
        datasets={"train": build_dataset(db_uri, config, stage)},
    )
    budget = f" (fewer if they do not fit in {settings.max_minutes:.1f} min)" if settings.max_minutes else ""
    print(f"[train {stage}] {config.num_workers} worker(s), {settings.max_steps} steps{budget}, batch "
          f"{settings.batch_size}x{config.grad_accum} per worker, ZeRO {config.zero_stage}, "
          f"{config.resolved_precision()} → {run_uri}", flush=True)
    with watch_progress(run_uri, run_id, f"train {stage}"):
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"stage {stage!r} finished without a checkpoint under {run_uri}")

    with result.checkpoint.as_directory() as folder:
        folder = Path(folder)
        train_state = read_train_state(folder)
        bundle = _assemble_bundle(config, stage, folder / "model" / stage, init, db_uri, train_state["run_id"])
        bundle.manifest.update(condition)
        bundle.manifest["training"] = training_record(bundle.manifest.get("training"), config, stage, db_uri,
                                                      train_state, time.monotonic() - started)
    bundle_uri = storage.join(run_uri, "bundle")
    bundle.save(bundle_uri)
    bundle.save(storage.join(out_uri, "bundle"))
    storage.write_text(storage.join(run_uri, "history.json"), json.dumps(train_state["history"], indent=1))
    outcome = TrainResult(stage=stage, run_uri=run_uri, bundle_uri=bundle_uri, steps=int(train_state["step"]),
                          history=train_state["history"], train_state=train_state,
                          checkpoint_path=result.checkpoint.path, seconds=time.monotonic() - started)
    last = outcome.history[-1] if outcome.history else {}
    print(f"[train {stage}] done: {outcome.steps} steps in {outcome.seconds:.0f}s, loss "
          f"{last.get('loss', float('nan')):.4f}; "
          f"bundle {bundle_uri}", flush=True)
    return outcome


def _assemble_bundle(config: TrainConfig, stage: str, model_dir: Path, init: str | None, db_uri: str, run_id: str):
    """The previous stage's bundle plus this stage's trained part (stage 1: a new bundle, scaling measured)."""
    if stage == "vae":
        mcfg = config.build_model_config()
        vae = AutoencoderKL.from_pretrained(str(model_dir)).eval()
        scaling = measure_scaling(vae, db_uri, config)
        manifest = new_manifest(mcfg.resolution, scaling, run_id=run_id, model_config=config.model,
                                stages={"vae": run_id})
        return ModelBundle(vae=vae, unet=None, controlnet=None, text_encoder=TextEncoder.from_config(mcfg.text_encoder),
                           manifest=manifest)
    parts = ("vae", "text_encoder", "scheduler") + (("unet",) if stage == "controlnet" else ())
    previous = ModelBundle.load(init, parts=parts)
    # "evaluation" scored the previous bundle, not this one (mrgen eval writes it for the new bundle)
    stale = ("parts", "bundle_hash", "created", "evaluation")
    manifest = {k: v for k, v in previous.manifest.items() if k not in stale}
    manifest.update(run_id=run_id, stages={**manifest.get("stages", {}), stage: run_id})
    if stage == "unet":
        return dataclasses.replace(previous, unet=UNet2DConditionModel.from_pretrained(str(model_dir)).eval(),
                                   controlnet=None, manifest=manifest)
    return dataclasses.replace(previous, controlnet=ControlNetModel.from_pretrained(str(model_dir)).eval(),
                               manifest=manifest)


def training_record(previous: dict[str, Any] | None, config: TrainConfig, stage: str, db_uri: str,
                    train_state: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The manifest's ``training``: how each stage of this bundle was trained (command, commit, DB, steps, seeds,
    final losses), so that the recorded command reproduces it on another machine: its ``--db`` is ``D``, which
    ``db`` says how to make (:func:`~mrgen.models.bundle.db_record`). A warm-started stage keeps the record of the
    run it fine-tuned (``warm_start_from``), so the chain of commands does."""
    history = train_state.get("history") or [{}]
    settings = config.stage(stage)
    record = dict(previous or {})
    db = db_record(db_uri)
    record.update(**db, model=config.model, architecture=config.architecture)
    stages = record.get("stages", {})
    lineage = {"warm_start_from": stages[stage]} if config.warm_start and stage in stages else {}
    record["stages"] = {**stages, stage: {**lineage,
        "command": command_line(shown={"--db": DB_NAME}), "code": code_version(), "run_id": train_state.get("run_id"),
        **db,  # stages may train on different DBs (--init from another run)
        "steps": int(train_state["step"]), "max_steps": settings.max_steps, "max_minutes": settings.max_minutes,
        "lr": settings.lr, "batch_size": settings.batch_size, "workers": config.num_workers, "seed": config.seed,
        "final_loss": history[-1].get("loss"), "seconds": round(seconds, 1),
        "restarts": list(train_state.get("restored_from", []))}}
    return record


def training_chain(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A stage's training record followed by those of the runs it fine-tuned (``warm_start_from``), newest first."""
    chain = [record]
    while "warm_start_from" in chain[-1]:
        chain.append(chain[-1]["warm_start_from"])
    return chain


def organ_vocabulary(db_uri: str, config: TrainConfig) -> dict[str, Any]:
    """The controller's organ vocabulary (manifest fields of ``MaskCondition``) from the organs of the stage's masked
    slices: every later DB or request is mapped through it by organ name."""
    filters = config.controlnet.selection()
    names = rank_organs(organ_first_ids(db_uri, **filters))
    if not names:
        raise ValueError(f"{db_uri}: no masked slice with an organ in the controlnet stage's selection {filters}")
    return MaskCondition.from_organ_names(names, onehot=config.mask_condition == "onehot").manifest_fields()


def measure_scaling(vae, db_uri: str, config: TrainConfig) -> float:
    """1/std of the trained autoencoder's latents over up to ``scaling_samples`` training slices."""
    filters = config.vae.selection()
    ds = read_slices(db_uri, ["height", "width", "image"], **filters).limit(config.scaling_samples)
    images = torch.from_numpy(decode(ds.take_batch(config.scaling_samples, batch_format="numpy"))["image"])
    return measure_latent_scaling(vae, images, generator=torch.Generator().manual_seed(config.seed))


def is_finished(out_uri: str, stage: str) -> bool:
    """Whether ``out_uri`` holds the stage's finished bundle (its manifest is written last)."""
    return storage.exists(storage.join(out_uri, stage, "bundle", MANIFEST))


def run_all(config: TrainConfig, db_uri: str, out_uri: str, resume: bool = False,
            ray_address: str | None = None) -> list[TrainResult]:
    """The three stages in order, each starting from the previous one's bundle; a finished stage is skipped
    when resuming."""
    if config.warm_start:
        raise ValueError("warm_start fine-tunes one stage of an --init bundle: run mrgen train unet or "
                         "mrgen train controlnet with --init, not all")
    results = []
    for stage in STAGES:
        if resume and is_finished(out_uri, stage):
            print(f"[train {stage}] already finished: {storage.join(out_uri, stage, 'bundle')}", flush=True)
            continue
        results.append(run_training(config, db_uri, out_uri, stage, resume=resume, ray_address=ray_address))
    return results

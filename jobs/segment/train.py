"""Train an nnU-Net v2 (2d) segmenter on MRGen-DB slices, in-process inside one Ray task.

The task exports the selected masked slices to a temporary nnU-Net raw dataset (``export_nnunet``), then runs
nnU-Net's own stages: ``extract_fingerprint_dataset`` → ``plan_experiment_dataset`` (widths / batch size of the
plan shrunk to the budget) → ``preprocess_dataset`` → ``nnUNetTrainer.run_training``. The trained model folder
(nnU-Net's layout, loadable by ``nnUNetPredictor.initialize_from_trained_model_folder``) is published to the
output URI::

    OUT/plans.json, dataset.json, dataset_fingerprint.json
    OUT/fold_<f>/checkpoint_final.pth, training_log_*.txt, progress.png, debug.json
    OUT/mrgen_segmenter.json      written last: sources, labels, budget, losses, timings (marks a finished model)
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import ray

from mrgen.datasets.store import load_index, organ_first_ids, rank_organs, read_table, select_shards
from mrgen.jobs.export.nnunet import ExportError, dataset_folder_name, export_nnunet
from mrgen.jobs.segment.config import SegmentConfig
from mrgen.jobs.segment.epoch_budget import EpochBudget
from mrgen.jobs.segment.nnunet_env import prepare_process, torch_device
from mrgen.platform import storage
from mrgen.platform.budget import TimeBudget
from mrgen.platform.cluster import RayConfig, init_ray, wait_for

MANIFEST = "mrgen_segmenter.json"
DATASET_ID = 1


@dataclass(frozen=True)
class TrainSource:
    """Masked slices of one MRGen-DB; ``None`` filters select everything."""

    uri: str
    datasets: tuple[str, ...] | None = None
    modalities: tuple[str, ...] | None = None
    split: str | None = "train"
    slice_ids: tuple[str, ...] | None = None  # these slices only (a drawn subset, e.g. the filter at equal count)
    label: str | None = None  # how ``describe`` names the drawn subset

    def filters(self) -> dict[str, Any]:
        return {k: v for k, v in {"dataset": list(self.datasets) if self.datasets else None,
                                  "modality": list(self.modalities) if self.modalities else None,
                                  "split": self.split,
                                  "slice_id": list(self.slice_ids) if self.slice_ids is not None else None
                                  }.items() if v is not None}

    def describe(self) -> str:
        shown = {k: v for k, v in self.filters().items() if k != "slice_id"}
        if self.slice_ids is not None:
            shown["slices"] = f"{len(self.slice_ids)} drawn" + (f" ({self.label})" if self.label else "")
        return f"{self.uri} ({', '.join(f'{k}={v}' for k, v in shown.items()) or 'all slices'})"


class SegmentInputError(ValueError):
    """A training source or model folder is unusable; the message names it."""


class SegmenterManifest(TypedDict):
    """``MANIFEST`` of a trained model folder (:func:`train_in_process` writes it)."""

    format: str
    trainer: str
    configuration: str
    fold: int
    checkpoint: str
    labels: dict[str, int]  # organ → label id, with "background": 0
    sources: list[dict[str, Any]]  # each ``TrainSource`` as a mapping
    cases_per_source: list[int]
    training_cases: int
    config: dict[str, Any]  # the ``SegmentConfig`` it trained with
    iterations_per_epoch: list[int]
    iterations: int
    plan: dict[str, Any]  # patch size, batch size, widths, normalisation of nnU-Net's 2d plan
    final: dict[str, Any]  # train_loss, val_loss, pseudo_dice
    timings: dict[str, float]


def is_trained(uri: str) -> bool:
    return storage.exists(storage.join(uri, MANIFEST))


def load_manifest(uri: str) -> SegmenterManifest:
    path = storage.join(uri, MANIFEST)
    if not storage.exists(path):
        raise SegmentInputError(f"{uri}: no {MANIFEST}: not a finished segmenter "
                                "(train one with `mrgen segment train`)")
    return json.loads(storage.read_text(path))


def label_names(sources: Sequence[TrainSource]) -> list[str]:
    """Organ names of the sources' masked slices, ordered by their smallest id in the organ maps, then name
    (the order ``export_nnunet`` uses, extended to several DBs)."""
    found = []
    for source in sources:
        if read_table(source.uri, ["has_mask"], has_mask=True, **source.filters()).num_rows == 0:
            raise SegmentInputError(f"--train {source.describe()}: no slices with masks")
        found.append(organ_first_ids(source.uri, **source.filters()))
    return rank_organs(*found)


def export_training_set(sources: Sequence[TrainSource], raw_root: Path, labels: list[str],
                        channel_name: str) -> dict[str, Any]:
    """One nnU-Net raw dataset ``raw_root/Dataset001_mrgen`` holding every source's selected masked slices.

    Each source is exported by ``export_nnunet`` (its training side, filtered, with the shared label order), so
    the PNG encoding is exactly the one prediction sees; the cases are then merged under a per-source prefix.
    """
    folder = raw_root / dataset_folder_name(DATASET_ID, "mrgen")
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir(parents=True)
    staging = raw_root.parent / "staging"
    counts = []
    for i, source in enumerate(sources):
        try:
            summary = export_nnunet(str(staging / f"s{i}"), 900, f"s{i}", synthetic=source.uri,
                                    synthetic_filters=source.filters(), labels=labels, channel_name=channel_name)
        except ExportError as exc:
            raise SegmentInputError(f"--train {source.describe()}: {exc}") from None
        part = Path(summary["folder"])
        for sub in ("imagesTr", "labelsTr"):
            for file in sorted((part / sub).iterdir()):
                file.rename(folder / sub / f"s{i}-{file.name}")
        counts.append(summary["train_cases"])
    shutil.rmtree(staging, ignore_errors=True)
    dataset_json = {"channel_names": {"0": channel_name},
                    "labels": {"background": 0, **{name: i + 1 for i, name in enumerate(labels)}},
                    "numTraining": sum(counts), "file_ending": ".png", "name": "mrgen",
                    "mrgen": {"sources": [asdict(s) for s in sources], "cases_per_source": counts}}
    # An explicit case list: without it nnU-Net lists the cases with a fork-based multiprocessing.Pool, which
    # can deadlock in a process that already runs threads (a Ray worker does).
    cases = sorted(p.name[:-len("_0000.png")] for p in (folder / "imagesTr").iterdir())
    files = {c: {"images": [f"imagesTr/{c}_0000.png"], "label": f"labelsTr/{c}.png"} for c in cases}
    (folder / "dataset.json").write_text(json.dumps({**dataset_json, "dataset": files}, indent=1))
    return {"folder": folder, "dataset_json": dataset_json, "cases_per_source": counts}


def plan_and_preprocess(config: SegmentConfig) -> dict[str, Any]:
    """nnU-Net's fingerprint, plan and preprocessing of the 2d configuration, with the budget's widths/batch."""
    # nnU-Net and torch are imported where they are used, in the task, after nnunet_env.prepare_process set the
    # environment they read on import
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                       plan_experiment_dataset, preprocess_dataset)
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    extract_fingerprint_dataset(DATASET_ID, num_processes=config.processes, check_dataset_integrity=False,
                                clean=True, verbose=False, show_progress_bar=False)
    _, plans_identifier = plan_experiment_dataset(DATASET_ID)
    plans_file = Path(str(nnUNet_preprocessed)) / convert_id_to_dataset_name(DATASET_ID) / f"{plans_identifier}.json"
    plans = json.loads(plans_file.read_text())
    if "2d" not in plans["configurations"]:
        raise RuntimeError(f"nnU-Net planned no 2d configuration ({sorted(plans['configurations'])})")
    plans["configurations"] = {"2d": plans["configurations"]["2d"]}
    two_d = plans["configurations"]["2d"]
    arch = two_d["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = config.features_per_stage(arch["n_stages"], arch["features_per_stage"])
    if config.batch_size is not None:
        two_d["batch_size"] = config.batch_size
    plans_file.write_text(json.dumps(plans, indent=1))
    preprocess_dataset(DATASET_ID, plans_identifier, ("2d",), [config.processes], verbose=False,
                       show_progress_bar=False)
    os.environ["nnUNet_n_proc_DA"] = str(config.augmentation_processes)
    import torch

    torch.set_num_threads(config.torch_threads)  # the planner changes it
    return plans


def trainer_class(name: str) -> type:
    """The nnU-Net trainer class called ``name``, found as nnU-Net's ``-tr`` finds it (its trainer folder)."""
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    found = recursive_find_python_class(str(Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer"), name,
                                        "nnunetv2.training.nnUNetTrainer")
    if found is None:
        raise SegmentInputError(f"segment.trainer {name!r}: nnU-Net has no trainer class of that name "
                                "(nnunetv2/training/nnUNetTrainer and its variants/)")
    return found


def run_trainer(plans: dict[str, Any], dataset_json: dict[str, Any], config: SegmentConfig,
                budget: TimeBudget | None = None):
    """``config.trainer`` with the budget set on the instance; returns the trained trainer and each epoch's
    training iterations (fewer than ``config.iterations`` where ``budget`` asked for it)."""
    plans = dict(plans, continue_training=False)  # what nnU-Net's run_training sets before building a trainer
    trainer = trainer_class(config.trainer)(plans, "2d", config.fold, dataset_json, torch_device(config))
    trainer.num_epochs = config.epochs
    trainer.num_iterations_per_epoch = config.iterations
    trainer.num_val_iterations_per_epoch = config.val_iterations
    trainer.save_every = config.epochs + 1  # no periodic checkpoint_latest: the final one is written at the end
    # nnU-Net redraws progress.png with matplotlib after every epoch (seconds each on a small CPU): draw it once.
    plot = trainer.logger.plot_progress_png
    trainer.logger.plot_progress_png = lambda folder: None
    if config.learning_rate is not None:
        trainer.initial_lr = config.learning_rate
    if config.keep_orientation:
        keep_orientation(trainer)
    fitted = EpochBudget(trainer, budget, config.iterations) if budget is not None else None
    trainer.run_training()
    if config.progress_plot:
        plot(trainer.output_folder)
    return trainer, fitted.iterations if fitted else [config.iterations] * config.epochs


def keep_orientation(trainer) -> None:
    """Spatial augmentation that keeps left and right apart: no mirroring, rotations within ±15° (nnU-Net's own
    range for elongated 2-D patches) instead of the ±180° and both-axis mirroring it plans for a square one. The
    model then allows no test-time mirroring either (saved in its checkpoint)."""
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size

    def configure():
        patch_size = trainer.configuration_manager.patch_size
        rotation = (-np.pi / 12, np.pi / 12)
        trainer.inference_allowed_mirroring_axes = None
        return rotation, False, get_patch_size(patch_size, rotation, rotation, rotation, (0.85, 1.25)), None

    trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size = configure


def _last(trainer, key: str):
    try:
        value = trainer.logger.get_value(key, step=-1)
    except (IndexError, KeyError):
        return None
    return [round(float(v), 6) for v in value] if isinstance(value, (list, tuple)) else round(float(value), 6)


def train_in_process(config: SegmentConfig, sources: Sequence[TrainSource], out_uri: str) -> SegmenterManifest:
    """The body of the Ray task: export → plan → preprocess → train → publish; returns the manifest."""
    started = time.monotonic()
    budget = TimeBudget.minutes(config.max_minutes)
    workdir = Path(tempfile.mkdtemp(prefix="mrgen-segment-"))
    try:
        folders = prepare_process(workdir, config)
        labels = label_names(sources)
        exported = export_training_set(sources, folders["raw"], labels, config.channel_name())
        n_cases = exported["dataset_json"]["numTraining"]
        print(f"[segment train] {n_cases} slices from {len(sources)} source(s), labels {labels}", flush=True)
        timings = {"export_s": time.monotonic() - started}
        plans = plan_and_preprocess(config)
        timings["plan_preprocess_s"] = time.monotonic() - started - timings["export_s"]
        two_d = plans["configurations"]["2d"]
        print(f"[segment train] plan: patch {two_d['patch_size']}, batch {two_d['batch_size']}, features "
              f"{two_d['architecture']['arch_kwargs']['features_per_stage']}; training {config.epochs} epochs x "
              f"{config.iterations} iterations" + (f" (fewer if they do not fit in {config.max_minutes:.1f} min)"
                                                   if budget else ""), flush=True)
        trained_at = time.monotonic()
        trainer, iterations = run_trainer(plans, exported["dataset_json"], config, budget)
        timings["train_s"] = time.monotonic() - trained_at
        model_dir = Path(trainer.output_folder_base)
        fold_dir = Path(trainer.output_folder)
        if not config.keep_best_checkpoint:
            (fold_dir / "checkpoint_best.pth").unlink(missing_ok=True)
        manifest: SegmenterManifest = {
            "format": "nnunetv2-model-folder", "trainer": config.trainer, "configuration": "2d", "fold": config.fold,
            "checkpoint": "checkpoint_final.pth", "labels": exported["dataset_json"]["labels"],
            "sources": [asdict(s) for s in sources], "cases_per_source": exported["cases_per_source"],
            "training_cases": n_cases, "config": config.model_dump(mode="json"),
            "iterations_per_epoch": iterations, "iterations": sum(iterations),
            "plan": {"patch_size": two_d["patch_size"], "batch_size": two_d["batch_size"],
                     "features_per_stage": two_d["architecture"]["arch_kwargs"]["features_per_stage"],
                     "normalization": two_d["normalization_schemes"]},
            "final": {"train_loss": _last(trainer, "train_losses"), "val_loss": _last(trainer, "val_losses"),
                      "pseudo_dice": _last(trainer, "dice_per_class_or_region")},
            "timings": {k: round(v, 1) for k, v in timings.items()},
        }
        publish_model(model_dir, out_uri, manifest)
        print(f"[segment train] done in {time.monotonic() - started:.0f}s "
              f"(train loss {manifest['final']['train_loss']}); model {out_uri}", flush=True)
        return manifest
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def publish_model(model_dir: Path, out_uri: str, manifest: SegmenterManifest) -> None:
    """Publish the model folder at ``out_uri`` whole, the manifest its marker (its presence means complete)."""
    (model_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    storage.publish_dir(model_dir, out_uri, marker=MANIFEST)


def check_sources(sources: Sequence[TrainSource]) -> None:
    """Fail in the driver, before a task starts, when a source is not an MRGen-DB or selects nothing."""
    if not sources:
        raise SegmentInputError("no training data: give at least one --train URI")
    for source in sources:
        index = load_index(source.uri)
        if not select_shards(index, has_mask=True, **source.filters()):
            raise SegmentInputError(f"--train {source.describe()}: no shard holds masked slices matching the filters; "
                                    f"the DB holds {index.counts()}")


def submit_training(config: SegmentConfig, sources: Sequence[TrainSource], out_uri: str):
    """Start training in a Ray task (returns its ObjectRef; ``ray.get`` gives the manifest)."""
    check_sources(sources)
    trainer_class(config.trainer)  # an unknown name fails here, not in the task
    sources = [replace(s, uri=storage.absolute(s.uri)) for s in sources]
    out_uri = storage.absolute(out_uri)
    task = ray.remote(max_calls=1)(train_in_process)
    return task.options(num_cpus=config.num_cpus, num_gpus=config.num_gpus,
                        name="mrgen-segment-train").remote(config, list(sources), out_uri)


def train_segmenter(config: SegmentConfig, sources: Sequence[TrainSource], out_uri: str,
                    ray_address: str | None = None) -> SegmenterManifest:
    """Train and publish a segmenter; returns its manifest."""
    init_ray(RayConfig(address=ray_address))
    return wait_for({"model": submit_training(config, sources, out_uri)}, "segment train", config.max_minutes)["model"]

"""Evaluate a segmenter on real test volumes: volumetric Dice per organ and per volume (paper §4.1).

In one Ray task: the test slices (masked, ``split``, optional dataset / modality filters) are exported with
``export_nnunet`` using the model's own label order and channel name, so images are encoded exactly as in
training; slices are grouped by volume, ordered by slice index, predicted with :class:`VolumePredictor`,
stacked back into volumes and scored with :mod:`mrgen.models.metrics.dice` (its docstring has the
empty-organ convention). The report (JSON) holds per-volume and per-organ Dice and the paper's mean.

``pooled=True`` scores the selected slices as one stack instead (:func:`pooled_stack`): Dice pooled over slices,
for DBs whose slices are not volumes (synthetic ones) and for a segmenter's fit to its own training slices.
"""
from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import ray

from mrgen.datasets.store import load_index, read_table, spread
from mrgen.jobs.export.nnunet import ExportError, encode_case, export_nnunet, iter_rows, volume_groups
from mrgen.jobs.segment.config import SegmentConfig
from mrgen.jobs.segment.nnunet_env import prepare_process
from mrgen.jobs.segment.predict import VolumePredictor, stacked_volumes
from mrgen.jobs.segment.train import SegmentInputError, is_trained, load_manifest
from mrgen.models.metrics.dice import DiceReport, dice_per_organ
from mrgen.platform import storage
from mrgen.platform.cluster import RayConfig, init_ray, wait_for


class DiceEvaluation(TypedDict, total=False):
    """A segmenter's evaluation (:func:`evaluate_in_process`), as :func:`write_dice_report` writes it (no ``table``)."""

    model: str
    test: str
    filters: dict[str, Any]
    pooled: bool
    n_volumes: int
    n_slices: int
    labels: dict[str, str]  # label id → organ
    organs_not_in_model: list[str]
    training: dict[str, Any] | None  # the segmenter manifest's sources, training_cases, final, timings
    dice: dict[str, Any]  # ``DiceReport.to_json()``: organs, per_organ, per_volume, mean_dice
    mean_dice: float | None
    seconds: float
    predictions: str  # with ``predictions_uri``
    table: str  # the printed table (not written)


def _test_organs(test_uri: str, filters: dict[str, Any]) -> list[str]:
    table = read_table(test_uri, ["organs"], has_mask=True, **filters)
    return sorted({name for organs in table.column("organs").to_pylist() for name in organs})


def pooled_stack(test_uri: str, filters: dict[str, Any], label_ids: dict[str, int], limit: int | None
                 ) -> tuple[str, list[int], np.ndarray, np.ndarray]:
    """The selected masked slices (``limit`` of them, evenly spread in slice-id order) as one stack, encoded as the
    exported cases are: for slices that are not volumes (synthetic candidates share a slice position) and for
    training-fit checks, where Dice pooled over the slices is what is asked."""
    rows = sorted(iter_rows(test_uri, **filters), key=lambda r: r["slice_id"])
    if not rows:
        raise ValueError(f"--test {test_uri} ({filters}): no masked slices")
    if limit:
        rows = [rows[i] for i in spread(len(rows), limit)]
    images, refs = zip(*(encode_case(r, label_ids) for r in rows))
    return f"pooled ({len(rows)} slices)", list(range(len(rows))), np.stack(images).astype(np.float32), np.stack(refs)


def evaluate_in_process(config: SegmentConfig, model_uri: str, test_uri: str, split: str | None = "test",
                        datasets: Sequence[str] | None = None, modalities: Sequence[str] | None = None,
                        predictions_uri: str | None = None, pooled: bool = False,
                        limit: int | None = None, slice_ids: Sequence[str] | None = None) -> DiceEvaluation:
    """The body of the Ray task; returns the report (see :func:`evaluate_segmenter`)."""
    if slice_ids is not None and not pooled:
        raise ValueError("slice_ids selects slices for a pooled evaluation; volumes are evaluated whole")
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="mrgen-segment-eval-"))
    try:
        folders = prepare_process(workdir, config)
        model_dir = storage.download_dir(model_uri, workdir / "model")
        manifest = load_manifest(str(model_dir)) if is_trained(str(model_dir)) else {}
        fold = manifest.get("fold", config.fold)
        predictor = VolumePredictor(model_dir, fold=fold, device=config.resolved_device(), mirroring=config.mirroring)
        labels = predictor.labels
        organs = [labels[i] for i in sorted(labels)]
        filters = {"split": split, "dataset": list(datasets) if datasets else None,
                   "modality": list(modalities) if modalities else None,
                   "slice_id": list(slice_ids) if slice_ids is not None else None}
        if pooled:
            volumes = [pooled_stack(test_uri, {k: v for k, v in filters.items() if v is not None},
                                    {name: i for i, name in labels.items()}, limit)]
        else:
            try:
                exported = export_nnunet(str(folders["raw"]), 1, "eval", real=test_uri, real_split=split,
                                         real_datasets=datasets, real_modalities=modalities, labels=organs,
                                         channel_name=predictor.dataset_json["channel_names"]["0"])
            except ExportError as exc:
                raise ValueError(f"--test {test_uri} ({filters}): {exc}") from None
            volumes = stacked_volumes(exported["folder"], volume_groups(exported["folder"]))
        report = DiceReport(organs=organs)
        saved: dict[str, np.ndarray] = {}
        n_slices = 0
        for i, (volume, indices, images, refs) in enumerate(volumes):
            pred = predictor.predict(images)
            report.add(volume, dice_per_organ(pred, refs, labels))
            n_slices += len(indices)
            print(f"[segment eval] {volume}: {len(indices)} slices, mean Dice "
                  f"{report.volume_mean(volume):.3f}", flush=True)
            if predictions_uri:
                saved.update({f"v{i}_pred": pred, f"v{i}_ref": refs, f"v{i}_image": images.astype(np.uint8),
                              f"v{i}_slices": np.asarray(indices), f"v{i}_name": np.asarray(volume)})
        present = _test_organs(test_uri, {k: v for k, v in filters.items() if v is not None})
        result = {
            "model": model_uri, "test": test_uri, "filters": {k: v for k, v in filters.items() if v is not None},
            "pooled": pooled, "n_volumes": len(report.per_volume), "n_slices": n_slices,
            "labels": {str(k): v for k, v in labels.items()},
            "organs_not_in_model": [o for o in present if o not in organs],
            "training": {k: manifest.get(k) for k in ("sources", "training_cases", "final", "timings")}
            if manifest else None,
            "dice": report.to_json(), "mean_dice": report.to_json()["mean_dice"],
            "seconds": round(time.monotonic() - started, 1),
        }
        if predictions_uri:
            buf = io.BytesIO()
            np.savez_compressed(buf, **saved)
            storage.write_bytes(predictions_uri, buf.getvalue())
            result["predictions"] = predictions_uri
        result["table"] = report.table()
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def load_predictions(uri: str) -> dict[str, dict[str, np.ndarray]]:
    """The file written with ``predictions_uri``: volume → {pred, ref, image, slices} (image as 8-bit PNG values)."""
    with np.load(io.BytesIO(storage.read_bytes(uri))) as data:
        out: dict[str, dict[str, np.ndarray]] = {}
        i = 0
        while f"v{i}_name" in data:
            out[str(data[f"v{i}_name"])] = {k: data[f"v{i}_{k}"] for k in ("pred", "ref", "image", "slices")}
            i += 1
    return out


def submit_evaluation(config: SegmentConfig, model_uri: str, test_uri: str, **kwargs: Any):
    """Start an evaluation in a Ray task (returns its ObjectRef; ``ray.get`` gives the report)."""
    model_uri, test_uri = storage.absolute(model_uri), storage.absolute(test_uri)
    if kwargs.get("predictions_uri"):
        kwargs["predictions_uri"] = storage.absolute(kwargs["predictions_uri"])
    load_index(test_uri)  # a clear error in the driver when --test is not an MRGen-DB
    if not storage.exists(storage.join(model_uri, "plans.json")):
        load_manifest(model_uri)  # raises naming the folder
        raise SegmentInputError(f"{model_uri}: no plans.json: not an nnU-Net model folder")
    task = ray.remote(max_calls=1)(evaluate_in_process)
    return task.options(num_cpus=config.num_cpus, num_gpus=config.num_gpus,
                        name="mrgen-segment-eval").remote(config, model_uri, test_uri, **kwargs)


def evaluate_segmenter(config: SegmentConfig, model_uri: str, test_uri: str, out_uri: str | None = None,
                       ray_address: str | None = None, **kwargs: Any) -> DiceEvaluation:
    """Dice report of ``model_uri`` on ``test_uri``; written as JSON to ``out_uri`` when given.

    ``kwargs``: ``split`` (default "test"), ``datasets``, ``modalities``, ``predictions_uri``, ``pooled``, ``limit``.
    """
    init_ray(RayConfig(address=ray_address))
    report = wait_for({"report": submit_evaluation(config, model_uri, test_uri, **kwargs)}, "segment eval")["report"]
    if out_uri:
        write_dice_report(report, out_uri)
    return report


def write_dice_report(report: DiceEvaluation, out_uri: str) -> None:
    storage.write_text(out_uri, json.dumps({k: v for k, v in report.items() if k != "table"}, indent=1))


def load_dice_report(uri: str) -> DiceEvaluation:
    """What :func:`write_dice_report` wrote at ``uri``."""
    return storage.read_json(uri)

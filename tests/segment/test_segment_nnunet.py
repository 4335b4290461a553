"""nnU-Net v2 train → predict on the tiny phantom DB: the real nnunetv2 code path, trained once per module.

Budget: the `tiny` segment preset (2 epochs x 6 iterations, widths 8..32); most of the time is nnU-Net's own
fingerprint / preprocessing worker processes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mrgen.datasets.schema import decode_image, decode_mask, decode_organ_map
from mrgen.datasets.store import read_table
from mrgen.jobs.segment.config import SegmentConfig
from mrgen.models.metrics.dice import dice_per_organ
from mrgen.jobs.segment.train import MANIFEST, SegmentInputError, TrainSource, train_segmenter

SRC = "phantom-src"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_db):
    """`mrgen segment train` once, as a person runs it (a process of its own, Ray forwarding its workers' output):
    model folder, manifest, config, what the terminal showed and the log file."""
    import os
    import subprocess
    import sys

    from mrgen.jobs.segment.train import load_manifest

    folder = tmp_path_factory.mktemp("segmenter")
    out, log = str(folder / "model"), folder / "train.log"
    # a budget spent before training starts: epoch 1 runs whole, the budget then cuts epoch 2 to 1 iteration
    done = subprocess.run([sys.executable, "-m", "mrgen.cli", "segment", "train", "--train", tiny_db, "--dataset", SRC,
                           "--out", out, "--config", "tiny", "--set", "max_minutes=0.001", "--log", str(log)],
                          env={**os.environ, "MRGEN_RAY_LOG_TO_DRIVER": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out, load_manifest(out), SegmentConfig.load("tiny", ["max_minutes=0.001"]), done.stdout + done.stderr, log


@pytest.fixture(scope="module")
def evaluated(trained, tiny_db, tmp_path_factory):
    """`mrgen segment eval` once (CLI → evaluate_segmenter → Ray task): its report, saved predictions, printout."""
    import contextlib
    import io

    from mrgen.cli.main import main
    from mrgen.jobs.evaluate.segmenter import load_predictions

    model = trained[0]
    folder = tmp_path_factory.mktemp("segment_eval")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(["segment", "eval", "--model", model, "--test", tiny_db, "--dataset", SRC, "--config", "tiny",
                   "--out", str(folder / "report.json"), "--predictions", str(folder / "pred.npz"),
                   "--log", str(folder / "eval.log")])
    assert rc == 0
    report = json.loads((folder / "report.json").read_text())
    return report, load_predictions(str(folder / "pred.npz")), printed.getvalue()


def _db_volumes(db: str, dataset: str, split: str) -> dict[str, tuple[np.ndarray, np.ndarray, dict[int, str]]]:
    """Volumes straight from the DB: (image float [0,1], mask ids, organ map) stacked by slice_index."""
    rows = read_table(db, ["volume_id", "slice_index", "height", "width", "image", "mask", "organ_map"],
                      dataset=dataset, split=split, has_mask=True).to_pylist()
    out = {}
    for vid in sorted({r["volume_id"] for r in rows}):
        vrows = sorted((r for r in rows if r["volume_id"] == vid), key=lambda r: r["slice_index"])
        image = np.stack([decode_image(r["image"], r["height"], r["width"]) for r in vrows])
        mask = np.stack([decode_mask(r["mask"], r["height"], r["width"]) for r in vrows])
        out[f"{dataset}/{vid}"] = (image, mask, decode_organ_map(vrows[0]["organ_map"]))
    return out


def test_model_folder_is_nnunet_layout_with_manifest(trained, tiny_db):
    model, manifest = trained[:2]
    folder = Path(model)
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json", "fold_all/checkpoint_final.pth", MANIFEST):
        assert (folder / name).is_file(), name
    assert not (folder / "fold_all" / "checkpoint_best.pth").exists()  # keep_best_checkpoint is off in tiny
    plans = json.loads((folder / "plans.json").read_text())
    arch = plans["configurations"]["2d"]["architecture"]["arch_kwargs"]
    assert arch["features_per_stage"] == [min(8 * 2 ** i, 32) for i in range(arch["n_stages"])]
    assert plans["configurations"]["2d"]["batch_size"] == 8
    n_train = read_table(tiny_db, ["slice_id"], dataset=SRC, split="train", has_mask=True).num_rows
    assert manifest["training_cases"] == n_train > 0
    organ_names = {n for r in read_table(tiny_db, ["organ_map"], dataset=SRC).to_pylist()
                   for n in decode_organ_map(r["organ_map"]).values()}
    assert set(manifest["labels"]) == organ_names | {"background"}
    assert sorted(manifest["labels"].values()) == list(range(len(manifest["labels"])))
    assert math.isfinite(manifest["final"]["train_loss"])
    assert manifest["iterations_per_epoch"] == [6, 1] and manifest["iterations"] == 7


def test_cli_train_prints_a_summary_a_person_reads(trained):
    model, manifest, _, printed, log = trained
    assert f"trained {model}: {manifest['training_cases']} slices, 7 iterations" in printed
    assert "liver" in printed and "{" not in printed  # organs by name; the JSON is for --json
    # nnU-Net's and Ray's output went to the log the first line names, not to the terminal
    assert f"(logs: {log};" in printed and "segment train [########################] 0.1/0.1  min; 1/1 done" in printed
    assert "Epoch" not in printed and "pid=" not in printed and "Epoch 1" in log.read_text()


def test_the_configured_nnunet_trainer_variant_trains(trained):
    import torch

    model, manifest, config = trained[:3]
    assert config.trainer != "nnUNetTrainer"  # the small presets pick a variant: the fixture trains through it
    checkpoint = torch.load(Path(model) / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert manifest["trainer"] == checkpoint["trainer_name"] == config.trainer
    # the small presets keep left and right apart: no mirroring in training, so none allowed at prediction
    assert config.keep_orientation and checkpoint["inference_allowed_mirroring_axes"] is None
    # and set their own initial learning rate, which nnU-Net's logger records per epoch
    assert config.learning_rate is not None and checkpoint["logging"]["lrs"][0] == pytest.approx(config.learning_rate)


def test_an_unknown_trainer_is_refused_before_any_task(tiny_db, tmp_path, ray_session):
    config = SegmentConfig.load("tiny", ["trainer=nnUNetTrainerNoSuchVariant"])
    with pytest.raises(SegmentInputError, match="nnUNetTrainerNoSuchVariant"):
        train_segmenter(config, [TrainSource(tiny_db, datasets=(SRC,))], str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()


def test_checkpoint_loads_in_nnunet_predictor(trained):
    from mrgen.jobs.segment.predict import VolumePredictor

    model, manifest = trained[:2]
    predictor = VolumePredictor(model, fold="all")
    assert predictor.per_slice  # z-score normalisation: slices are predicted as the cases they were in training
    assert set(predictor.labels.values()) == set(manifest["labels"]) - {"background"}
    volume = np.random.default_rng(0).uniform(0, 255, (3, 64, 64)).astype(np.float32)
    pred = predictor.predict(volume)
    assert pred.shape == (3, 64, 64) and pred.dtype == np.uint8
    assert pred.max() <= max(predictor.labels)
    # slice by slice means a slice's prediction does not depend on its neighbours
    np.testing.assert_array_equal(predictor.predict(volume[1:2])[0], pred[1])


def test_eval_stacks_slices_back_into_the_db_volumes(evaluated, tiny_db):
    report, preds, _ = evaluated
    expected = _db_volumes(tiny_db, SRC, "test")
    assert sorted(preds) == sorted(expected) == sorted(report["dice"]["per_volume"])
    assert report["n_volumes"] == len(expected)
    assert report["n_slices"] == sum(v[0].shape[0] for v in expected.values())
    labels = {v: int(k) for k, v in report["labels"].items()}
    for volume, (image, mask, organ_map) in expected.items():
        got = preds[volume]
        assert list(got["slices"]) == list(range(image.shape[0]))
        np.testing.assert_array_equal(got["image"], np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
        lut = np.zeros(256, np.uint8)
        for oid, name in organ_map.items():
            lut[oid] = labels.get(name, 0)
        np.testing.assert_array_equal(got["ref"], lut[mask])
        assert got["pred"].shape == mask.shape


def test_eval_dice_matches_the_saved_predictions(evaluated):
    report, preds, _ = evaluated
    labels = {int(k): v for k, v in report["labels"].items()}
    for volume, arrays in preds.items():
        scores = dice_per_organ(arrays["pred"], arrays["ref"], labels)
        for organ, value in scores.items():
            got = report["dice"]["per_volume"][volume][organ]
            assert (got is None) == math.isnan(value)
            if got is not None:
                assert got == pytest.approx(value, abs=1e-6)
    per_organ = [v for v in report["dice"]["per_organ"].values() if v is not None]
    assert report["mean_dice"] == pytest.approx(sum(per_organ) / len(per_organ), abs=1e-5)
    assert 0.0 <= report["mean_dice"] <= 1.0


def test_cli_eval_prints_the_table(evaluated):
    report, _, printed = evaluated
    assert "mean over volumes" in printed and "liver" in printed
    assert all(volume in printed for volume in report["dice"]["per_volume"])


def test_train_rejects_a_selection_without_masks(tiny_db, tmp_path, ray_session):
    # phantom-tgt's training volumes have no masks: nothing to train on, said before any task starts
    with pytest.raises(SegmentInputError, match="phantom-tgt"):
        train_segmenter(SegmentConfig.load("tiny"), [TrainSource(tiny_db, datasets=("phantom-tgt",))],
                        str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()


def test_cli_train_on_a_missing_db_fails_clearly(tmp_path, capsys, ray_session):
    from mrgen.cli.main import main

    rc = main(["segment", "train", "--train", str(tmp_path / "nope"), "--out", str(tmp_path / "m"),
               "--log", str(tmp_path / "train.log")])
    assert rc == 2
    assert "not an MRGen-DB" in capsys.readouterr().err  # on the terminal, not only in the log


def test_budget_flag_parsing():
    from mrgen.jobs.segment.config import parse_budget
    from mrgen.platform.config import ConfigError

    assert parse_budget("epochs=3, iterations=7,width=16,batch=4,minutes=2.5") == {
        "epochs": 3, "iterations": 7, "width": 16, "batch_size": 4, "max_minutes": 2.5}
    with pytest.raises(ConfigError, match="lr"):
        parse_budget("lr=3")
    with pytest.raises(ConfigError, match="epochs"):
        parse_budget("epochs=many")


def _candidates_db(tiny_db: str, out: str) -> list[str]:
    """The source test slices written twice, as synthesis writes candidates: two rows per volume position."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from mrgen.datasets.store import ShardWriter, volume_key

    table = read_table(tiny_db, dataset=SRC, split="test", has_mask=True)
    copies = [table.set_column(table.schema.get_field_index("slice_id"), "slice_id",
                               pc.binary_join_element_wise(table["slice_id"], pa.scalar(f"-c{c:02d}"), ""))
              for c in range(2)]
    writer = ShardWriter(out)
    both = pa.concat_tables(copies)
    writer.write(both, sorted({volume_key(SRC, v) for v in both["volume_id"].to_pylist()}))
    writer.commit()
    return sorted(both["slice_id"].to_pylist())


def test_pooled_eval_scores_candidate_slices_as_one_stack(trained, tiny_db, tmp_path, ray_session):
    """Synthetic DBs hold several candidates per slice position: per-volume stacking refuses them, --pooled
    scores the selected slices (evenly spread, slice-id order) as one stack, encoded as the exported cases."""
    from mrgen.jobs.evaluate.segmenter import evaluate_segmenter, load_predictions

    model, _, config = trained[:3]
    db = str(tmp_path / "candidates")
    slice_ids = _candidates_db(tiny_db, db)
    with pytest.raises(ValueError, match="map to one case"):
        evaluate_segmenter(config, model, db, split="test")
    limit = len(slice_ids) - 3
    report = evaluate_segmenter(config, model, db, split="test", pooled=True, limit=limit,
                                predictions_uri=str(tmp_path / "pred.npz"))
    assert report["pooled"] and report["n_volumes"] == 1 and report["n_slices"] == limit
    (name, arrays), = load_predictions(str(tmp_path / "pred.npz")).items()
    rows = {r["slice_id"]: r for r in read_table(db, has_mask=True).to_pylist()}
    chosen = [slice_ids[i] for i in np.unique(np.linspace(0, len(slice_ids) - 1, limit).round().astype(int))]
    assert chosen[0] == slice_ids[0] and chosen[-1] == slice_ids[-1]
    expected = np.stack([np.round(np.clip(decode_image(rows[s]["image"], rows[s]["height"], rows[s]["width"]), 0, 1)
                                  * 255) for s in chosen]).astype(np.uint8)
    np.testing.assert_array_equal(arrays["image"], expected)
    labels = {int(k): v for k, v in report["labels"].items()}
    for organ, value in dice_per_organ(arrays["pred"], arrays["ref"], labels).items():
        got = report["dice"]["per_organ"][organ]
        assert (got is None) == math.isnan(value)
        if got is not None:
            assert got == pytest.approx(value, abs=1e-6)


def test_cli_eval_json_is_the_only_thing_on_stdout(trained, tiny_db):
    """A script parses `--json`'s stdout: the Ray workers' own lines ("[segment eval] vol…: …") must not reach it,
    even where Ray forwards worker output to the driver (the CLI's default, switched off for the test session)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MRGEN_RAY_LOG_TO_DRIVER": "1"}
    done = subprocess.run([sys.executable, "-m", "mrgen.cli", "segment", "eval", "--model", trained[0], "--test",
                           tiny_db, "--dataset", SRC, "--config", "tiny", "--json"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["n_volumes"] >= 1 and set(report["labels"].values()) == set(trained[1]["labels"]) - {"background"}


def test_cli_limit_needs_pooled(trained, tiny_db, capsys):
    from mrgen.cli.main import main

    assert main(["segment", "eval", "--model", trained[0], "--test", tiny_db, "--limit", "4"]) == 1
    assert "--limit needs --pooled" in capsys.readouterr().err

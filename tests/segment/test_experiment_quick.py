"""The one-command experiment, `--quick` budgets, end to end on the shared local Ray: every real step with a generator
trained in the run (`--generator train`), the LiteMedSAM filter with calibrated thresholds, four segmenters, then a
rerun that resumes (skips every finished step)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from mrgen.datasets.store import read_table


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes on a quiet 2-core machine; far longer when the machine is shared
def test_quick_experiment_end_to_end_and_resume(tmp_path, ray_session, monkeypatch):
    from mrgen.jobs.experiment.run import run_experiment

    SEGMENTERS = ("source-only", "mrgen", "mrgen-unfiltered", "oracle")

    # a relative OUT, as `make demo` gives (runs/demo): Ray Train's controller and Ray tasks run elsewhere
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "exp"
    report = run_experiment("exp", quick=True)

    folder = out / "report"
    for name in ("report.md", "report.json", "data.png", "mask_following.png", "segmentation.png", "candidates.png"):
        assert (folder / name).stat().st_size > 0, name
    assert json.loads((folder / "report.json").read_text())["dice"].keys() == report["dice"].keys()

    assert set(report["dice"]) == set(SEGMENTERS)
    volumes = {n: set(d["per_volume"]) for n, d in report["dice"].items()}
    assert all(v == volumes["mrgen"] for v in volumes.values()) and volumes["mrgen"]
    assert all(v.startswith("phantom-tgt/") for v in volumes["mrgen"])  # evaluated on the target modality
    assert len(volumes["mrgen"]) == 2
    for d in report["dice"].values():
        assert d["mean"] is None or 0.0 <= d["mean"] <= 1.0
        assert d["training_slices"] > 0
        if d["mean"] is not None:
            span = d["interval"]["mean"]
            assert span["low"] - 1e-9 <= d["mean"] <= span["high"] + 1e-9
    # the filter at equal count: as many slices, drawn from the same masks' same candidates without scores
    assert report["dice"]["mrgen-unfiltered"]["training_slices"] == report["dice"]["mrgen"]["training_slices"]
    diffs = report["differences"]
    assert set(diffs) == {"mrgen_minus_source_only", "filtered_minus_unfiltered", "oracle_minus_mrgen"}
    for key, d in diffs.items():
        a, b = report["dice"][d["a"]]["mean"], report["dice"][d["b"]]["mean"]
        if a is not None and b is not None:
            assert d["low"] - 1e-9 <= d["value"] <= d["high"] + 1e-9 and d["volumes"] == 2, key
    assert report["data"] == "phantom" and "interval_above_source_only" in report["goal"]
    fid = report["fid"]
    for key in ("synthetic_vs_real_target", "source_vs_real_target"):
        assert math.isfinite(fid[key]) and fid[key] >= -1e-6
    # the two sets compared with the real target at one count (FID's bias depends on it)
    kept = read_table(str(out / "synthetic"), ["slice_id"]).num_rows
    assert fid["n"]["source"] == fid["n"]["synthetic"] == min(kept, 32)
    # the unfiltered set at equal count: the unfiltered segmenter's slices, as many as the filter kept
    equal_count = json.loads((out / "synthetic-unfiltered" / "draws.json").read_text())["equal_count"]
    assert len(equal_count) == kept and read_table(str(out / "synthetic-unfiltered"), ["slice_id"]).num_rows > kept
    assert fid["unfiltered"]["n"]["source"] == fid["unfiltered"]["n"]["synthetic"] == min(kept, 32)
    assert fid["kid"]["synthetic_vs_real_target"] is not None and fid["kid_std"]["synthetic_vs_real_target"] >= 0
    assert math.isfinite(fid["unfiltered"]["synthetic_vs_real_target"])
    md = (folder / "report.md").read_text()
    assert "source-only" in md and "mrgen" in md and "FID" in md
    assert "filtered − unfiltered at equal count" in md and "phantom target-modality test volumes" in md
    assert not re.search(r"\breal\b", md, re.IGNORECASE)  # the phantom's renderings are not called real

    seconds_first = report["step_seconds"]
    assert {"build-oracle-db", "train-generator", "check-controller", "calibrate-filter", "synthesize",
            "synthesize-unfiltered", "train-segmenters", "evaluate", "fid"} <= set(seconds_first)
    # the filter: LiteMedSAM with thresholds calibrated on the real source slices, its pass rate reported
    calibration = json.loads((out / "filter" / "calibration.json").read_text())
    assert calibration["scorer"] == "medsam" and calibration["slices"] == 8
    assert report["filter"]["thresholds"] == calibration["thresholds"]
    assert 0 <= report["filter"]["pass_rate"] <= 1 and report["synthesis"]["scores_meaningful"]
    audit = read_table(str(out / "synthetic"), ["mean_iou", "fate"], has_mask=True).to_pylist()
    assert audit and all(r["mean_iou"] is not None for r in audit)
    # unfiltered: the first candidates of the same masks, same seeds
    from mrgen.jobs.synthesis.stages.writer import read_audit

    filtered = {(r["mask_key"], r["candidate_index"]): r["seed"]
                for r in read_audit(str(out / "synthetic")).to_pylist()}
    unfiltered = read_audit(str(out / "synthetic-unfiltered")).to_pylist()
    assert unfiltered and all(filtered[(r["mask_key"], r["candidate_index"])] == r["seed"] for r in unfiltered
                              if r["candidate_index"] >= 0)
    assert report["goal"].keys() >= {"ratio_over_source_only", "at_least_2x_source_only", "met"}
    assert (out / "logs" / "experiment.log").stat().st_size > 0
    checks = report["mask_dependence"]
    assert set(checks) == {"train", "test"}
    for check in checks.values():
        assert check["slices"] >= 2 and check["gain"] == 1 - check["mse_true"] / check["mse_shuffled"]
        assert f"{check['gain']:+.3f}" in md
    assert "## Mask controller" in md
    following = report["mask_following"]
    assert following["slices"] == 4 and following["organs"] >= 1 and (out / "generator" / "mask_following.png").exists()
    assert following["following"] == 1 - following["error_own"] / following["error_other"]
    assert f"following **{following['following']:+.3f}**" in md
    assert f"**{following['separation_following']:+.3f}**, ceiling {following['separation_ceiling']:+.3f}" in md
    held_out = report["mask_following_target"]  # the target modality's test masks, drawn as the target modality
    assert held_out["split"] == "test" and held_out["organs"] >= 1
    assert f"separation **{held_out['separation_following']:+.3f}** of a {held_out['separation_ceiling']:+.3f}" in md

    fit = report["fit"]

    synthetic_slices = read_table(str(out / "synthetic"), ["slice_id"], has_mask=True).num_rows
    assert set(fit) == set(SEGMENTERS) and fit["source-only"]["slices"] == 16
    assert fit["mrgen"]["slices"] == min(16, synthetic_slices)
    assert fit["source-only"]["per_organ"].keys() == report["dice"]["source-only"]["per_organ"].keys()
    saved = {n: json.loads((out / "eval" / f"{n}-fit.json").read_text()) for n in SEGMENTERS}
    assert all(s["pooled"] for s in saved.values())
    # each on its own training data: real source slices of the source split, all synthetic slices
    assert saved["source-only"]["test"] == str(out / "db") and saved["mrgen"]["test"] == str(out / "synthetic")
    assert saved["source-only"]["filters"] == {"split": "train", "dataset": ["phantom-src"]}
    assert "own training slices" in md

    budget = report["budget"]
    assert budget["minutes"] == 30 and set(budget["generator_minutes"]) == {"vae", "unet", "controlnet"}
    assert set(saved) == set(SEGMENTERS) and saved["oracle"]["test"] == str(out / "oracle-db")
    assert budget["segmenter_minutes"] > 0
    saved_config = json.loads((out / "segmenters" / "mrgen" / "mrgen_segmenter.json").read_text())["config"]
    assert saved_config["max_minutes"] == budget["segmenter_minutes"]  # what the step handed the task
    # 30 minutes fit the quick step counts whole
    trained = {s: t["steps"] for s, t in budget["trained"]["generator"].items()}
    assert trained == dict.fromkeys(budget["generator_minutes"], 12)
    assert all(t["iterations"] == t["max_iterations"] == 16 for t in budget["trained"]["segmenters"].values())
    assert "its steps: vae 12 of 12" in md

    # a rerun resumes: nothing but the (idempotent) DB check and the report runs again
    again = run_experiment("exp", quick=True)
    assert set(again["step_seconds"]) <= {"build-db", "build-oracle-db", "report"}  # idempotent DB checks
    assert again["dice"] == report["dice"]
    assert Path(out / "segmenters" / "mrgen" / "mrgen_segmenter.json").exists()

"""The synthesis job end to end on the tiny phantom DB, a random tiny bundle and an untrained SAM2 at 256.

Thresholds are set to 0 here so that candidates are kept (an untrained SAM2 scores ≈0.01 IoU); the selection
rules themselves are tested against hand-worked tables in test_synth_selection.py.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from mrgen.datasets.store import load_index, read_table
from mrgen.jobs.synthesis.config import SynthesisConfig
from mrgen.jobs.synthesis.run import run_synthesis
from mrgen.jobs.synthesis.stages.writer import audit_parts, read_audit
from mrgen.platform import storage

MASKS = 6          # the first six masked slices of phantom-src: some too small (skipped), the rest used
CANDIDATES, KEEP = 3, 2
USABLE = None      # set by `usable` from the source masks' areas (official minimum 0.5 %)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> str:
    from mrgen.models.bundle import build_random_bundle

    path = str(tmp_path_factory.mktemp("synth_bundle") / "bundle")
    build_random_bundle("tiny").save(path)
    return path


def _config(bundle: str, db: str, out: str, *extra: str) -> SynthesisConfig:
    from mrgen.datasets.phantom import TARGET_MODALITY

    return SynthesisConfig.load("tiny", [
        f"model={bundle}", f"source={db}", f"out={out}", f"target_modalities=['{TARGET_MODALITY}']",
        "source_datasets=['phantom-src']", f"max_masks={MASKS}", f"candidates={CANDIDATES}", f"keep={KEEP}", "steps=2",
        "scorer.random=true", "scorer.image_size=256", "thresholds.organ_iou=0", "thresholds.organ_conf=0",
        "thresholds.mean_iou=0", "thresholds.mean_conf=0", f"output.shard_rows={4 * KEEP}", *extra])


def _check_each_mask_once(out: str) -> None:
    audit = read_audit(out)
    per_mask = audit.group_by("mask_key").aggregate([("candidate_index", "count")]).to_pylist()
    assert len(per_mask) == MASKS
    skipped = audit.filter(pc.equal(audit["fate"], "skipped"))
    reasons = skipped["skip_reason"].to_pylist()
    assert skipped.num_rows == MASKS - USABLE, reasons
    assert all("below the minimum" in r for r in reasons)
    counts = sorted(r["candidate_index_count"] for r in per_mask)
    assert counts == [1] * (MASKS - USABLE) + [CANDIDATES] * USABLE
    keys = [k for part in audit_parts(out) for k in part["masks"]]
    assert len(keys) == len(set(keys)) == MASKS
    table = read_table(out)
    assert table.num_rows == USABLE * KEEP
    assert len(set(table["slice_id"].to_pylist())) == table.num_rows
    assert set(table["fate"].to_pylist()) == {"kept"}
    assert table["scores_meaningful"].to_pylist() == [False] * table.num_rows


@pytest.fixture(scope="module", autouse=True)
def usable(tiny_db):
    global USABLE
    rows = read_table(tiny_db, columns=["slice_id", "organs", "mask"], has_mask=True, dataset="phantom-src").to_pylist()
    first = sorted((r for r in rows if r["organs"]), key=lambda r: r["slice_id"])[:MASKS]  # a cap takes organ masks
    USABLE = sum(np.frombuffer(r["mask"], np.uint8).astype(bool).mean() >= 0.005 for r in first)
    assert 0 < USABLE < MASKS, "the test needs both usable and skipped masks"
    return USABLE


@pytest.fixture(scope="module")
def first_run(bundle, tiny_db, tmp_path_factory):
    """A run whose generator actor kills itself (os._exit) on its 2nd batch; Ray restarts it and retries."""
    root = tmp_path_factory.mktemp("synth_runs")
    marker = root / "actor-killed"
    out = str(root / "run-a")
    report = run_synthesis(_config(bundle, tiny_db, out, f"fault_marker={marker}"))
    return {"out": out, "report": report, "marker": marker, "root": root}


def test_actor_killed_mid_run_each_mask_written_once(first_run):
    assert first_run["marker"].exists(), "the fault knob never fired: the test proved nothing"
    report = first_run["report"]
    assert report["duplicate_masks"] == [] and report["masks_finished"] == MASKS
    _check_each_mask_once(first_run["out"])


def test_outputs_metrics_contact_sheet_and_columns(first_run):
    out = first_run["out"]
    metrics = Path(out, "metrics.prom").read_text()
    assert f"mrgen_synthesis_candidates_generated_total {float(USABLE * CANDIDATES)}" in metrics
    assert f"mrgen_synthesis_masks_skipped_total {float(MASKS - USABLE)}" in metrics
    assert Path(out, "contact_sheet.png").stat().st_size > 1000
    report = json.loads(Path(out, "report.json").read_text())
    assert report["totals"]["candidates_kept"] == USABLE * KEEP
    assert "RANDOM-INIT" in report["filter_model"] and report["scores_meaningful"] is False
    index = load_index(out)
    assert index.meta["scores_meaningful"] is False and "mask_key" in index.extra_columns
    row = read_table(out).to_pylist()[0]
    assert row["modality"] == "T2 SPIR MRI" and row["split"] == "train" and row["dataset"] == "phantom-src-mrgen"
    assert row["source_slice_id"].startswith("phantom-src/vol000/") and row["prompt"].startswith("T2 SPIR MRI")
    assert len(json.loads(row["organ_scores"])) == len(row["organs"]) >= 1
    assert row["bundle_hash"] == report["bundle_hash"]


def test_resume_on_s3_reproduces_the_missing_masks(first_run, bundle, tiny_db, s3_server, tmp_path):
    """A run that died after some groups (its output on the suite's moto S3): the rerun does only the
    unfinished masks, writes nothing twice, and regenerates them bitwise as the first run did (same seed)."""
    local = tmp_path / "interrupted"
    shutil.copytree(first_run["out"], local)
    victim = max(audit_parts(str(local)), key=lambda p: len(p["masks"]))
    Path(local, victim["file"]).unlink()          # died before this group's audit part was written ...
    Path(local, "index.json").unlink()            # ... and before the index was committed
    out = "s3://mrgen-test/synth-resume"
    storage.upload_dir(local, out)
    report = run_synthesis(_config(bundle, tiny_db, out))
    assert report["this_run"]["masks_done"] == len(victim["masks"])
    assert report["already_done"] == MASKS - len(victim["masks"])
    _check_each_mask_once(out)
    a = {r["slice_id"]: r for r in read_table(first_run["out"]).to_pylist()}
    b = {r["slice_id"]: r for r in read_table(out).to_pylist()}
    assert set(a) == set(b)
    redone = [sid for sid, r in b.items() if r["mask_key"] in victim["masks"]]
    assert redone, "the interrupted group kept nothing: the determinism check would be empty"
    for sid in b:
        assert a[sid]["image"] == b[sid]["image"] and a[sid]["seed"] == b[sid]["seed"]
    again = run_synthesis(_config(bundle, tiny_db, out))  # a finished run: nothing left to do
    assert again["this_run"] == {} and again["rows"] == USABLE * KEEP


def test_adaptive_budget_stops_once_keep_pass(first_run, bundle, tiny_db):
    out = str(first_run["root"] / "run-adaptive")
    report = run_synthesis(_config(bundle, tiny_db, out, "adaptive=true", "wave_size=1"))
    # every candidate passes thresholds of 0, so each usable mask stops after KEEP candidates
    assert report["this_run"]["candidates_generated"] == USABLE * KEEP
    assert report["this_run"]["candidates_per_kept"] == 1.0
    adaptive = read_audit(out).to_pylist()
    fixed = {(r["mask_key"], r["candidate_index"]): r["seed"] for r in read_audit(first_run["out"]).to_pylist()}
    for r in adaptive:
        if r["candidate_index"] >= 0:
            assert r["seed"] == fixed[(r["mask_key"], r["candidate_index"])]


def test_early_rejection_stops_candidates_below_the_cut(bundle, tiny_db, tmp_path):
    """A probe run (cut 0) scores candidate 0's x̂₀ at 1/4 of the 4 steps and stops nothing; a run with a cut
    between those scores (candidates keep their seeds) stops the candidates below it there (audit fate stopped_early,
    4 denoiser rows: steps 0 and 1, guided) while the others finish (8 rows), and the report's totals add up."""
    settings = ("adaptive=true", "steps=4", "early_reject_at=0.25", "max_masks=3", "contact_sheet_masks=0")
    probe_out, cut_out = str(tmp_path / "probe"), str(tmp_path / "cut")
    run_synthesis(_config(bundle, tiny_db, probe_out, *settings, "candidates=1", "keep=1"))
    probe = [r for r in read_audit(probe_out).to_pylist() if r["candidate_index"] >= 0]
    assert len(probe) >= 2 and all(r["early_mean_iou"] is not None and r["denoiser_rows"] == 8 for r in probe)
    assert not any(r["fate"] == "stopped_early" for r in probe)
    low, high = min(r["early_mean_iou"] for r in probe), max(r["early_mean_iou"] for r in probe)
    assert low < high, f"the masks' x̂₀ score alike ({low}): no cut can stop one and keep another"
    cut = (low + high) / 2  # the lowest-scoring mask's candidate 0 stops, the highest's finishes
    report = run_synthesis(_config(bundle, tiny_db, cut_out, *settings, "wave_size=1", f"early_reject_below={cut}"))
    audit = [r for r in read_audit(cut_out).to_pylist() if r["candidate_index"] >= 0]
    stopped = [r for r in audit if r["fate"] == "stopped_early"]
    finished = [r for r in audit if r["fate"] != "stopped_early"]
    assert stopped and finished
    assert all(r["early_mean_iou"] < cut and r["denoiser_rows"] == 4 and r["mean_iou"] is None for r in stopped)
    assert all(r["early_mean_iou"] >= cut and r["denoiser_rows"] == 8 and r["mean_iou"] is not None for r in finished)
    totals = report["totals"]
    assert totals["candidates_stopped_early"] == len(stopped) == report["this_run"]["candidates_stopped_early"]
    assert totals["candidates_generated"] == len(finished) == report["this_run"]["candidates_generated"]
    assert totals["denoiser_rows"] == 4 * len(stopped) + 8 * len(finished) == report["this_run"]["denoiser_rows"]
    assert totals["denoiser_rows_per_kept"] == totals["denoiser_rows"] / totals["candidates_kept"]
    assert totals["strict_pass_rate"] == 1.0  # thresholds of 0: every finished candidate passes; stopped not counted
    kept = read_table(cut_out).to_pylist()
    assert len(kept) == totals["candidates_kept"] >= 1
    assert {(r["mask_key"], r["candidate_index"]) for r in kept} <= {(r["mask_key"], r["candidate_index"])
                                                                    for r in finished}

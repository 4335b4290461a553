"""Cheaper synthesis without Ray: the config of UniPC, guidance intervals and early rejection, the audit's cost
columns (denoiser rows, x̂₀ mean IoU, stopped_early), audits written before them, and resuming a run pinned
before they existed; the writer's flushes (a shard and an audit part each) and the commit's index of shards. The
end-to-end run with early rejection is in test_synth_pipeline.py."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mrgen.jobs.synthesis.config import SynthesisConfig
from mrgen.jobs.synthesis.run import SynthesisInputError, audit_totals, check_same_settings, commit
from mrgen.jobs.synthesis.stages.writer import (AUDIT_DIR, AUDIT_SCHEMA, PART_SHARD, RecordsUDF, WriterUDF,
                                               finished_masks, read_audit, read_part)
from mrgen.models.selection import STOPPED_EARLY
from mrgen.platform.config import ConfigError

H = W = 8


def test_config_takes_unipc_interval_and_early_rejection():
    config = SynthesisConfig.load("tiny", ["sampler=unipc", "guidance_interval=[0, 0.5]", "adaptive=true",
                                           "filter=medsam", "early_reject_at=0.5", "early_reject_below=0.2"])
    assert config.sampling.sampler == "unipc" and config.sampling.guidance_interval == (0.0, 0.5)
    assert (config.early_reject_at, config.early_reject_below) == (0.5, 0.2)
    assert config.sampling.denoiser_rows() == 2 * 2 + 2  # 4 steps, the first two guided


@pytest.mark.parametrize("overrides, message", [
    (["early_reject_at=0.5"], r"early_reject_at \(0.5\) needs adaptive=true and a filter"),
    (["early_reject_at=0.5", "adaptive=true", "filter=none"], "adaptive budget needs a filter"),
    (["early_reject_at=0.1", "adaptive=true"], r"early_reject_at: .* is step 0: it must be a step from 1 to 3"),
    (["early_reject_at=1.0", "adaptive=true"], "early_reject_at"),
    (["early_reject_below=0.3"], r"early_reject_below \(0.3\) needs early_reject_at"),
    (["early_reject_at=0.5", "adaptive=true", "early_reject_below=2"], "early_reject_below"),
    (["guidance_interval=[0.6, 0.2]"], r"guidance_interval must satisfy 0 <= lo < hi <= 1"),
    (["guidance_interval=[0.5]"], "guidance_interval"),
    (["sampler=euler"], "sampler"),
])
def test_bad_settings_are_refused_naming_the_fields(overrides, message):
    with pytest.raises(ConfigError, match=message):
        SynthesisConfig.load("tiny", overrides)


def _batch(n_tried: int, stopped: list[int], early: list[float | None] | None = None, with_costs: bool = True):
    """One mask's row as the adaptive stage hands it on: finished candidates' images, every seed, the filter's
    scores and fates of the finished ones."""
    finished = [c for c in range(n_tried) if c not in stopped]
    images = np.stack([np.full((H, W), c / 10, np.float32) for c in finished])
    organs = [{"organ": "liver", "iou": 0.5 + c / 100, "conf": 0.9, "present": True} for c in finished]
    row = {"mask_key": "k1", "source_slice_id": "src/vol/0001", "modality": "T2", "prompt": "T2 MRI",
           "skip_reason": "", "candidates": images.tobytes(), "n_candidates": len(finished),
           "seeds": json.dumps([100 + c for c in range(n_tried)]),
           "scores": json.dumps([{"index": c, "organs": [o]} for c, o in zip(finished, organs)]),
           "fates": json.dumps({str(c): "kept" if c == finished[0] else "passed_not_kept" for c in finished}),
           "relaxed": False, "n_strict": len(finished), "source_dataset": "src", "volume_id": "vol", "slice_index": 1,
           "modality_attributes": "", "region": None, "organs": json.dumps(["liver"]),
           "height": H, "width": W, "mask": np.ones((H, W), np.uint8).tobytes(),
           "organ_map": json.dumps({"1": "liver"}),
           "pixel_spacing": json.dumps([1.0, 1.0]), "source_file": "f", "source_sha256": "0"}
    if with_costs:
        row.update(denoiser_rows=json.dumps([4 if c in stopped else 8 for c in range(n_tried)]),
                   early_mean_iou=json.dumps(early or [None] * n_tried), stopped_early=json.dumps(stopped))
    batch = {}
    for key, value in row.items():
        column = np.empty(1, dtype=object)
        column[0] = value
        batch[key] = column
    return batch


class _writer:
    """The records stage then the writer on one batch (one flush), as the pipeline chains them."""

    def __init__(self, out: str):
        self.records = RecordsUDF(bundle_hash="b", filter_model="medsam", scores_meaningful=True, rule="paper",
                                  preview_keys=["k1"])
        self.writer = WriterUDF(out)

    def __call__(self, batch):
        return self.writer(self.records(batch))


def test_stopped_candidates_get_audit_rows_and_finished_ones_keep_their_images(tmp_path):
    out = str(tmp_path)
    early = [0.4, 0.1, 0.5, 0.05]
    summary = _writer(out)(_batch(4, stopped=[1, 3], early=early))
    assert summary["n_candidates"].tolist() == [2] and summary["n_stopped"].tolist() == [2]
    assert summary["denoiser_rows"].tolist() == [8 + 4 + 8 + 4]
    audit = sorted(read_audit(out).to_pylist(), key=lambda r: r["candidate_index"])
    assert [r["fate"] for r in audit] == ["kept", STOPPED_EARLY, "passed_not_kept", STOPPED_EARLY]
    assert [r["seed"] for r in audit] == [100, 101, 102, 103]
    assert [r["denoiser_rows"] for r in audit] == [8, 4, 8, 4]
    assert [r["early_mean_iou"] for r in audit] == pytest.approx(early)
    assert [r["mean_iou"] for r in audit] == [pytest.approx(0.5), None, pytest.approx(0.52), None]
    kept = pq.read_table(tmp_path / summary["shard"][0]).to_pylist()  # the shard (the index is the driver's)
    assert [r["candidate_index"] for r in kept] == [0] and kept[0]["slice_id"].endswith("-c00")
    preview = np.load(io.BytesIO(summary["preview"][0]))
    assert preview["indices"].tolist() == [0, 2] and preview["images"][1].max() == pytest.approx(0.2)
    totals = audit_totals(out)
    assert (totals["candidates_generated"], totals["candidates_stopped_early"], totals["candidates_kept"]) == (2, 2, 1)
    assert totals["denoiser_rows"] == 24 and totals["denoiser_rows_per_kept"] == 24.0
    assert totals["strict_pass_rate"] == 1.0 and totals["candidates_per_kept"] == 2.0


def test_audits_from_before_the_cost_columns_still_read(tmp_path):
    """A resumed run may hold audit parts written before denoiser_rows / early_mean_iou existed: they read as nulls,
    and the run's row total is unknown (None) rather than a partial sum."""
    out = str(tmp_path)
    _writer(out)(_batch(2, stopped=[], with_costs=False))  # a fixed-budget stage that counted nothing
    new = read_audit(out)
    assert new["denoiser_rows"].to_pylist() == [None, None] and new["early_mean_iou"].null_count == 2
    old_schema = pa.schema([f for f in AUDIT_SCHEMA if f.name not in ("denoiser_rows", "early_mean_iou")])
    old = pa.Table.from_pylist([{**new.to_pylist()[0], "mask_key": "k0", "candidate_index": 0}], schema=old_schema)
    pq.write_table(old, tmp_path / AUDIT_DIR / "part-old.parquet")
    _writer(out)(_batch(2, stopped=[]))  # rewrites k1's part, with the columns
    audit = read_audit(out)
    assert audit.schema == AUDIT_SCHEMA and audit.num_rows == 3
    by_mask = {(r["mask_key"], r["candidate_index"]): r["denoiser_rows"] for r in audit.to_pylist()}
    assert by_mask == {("k0", 0): None, ("k1", 0): 8, ("k1", 1): 8}
    totals = audit_totals(out)  # part by part, as a run's commit counts
    assert totals["candidates_generated"] == 3 and totals["candidates_stopped_early"] == 0
    assert totals["denoiser_rows"] is None and totals["denoiser_rows_per_kept"] is None


def test_runs_pinned_before_the_new_settings_resume_and_changes_are_refused(tmp_path):
    config = SynthesisConfig.load("tiny", [f"out={tmp_path}"])
    check_same_settings(config, "bundle", "medsam")
    pinned = json.loads((tmp_path / "run.json").read_text())
    assert not {"guidance_interval", "early_reject_at", "early_reject_below"} & set(pinned)  # as older runs wrote it
    check_same_settings(config, "bundle", "medsam")  # resumes
    for change, named in (({"guidance_interval": [0.5, 1]}, "guidance_interval"),
                          ({"adaptive": True, "early_reject_at": 0.5}, "adaptive, early_reject_at"),
                          ({"adaptive": True, "early_reject_at": 0.5, "early_reject_below": 0.1}, "early_reject_below"),
                          ({"sampler": "unipc"}, "sampler")):
        with pytest.raises(SynthesisInputError, match=f"other settings \\(.*{named}"):
            check_same_settings(config.with_overrides(change), "bundle", "medsam")


class _AlternatingScorer:
    """A stand-in filter: mean IoU 0.9, 0.1, 0.9, ... in the order it is asked (probes and finished images alike)."""

    def __init__(self):
        self.calls = 0

    def score(self, images, mask, organ_map, organs=None, start_index=0):
        from mrgen.models.selection import CandidateScores, OrganScore

        out = []
        for k in range(len(images)):
            iou = 0.9 if self.calls % 2 == 0 else 0.1
            self.calls += 1
            out.append(CandidateScores(index=start_index + k, organs=[OrganScore("liver", iou, 0.95)]))
        return out


@pytest.fixture(scope="module")
def bundle_uri(tmp_path_factory) -> str:
    from mrgen.models.bundle import build_random_bundle

    path = str(tmp_path_factory.mktemp("cost_bundle") / "bundle")
    build_random_bundle("tiny").save(path)
    return path


def _mask_rows() -> dict[str, np.ndarray]:
    masks = [np.zeros((64, 64), np.uint8) for _ in range(2)]
    masks[0][10:40, 10:40], masks[1][20:60, 5:30] = 1, 1
    rows = {"source_slice_id": ["src/v/0001", "src/v/0002"], "modality": ["T2", "T2"],
            "prompt": ["T2 MRI; liver", "T2 MRI; liver"], "mask": [m.tobytes() for m in masks], "height": [64, 64],
            "width": [64, 64], "organ_map": [json.dumps({"1": "liver"})] * 2, "skip_reason": ["", ""],
            "organs": [json.dumps(["liver"])] * 2}
    batch = {}
    for key, values in rows.items():
        batch[key] = np.empty(2, dtype=object)
        batch[key][:] = values
    return batch


def test_adaptive_stage_stops_candidates_and_keeps_the_others_images(bundle_uri, monkeypatch):
    """Two masks in one batch, sampling batches of 3 that cut across them: every candidate's seed, rows and x̂₀
    score land on its own mask and index, a stopped one has no image, and a finished one is the image the same
    candidate has without early rejection."""
    from mrgen.jobs.synthesis.stages import adaptive
    from mrgen.jobs.synthesis.stages.codec import decode_candidates
    from mrgen.models.sampling import SamplingSettings
    from mrgen.models.scorers import ScorerSettings
    from mrgen.models.selection import Thresholds

    monkeypatch.setattr(adaptive, "load_scorer", lambda *args, **kwargs: _AlternatingScorer())
    common = dict(bundle_uri=bundle_uri, candidates=4, rule="paper", thresholds=Thresholds(0, 0, 0, 0),
                  sampling=SamplingSettings(steps=4), run_seed=3, kind="sam2", scorer=ScorerSettings(), batch_size=3)
    plain = adaptive.AdaptiveUDF(wave_size=4, keep=4, **common).process(_mask_rows())
    early = adaptive.AdaptiveUDF(wave_size=2, keep=2, early_reject_at=0.25, early_reject_below=0.5,
                                 **common).process(_mask_rows())
    for i in range(2):
        seeds, plain_seeds = json.loads(early["seeds"][i]), json.loads(plain["seeds"][i])
        stopped, rows = json.loads(early["stopped_early"][i]), json.loads(early["denoiser_rows"][i])
        scores = json.loads(early["early_mean_iou"][i])
        assert stopped and seeds == plain_seeds[:len(seeds)]
        finished = [c for c in range(len(seeds)) if c not in stopped]
        assert early["n_candidates"][i] == len(finished) and len(rows) == len(scores) == len(seeds)
        assert all(scores[c] == 0.1 and rows[c] == 4 for c in stopped)      # steps 0, 1: 2 rows each
        assert all(scores[c] == 0.9 and rows[c] == 8 for c in finished)
        assert json.loads(plain["denoiser_rows"][i]) == [8] * 4 and json.loads(plain["early_mean_iou"][i]) == [None] * 4
        assert [c["index"] for c in json.loads(early["scores"][i])] == finished
        images = decode_candidates(early["candidates"][i], len(finished), 64, 64)
        reference = decode_candidates(plain["candidates"][i], 4, 64, 64)
        np.testing.assert_allclose(images, reference[finished], atol=1e-5)  # other batching: float rounding only


def test_a_bundles_own_calibration_replaces_the_paper_thresholds_for_its_filter(tmp_path):
    """`mrgen synthesize --model embedded --filter medsam` filters at the LiteMedSAM thresholds the bundle ships; an
    explicit threshold, another filter or a --thresholds file keep what they say."""
    import shutil

    from mrgen.jobs.synthesis.run import apply_thresholds_file
    from mrgen.models.manifest import FILTER_THRESHOLDS, embedded_bundle
    from mrgen.models.selection import calibrated_thresholds

    shipped = f"{embedded_bundle()}/{FILTER_THRESHOLDS}"
    own = calibrated_thresholds(shipped, "medsam")
    assert own.organ_iou < 0.70  # LiteMedSAM's calibration is not the paper's SAM2 thresholds

    def resolved(**overrides):
        return apply_thresholds_file(SynthesisConfig().with_overrides({"model": embedded_bundle(), **overrides}))

    config = resolved(filter="medsam")
    assert config.filter.thresholds == own and config.filter.thresholds_file == shipped
    assert resolved(filter="sam2").filter.thresholds.organ_iou == 0.70  # calibrated for another scorer: not used
    assert resolved(filter="medsam", **{"thresholds.organ_iou": 0.9}).filter.thresholds.organ_iou == 0.9
    other = tmp_path / "calibration.json"
    data = json.loads(open(shipped).read())
    data["thresholds"]["organ_iou"] = 0.33
    other.write_text(json.dumps(data))
    assert resolved(filter="medsam", thresholds_file=str(other)).filter.thresholds.organ_iou == 0.33
    bare = tmp_path / "bundle"  # a bundle without a calibration: the paper's thresholds
    shutil.copytree(embedded_bundle(), bare, ignore=shutil.ignore_patterns(FILTER_THRESHOLDS))
    assert apply_thresholds_file(SynthesisConfig().with_overrides(
        {"model": str(bare), "filter": "medsam"})).filter.thresholds.organ_iou == 0.70


def _flush(out: str, *keys: str) -> dict:
    """One flush of masks ``keys`` (each as _batch's mask, keyed and placed in its own source slice)."""
    batches = []
    for i, key in enumerate(keys):
        batch = _batch(2, stopped=[])
        batch["mask_key"][0], batch["source_slice_id"][0], batch["slice_index"][0] = key, f"src/vol/{i:04d}", i
        batches.append(_writer(out).records(batch))
    merged = {c: np.concatenate([b[c] for b in batches]) for c in batches[0]}
    return WriterUDF(out)(merged)


def test_a_flush_is_one_shard_and_one_part_and_the_index_lists_shards(tmp_path):
    """Two flushes of several masks: one shard and one audit part each, named by their masks; the commit builds the
    index from the parts' footers (the shards' rows, volumes and stats, not their masks) and removes an orphan
    shard; a part written before the writer recorded its shard (no footer entry) still commits, by opening it."""
    out = str(tmp_path)
    first, second = _flush(out, "k1", "k2", "k3"), _flush(out, "k4", "k5")
    assert len(set(first["shard"])) == len(set(second["shard"])) == 1 and first["shard"][0] != second["shard"][0]
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == sorted(
        Path(s).name for s in (first["shard"][0], second["shard"][0]))
    assert len(list((tmp_path / AUDIT_DIR).iterdir())) == 2
    assert finished_masks(out) == {"k1", "k2", "k3", "k4", "k5"}
    old = next(p for p in (tmp_path / AUDIT_DIR).iterdir() if read_part(out, f"{AUDIT_DIR}/{p.name}").shard ==
               second["shard"][0])
    table = pq.read_table(old)
    pq.write_table(table.replace_schema_metadata({PART_SHARD: second["shard"][0].encode()}), old)
    (tmp_path / "v1" / "part-orphan.parquet").write_bytes((tmp_path / first["shard"][0]).read_bytes())
    committed = commit(out, {})
    assert committed["masks_finished"] == 5 and committed["duplicate_masks"] == [] and committed["shards"] == 2
    index = json.loads((tmp_path / "index.json").read_text())
    assert sorted(s["rows"] for s in index["shards"]) == [2, 3]
    assert all(s["volumes"] == ["src-mrgen/vol-t2"] for s in index["shards"]) and "k1" not in json.dumps(index)
    assert not (tmp_path / "v1" / "part-orphan.parquet").exists() and committed["rows"] == 5

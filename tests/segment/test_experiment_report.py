"""The experiment's report reads each step's output through the loader beside the job that writes it: outputs written
here by those jobs' own writers (no training, no Ray) reach report.json and report.md, and a step that did not run
leaves its part out."""
from __future__ import annotations

import json

from mrgen.jobs.evaluate.fid import write_fid_report
from mrgen.jobs.evaluate.mask import write_controller_check
from mrgen.jobs.evaluate.segmenter import write_dice_report
from mrgen.jobs.experiment.config import ExperimentConfig
from mrgen.jobs.experiment.report import write_report_folder
from mrgen.jobs.experiment.run import Experiment
from mrgen.jobs.segment.train import MANIFEST as SEGMENTER_MANIFEST
from mrgen.jobs.synthesis.run import REPORT as SYNTHESIS_REPORT
from mrgen.platform import storage

ORGANS = ["liver", "spleen"]


def _dice(means: list[float]) -> dict:
    per_volume = {f"phantom-tgt/vol{i:03d}": {"mean": m, **dict.fromkeys(ORGANS, m)} for i, m in enumerate(means)}
    mean = sum(means) / len(means)
    return {"dice": {"organs": ORGANS, "mean_dice": mean, "per_organ": dict.fromkeys(ORGANS, mean),
                     "per_volume": per_volume}, "mean_dice": mean, "n_slices": 10, "n_volumes": len(means),
            "pooled": False, "table": "not written"}


def _experiment(tmp_path) -> Experiment:
    config = ExperimentConfig.from_preset("quick").with_overrides({"filter": "none", "unfiltered": False,
                                                                   "oracle": False})
    exp = Experiment(out=str(tmp_path / "exp"), config=config)
    exp.__dict__["data_label"] = "phantom"  # what the DB's index would say (no DB here)
    return exp


def test_the_report_reads_each_step_s_output(tmp_path):
    exp = _experiment(tmp_path)
    assert exp.segmenters == ["source-only", "mrgen"]
    write_dice_report(_dice([0.2, 0.3, 0.1]), exp.evaluation("source-only"))
    write_dice_report(_dice([0.5, 0.6, 0.7]), exp.evaluation("mrgen"))
    write_dice_report({**_dice([0.9]), "pooled": True, "n_slices": 16}, exp.fit("mrgen"))
    storage.write_text(storage.join(exp.segmenter("mrgen"), SEGMENTER_MANIFEST),
                       json.dumps({"training_cases": 42, "iterations": 8, "config": {"epochs": 2, "iterations": 4}}))
    block = {"n": {"real_target": 20, "source": 12, "synthetic": 12}, "synthetic_vs_real_target": 81.5,
             "source_vs_real_target": 97.25, "kid": {"synthetic_vs_real_target": 0.05, "source_vs_real_target": None},
             "kid_std": {"synthetic_vs_real_target": 0.01, "source_vs_real_target": None}, "kid_subsets": 100,
             "kid_subset_size": 6}
    write_fid_report({"extractor": "resnet18:random-init-seed0", "comparable_with_published": False, **block},
                     exp.fid_report)
    loss = {"slices": 4, "mse_true": 0.1, "mse_empty": 0.2, "mse_shuffled": 0.3, "mse_unet": 0.4, "gain": 0.6667}
    write_controller_check({"loss": {"train": loss}, "samples": None, "samples_target": None}, exp.mask_check)
    storage.write_text(storage.join(exp.synthetic, SYNTHESIS_REPORT),
                       json.dumps({"rows": 12, "filter_model": "none", "scores_meaningful": False,
                                   "totals": {"masks": 6, "candidates_generated": 12, "candidates_kept": 12}}))

    result = write_report_folder(exp)
    saved = json.loads((tmp_path / "exp" / "report" / "report.json").read_text())
    assert saved["dice"]["mrgen"]["mean"] == result["dice"]["mrgen"]["mean"] == 0.6
    assert saved["dice"]["mrgen"]["training_slices"] == 42 and saved["dice"]["source-only"]["training_slices"] is None
    assert abs(saved["dice_ratio_mrgen_over_source_only"] - 3.0) < 1e-9
    assert saved["differences"]["mrgen_minus_source_only"]["volumes"] == 3
    assert saved["fit"] == {"mrgen": {"mean": 0.9, "per_organ": dict.fromkeys(ORGANS, 0.9), "slices": 16}}
    assert saved["fid"]["synthetic_vs_real_target"] == 81.5 and saved["mask_dependence"] == {"train": loss}
    assert saved["synthesis"]["rows"] == 12 and saved["synthesis_unfiltered"] is None
    assert saved["filter"]["calibration"] is None and saved["budget"]["trained"]["segmenters"]["mrgen"] == {
        "iterations": 8, "max_iterations": 8}
    md = (tmp_path / "exp" / "report" / "report.md").read_text()
    assert "| synthetic vs phantom target | 12 vs 20 | 81.50 | 0.0500 ± 0.0100 |" in md
    assert "| phantom source vs phantom target | 12 vs 20 | 97.25 | - |" in md
    assert "| train | 4 | 0.1000 | 0.2000 | 0.3000 | 0.4000 | +0.667 |" in md
    assert "6 masks, 12 candidates, 12 kept" in md and "training slices: source-only -, mrgen 42" in md


def test_a_step_that_did_not_run_is_left_out(tmp_path):
    exp = _experiment(tmp_path)
    result = write_report_folder(exp)  # nothing ran
    assert result["dice"] == {} and result["fid"] == {} and result["mask_dependence"] == {}
    assert result["synthesis"] == dict.fromkeys(("totals", "rows", "scores_meaningful", "filter_model"))
    assert (tmp_path / "exp" / "report" / "report.md").exists()

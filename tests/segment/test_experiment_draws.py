"""The filter at equal count: training sets drawn from a hand-made audit table of a filtered run."""
from __future__ import annotations

import pytest

from mrgen.jobs.experiment.draws import draw_training_sets


def _audit(mask: str, fates: list[str], ious: list[float | None]) -> list[dict]:
    return [{"mask_key": mask, "candidate_index": i, "fate": fate, "mean_iou": iou,
             "mean_conf": 0.5 if iou is not None else None, "skip_reason": ""}
            for i, (fate, iou) in enumerate(zip(fates, ious))]


AUDIT = (_audit("m1", ["rejected", "kept", "kept"], [0.2, 0.9, 0.6])        # 2 kept of 3
         + _audit("m2", ["kept", "rejected", "rejected"], [0.7, 0.1, 0.3])  # 1 kept
         + _audit("m3", ["rejected", "rejected", "rejected"], [0.1, 0.2, None])  # nothing kept, one unscored
         + [{"mask_key": "m4", "candidate_index": None, "fate": None, "mean_iou": None, "mean_conf": None,
             "skip_reason": "empty mask"}])
CANDIDATES = [{"mask_key": m, "candidate_index": i, "slice_id": f"{m}/c{i}"} for m in ("m1", "m2", "m3")
              for i in range(3)]


def test_equal_count_takes_the_first_k_of_the_same_candidates():
    draws = draw_training_sets(AUDIT, CANDIDATES)
    kept = sum(r["fate"] == "kept" for r in AUDIT)
    assert draws["equal_count"] == ["m1/c0", "m1/c1", "m2/c0"] and len(draws["equal_count"]) == kept
    # the filter's choice differs from the score-blind one on m1: it kept c1 and c2, the draw holds c0 and c1


def test_best_and_worst_per_mask_by_score():
    draws = draw_training_sets(AUDIT, CANDIDATES)
    assert draws["best"] == ["m1/c1", "m2/c0", "m3/c1"]
    assert draws["worst"] == ["m1/c0", "m2/c1", "m3/c2"]  # an unscored candidate ranks last, as selection ranks it


def test_candidates_missing_from_the_unfiltered_run_are_named():
    with pytest.raises(ValueError, match=r"mask m1: candidates \[2\]"):
        draw_training_sets(AUDIT, [c for c in CANDIDATES if c["slice_id"] != "m1/c2"])

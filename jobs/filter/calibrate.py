"""`mrgen filter calibrate`: thresholds for a scorer from its scores of real annotated slices.

The paper's thresholds (τ_IoU 0.70, τ_conf 0.80, τ̄_IoU 0.80, τ̄_conf 0.90) are SAM2's. Any other scorer — and
SAM2 on other data — is calibrated on what it should accept: the real source slices scored against their own
masks. Each threshold is set at ``quantile`` of its real-slice distribution: ``organ_iou`` / ``organ_conf`` over
every (slice, organ) pair, ``mean_iou`` / ``mean_conf`` over the per-slice means (as the selection rule computes
them). With the default quantile 0.25, three quarters of the real (slice, organ) pairs clear each per-organ
threshold; a candidate passes only when it looks to the scorer at least as much like its mask as a
lower-quartile real slice does. Scores run in this process (no Ray): a few hundred slices take minutes on a CPU.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from mrgen.datasets.schema import decode_batch, decode_organ_map
from mrgen.datasets.store import read_table, spread
from mrgen.models.scorers import ScorerSettings, build_scorer
from mrgen.models.selection import CandidateScores, FilterCalibration, ThresholdConfig
from mrgen.platform import storage
from mrgen.platform.progress import Progress

QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9)


def _summary(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, np.float64)
    return {"n": int(arr.size), "mean": float(arr.mean()),
            **{f"q{int(q * 100):02d}": float(np.quantile(arr, q)) for q in QUANTILES}}


def calibrate(db: str, scorer: str = "medsam", settings: ScorerSettings | None = None, quantile: float = 0.25,
              limit: int | None = 200, rule: str = "paper", **filters: Any) -> FilterCalibration:
    """Score up to ``limit`` masked slices of ``db`` (evenly spread, slice-id order) against their own masks."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    settings = settings or ScorerSettings()
    filters = {k: v for k, v in filters.items() if v is not None}
    table = read_table(db, ["slice_id", "height", "width", "image", "has_mask", "mask", "organ_map"], has_mask=True,
                       **filters).sort_by("slice_id")
    batch = decode_batch(table.to_pydict())
    rows = [i for i in range(table.num_rows) if batch["mask"][i].any()]
    rows = [rows[i] for i in spread(len(rows), limit or len(rows))]
    if not rows:
        raise ValueError(f"{db}: no annotated slice with an organ matches {filters or 'the DB'}")
    model = build_scorer(scorer, settings)
    per_organ: dict[str, dict[str, list[float]]] = {}
    means: dict[str, list[float]] = {"iou": [], "conf": []}
    progress = Progress(f"calibrate {scorer}", total=len(rows))
    for i in rows:
        (scores,) = model.score(batch["image"][i][None], batch["mask"][i], decode_organ_map(batch["organ_map"][i]))
        scores: CandidateScores
        for organ in scores.counted(rule):
            entry = per_organ.setdefault(organ.organ, {"iou": [], "conf": []})
            entry["iou"].append(organ.iou)
            entry["conf"].append(organ.conf)
        means["iou"].append(scores.mean_iou(rule))
        means["conf"].append(scores.mean_conf(rule))
        progress.update(1)
    progress.close()
    pairs = {k: [v for organ in per_organ.values() for v in organ[k]] for k in ("iou", "conf")}
    q = lambda values: round(float(np.quantile(values, quantile)), 4)  # noqa: E731
    thresholds = ThresholdConfig(organ_iou=q(pairs["iou"]), organ_conf=q(pairs["conf"]), mean_iou=q(means["iou"]),
                                 mean_conf=q(means["conf"]))
    distributions = {"organ_pairs": {k: _summary(v) for k, v in pairs.items()},
                     "slice_means": {k: _summary(v) for k, v in means.items()},
                     "organs": {name: {k: _summary(v) for k, v in d.items()} for name, d in sorted(per_organ.items())}}
    return FilterCalibration(scorer=scorer, scorer_id=model.model_id, db=db, filters=filters, slices=len(rows),
                             quantile=quantile, thresholds=thresholds, distributions=distributions)


def write_calibration(calibration: FilterCalibration, uri: str) -> None:
    storage.write_text(uri, json.dumps(calibration.model_dump(mode="json"), indent=1))


def describe(calibration: FilterCalibration) -> str:
    t = calibration.thresholds
    lines = [f"{calibration.scorer} on {calibration.slices} real slices of {calibration.db}: thresholds at the "
             f"{calibration.quantile:g} quantile — organ IoU {t.organ_iou:.3f}, organ conf {t.organ_conf:.3f}, "
             f"mean IoU {t.mean_iou:.3f}, mean conf {t.mean_conf:.3f}",
             f"  {'organ':<14} {'n':>4} {'IoU q25':>8} {'IoU q50':>8} {'conf q25':>9} {'conf q50':>9}"]
    for name, d in calibration.distributions["organs"].items():
        lines.append(f"  {name:<14} {d['iou']['n']:>4} {d['iou']['q25']:>8.3f} {d['iou']['q50']:>8.3f} "
                     f"{d['conf']['q25']:>9.3f} {d['conf']['q50']:>9.3f}")
    return "\n".join(lines)

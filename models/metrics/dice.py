"""Volumetric Dice, as the paper evaluates segmenters (§4.1): slices are stacked into 3-D volumes, Dice is
computed per organ per volume, averaged per organ over volumes, then over organs.

Empty-structure convention (``dice`` below), for an organ in one volume:

=====================  ====================  ======================================================
reference              prediction            Dice
=====================  ====================  ======================================================
non-empty              anything              2|P∩R| / (|P|+|R|)   (0 when the prediction is empty)
empty                  non-empty             0.0                  (a false-positive organ is an error)
empty                  empty                 NaN                  (nothing to find: the organ is left out)
=====================  ====================  ======================================================

NaN entries are skipped by every average (``nanmean``): a volume's mean is over the organs that are present
in its reference or its prediction; an organ's mean is over the volumes where it was scored. An organ
never scored anywhere has mean NaN and is left out of the overall mean.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean arrays of the same shape, with the empty convention of the module docstring."""
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    ref_n, pred_n = int(ref.sum()), int(pred.sum())
    if ref_n == 0 and pred_n == 0:
        return math.nan
    return 2.0 * int(np.logical_and(pred, ref).sum()) / (ref_n + pred_n)


def dice_per_organ(pred: np.ndarray, ref: np.ndarray, organs: Mapping[int, str]) -> dict[str, float]:
    """Dice of each organ (label id → name) between two label volumes (same shape, integer ids)."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    return {name: dice(pred == label, ref == label) for label, name in sorted(organs.items())}


def nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


@dataclass
class DiceReport:
    """Dice per volume and organ, and the paper's averages. NaN means "not scored" (see module docstring)."""

    organs: list[str]
    per_volume: dict[str, dict[str, float]] = field(default_factory=dict)  # volume → organ → Dice

    def add(self, volume: str, scores: Mapping[str, float]) -> None:
        if volume in self.per_volume:
            raise ValueError(f"volume {volume!r} scored twice")
        unknown = set(scores) - set(self.organs)
        if unknown:
            raise ValueError(f"volume {volume!r}: organs {sorted(unknown)} are not in {self.organs}")
        self.per_volume[volume] = {o: float(scores.get(o, math.nan)) for o in self.organs}

    def volume_mean(self, volume: str) -> float:
        return nanmean(list(self.per_volume[volume].values()))

    def organ_mean(self, organ: str) -> float:
        return nanmean([scores[organ] for scores in self.per_volume.values()])

    def organ_means(self) -> dict[str, float]:
        return {o: self.organ_mean(o) for o in self.organs}

    def mean(self) -> float:
        """The paper's figure: per-organ means (over volumes), averaged over organs."""
        return nanmean(list(self.organ_means().values()))

    def to_json(self) -> dict:
        """JSON-ready; NaN becomes None (not scored)."""
        return {
            "organs": self.organs,
            "mean_dice": _json_float(self.mean()),
            "per_organ": {o: _json_float(v) for o, v in self.organ_means().items()},
            "per_volume": {v: {"mean": _json_float(self.volume_mean(v)),
                               **{o: _json_float(s) for o, s in scores.items()}}
                           for v, scores in sorted(self.per_volume.items())},
            "convention": "organ empty in reference and prediction: not scored (null); empty reference with a "
                          "prediction: 0; averages skip unscored entries; mean_dice = mean over organs of the "
                          "per-organ mean over volumes",
        }

    def table(self) -> str:
        """A plain-text table: one row per volume, one column per organ, then the per-organ means."""
        width = max([len("mean over volumes")] + [len(v) for v in self.per_volume])
        cols = [max(len(o), 6) for o in self.organs]
        head = f"{'volume':<{width}}  " + "  ".join(f"{o:>{c}}" for o, c in zip(self.organs, cols)) + f"  {'mean':>6}"
        lines = [head, "-" * len(head)]
        for volume, scores in sorted(self.per_volume.items()):
            cells = "  ".join(f"{_fmt(scores[o]):>{c}}" for o, c in zip(self.organs, cols))
            lines.append(f"{volume:<{width}}  {cells}  {_fmt(self.volume_mean(volume)):>6}")
        lines.append("-" * len(head))
        means = self.organ_means()
        cells = "  ".join(f"{_fmt(means[o]):>{c}}" for o, c in zip(self.organs, cols))
        lines.append(f"{'mean over volumes':<{width}}  {cells}  {_fmt(self.mean()):>6}")
        return "\n".join(lines)


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}"


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)

"""The experiment's comparisons: each segmenter's Dice with its 95 % interval over test volumes, every difference
the report states as a paired interval over the same volumes, and the goal they are held to. One run's report and
the multi-seed summary (:mod:`jobs.experiment.seeds`) both call these."""
from __future__ import annotations

from typing import Any

from mrgen.models.metrics.bootstrap import PerVolume, dice_intervals, paired_difference

# (key, label, a, b): the report states a − b
DIFFERENCES = (("mrgen_minus_source_only", "MRGen − source-only", "mrgen", "source-only"),
               ("filtered_minus_unfiltered", "filtered − unfiltered at equal count", "mrgen", "mrgen-unfiltered"),
               ("oracle_minus_mrgen", "oracle − MRGen", "oracle", "mrgen"),
               ("best_minus_worst", "best − worst candidate by filter score", "mrgen-best", "mrgen-worst"))
GAP_SHARE = 2 / 3  # the share of the source-only → oracle gap MRGen is asked to close


def organs_of(per_volume: dict[str, PerVolume]) -> list[str]:
    return sorted({o for scores in per_volume.values() for vol in scores.values() for o in vol})


def intervals(per_volume: dict[str, PerVolume]) -> dict[str, dict[str, Any]]:
    """Segmenter → its paper mean and per-organ means with 95 % bootstrap intervals over the test volumes."""
    organs = organs_of(per_volume)
    return {name: dice_intervals(scores, organs) for name, scores in per_volume.items()}


def differences(per_volume: dict[str, PerVolume]) -> dict[str, dict[str, Any]]:
    """Each of :data:`DIFFERENCES` whose two segmenters ran: value and paired 95 % interval (Dice, 0-1)."""
    organs = organs_of(per_volume)
    return {key: {"label": label, "a": a, "b": b, **paired_difference(per_volume[a], per_volume[b], organs)}
            for key, label, a, b in DIFFERENCES if a in per_volume and b in per_volume}


def verdict(diff: dict[str, Any]) -> str:
    """What a paired interval lets one say."""
    if diff["low"] is not None and diff["low"] > 0:
        return "higher"
    if diff["high"] is not None and diff["high"] < 0:
        return "lower"
    return "no difference the interval can see"


def goal(mean: dict[str, float | None], diffs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's bar on one run: MRGen ≥ 2x source-only and ≥ 0.40 mean Dice, the paired interval of MRGen −
    source-only above 0, and at least two thirds of the source-only → oracle gap closed."""
    src, mrgen, oracle = mean.get("source-only"), mean.get("mrgen"), mean.get("oracle")
    if src is None or mrgen is None:
        return {}
    out: dict[str, Any] = {"ratio_over_source_only": mrgen / src if src else None,
                           "at_least_2x_source_only": bool(mrgen >= 2 * src), "at_least_0.40": bool(mrgen >= 0.40)}
    above = diffs.get("mrgen_minus_source_only")
    if above is not None:
        out["interval_above_source_only"] = bool(above["low"] is not None and above["low"] > 0)
    if oracle is not None and oracle > src:
        out["gap_closed"] = (mrgen - src) / (oracle - src)
        out["closes_two_thirds_of_the_gap"] = bool(out["gap_closed"] >= GAP_SHARE)
    out["met"] = all(v for k, v in out.items() if isinstance(v, bool))
    return out


def interval_text(summary: dict[str, Any], signed: bool = False) -> str:
    """``57.3 [52.1, 62.0]`` in Dice points (``signed``: ``+4.1 [-1.2, +9.0]``)."""
    if summary.get("value") is None:
        return "-"
    fmt = "{:+.1f}" if signed else "{:.1f}"
    low, high = summary.get("low"), summary.get("high")
    bounds = f" [{fmt.format(100 * low)}, {fmt.format(100 * high)}]" if low is not None and high is not None else ""
    return fmt.format(100 * summary["value"]) + bounds

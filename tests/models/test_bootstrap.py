"""Bootstrap intervals over test volumes on cases whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest

from mrgen.models.metrics.bootstrap import (dice_intervals, paired_difference, rate_ratio_interval, ratio_interval,
                                            seed_average)
from mrgen.models.metrics.dice import DiceReport

ORGANS = ["liver", "spleen", "prostate"]


def _segmenter(seed: int, volumes: int = 30, offset: float = 0.0) -> dict[str, dict[str, float | None]]:
    """Per-volume Dice with a volume effect shared by every segmenter (seed 0) and noise of its own (``seed``)."""
    hard = np.random.default_rng(0).uniform(0.3, 0.8, (volumes, len(ORGANS)))
    own = np.random.default_rng(seed).normal(0, 0.05, hard.shape) if seed else 0
    scores = np.clip(hard + own + offset, 0, 1)
    return {f"vol{v:03d}": {o: None if (o == "prostate" and v % 4 == 0) else float(scores[v, i])
                            for i, o in enumerate(ORGANS)} for v in range(volumes)}


def test_interval_brackets_the_paper_mean():
    per_volume = _segmenter(1)
    report = DiceReport(organs=ORGANS)
    for vol, scores in per_volume.items():
        report.add(vol, {o: np.nan if d is None else d for o, d in scores.items()})
    out = dice_intervals(per_volume, ORGANS)
    assert out["mean"]["value"] == pytest.approx(report.mean())
    assert out["mean"]["low"] < report.mean() < out["mean"]["high"]
    assert out["mean"]["high"] - out["mean"]["low"] < 0.2 and out["volumes"] == 30
    for organ in ORGANS:
        o = out["per_organ"][organ]
        assert o["value"] == pytest.approx(report.organ_mean(organ)) and o["low"] < o["value"] < o["high"]


def test_two_alike_segmenters_differ_by_an_interval_around_zero():
    diff = paired_difference(_segmenter(1), _segmenter(2), ORGANS)
    assert diff["low"] < 0 < diff["high"] and diff["volumes"] == 30
    # pairing removes what the volumes share: the unpaired intervals are far wider than the paired one
    single = dice_intervals(_segmenter(1), ORGANS)["mean"]
    assert diff["high"] - diff["low"] < 0.5 * (single["high"] - single["low"])


def test_a_constant_offset_gives_an_interval_at_the_offset():
    diff = paired_difference(_segmenter(0, offset=0.1), _segmenter(0), ORGANS)
    assert diff["value"] == pytest.approx(0.1) and diff["low"] == pytest.approx(0.1, abs=1e-9)
    assert diff["high"] == pytest.approx(0.1, abs=1e-9)
    noisy = paired_difference(_segmenter(3, offset=0.1), _segmenter(4), ORGANS)
    assert 0 < noisy["low"] < 0.1 < noisy["high"]


def test_paired_needs_the_same_volumes_and_pooling_averages_seeds():
    a, b = _segmenter(1), _segmenter(2)
    with pytest.raises(ValueError, match="same volumes"):
        paired_difference(a, dict(list(b.items())[:-1]), ORGANS)
    pooled = seed_average([a, b])
    assert pooled["vol001"]["liver"] == pytest.approx((a["vol001"]["liver"] + b["vol001"]["liver"]) / 2)
    assert pooled["vol000"]["prostate"] is None


def test_ratio_interval_brackets_the_true_ratio_and_narrows_with_measurements():
    rng = np.random.default_rng(0)
    few = ratio_interval(rng.normal(90, 5, 6), rng.normal(100, 5, 6))
    many = ratio_interval(rng.normal(90, 5, 200), rng.normal(100, 5, 200))
    for r in (few, many):
        assert r["low"] < 0.9 < r["high"] and r["low"] <= r["value"] <= r["high"]
    assert many["high"] - many["low"] < (few["high"] - few["low"]) / 2 and many["high"] < 1
    assert ratio_interval([3.0], [2.0]) == {"value": 1.5, "low": 1.5, "high": 1.5, "n_a": 1, "n_b": 1}
    with pytest.raises(ValueError, match="both sides"):
        ratio_interval([], [1.0])


def test_rate_ratio_interval_weighs_intervals_by_their_seconds():
    """Windows of (count, seconds): the rate is sum over sum, so a 16-mask part published 0.1 s after the one before
    moves it little; intervals resampled as pairs, the result brackets the true 0.8 and narrows with more of them."""
    rng = np.random.default_rng(0)

    def window(n: int, rate: float) -> list[tuple[float, float]]:
        return [(256.0, 256.0 / rate * s) for s in rng.lognormal(0, 0.4, n)]

    few = rate_ratio_interval(window(4, 40), window(4, 32) + [(16.0, 0.1)])
    many = rate_ratio_interval(window(200, 40), window(200, 32))
    for r in (few, many):
        assert r["low"] < 0.8 * 1.1 and r["high"] > 0.8 * 0.9 and r["low"] <= r["value"] <= r["high"]
    assert many["high"] - many["low"] < (few["high"] - few["low"]) / 2 and many["high"] < 0.95
    exact = rate_ratio_interval([(100, 10)], [(100, 5), (100, 5)])
    assert exact["value"] == exact["low"] == exact["high"] == 2.0 and (exact["n_a"], exact["n_b"]) == (1, 2)
    with pytest.raises(ValueError, match="both sides"):
        rate_ratio_interval([], [(1, 1)])

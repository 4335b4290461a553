"""Bootstrap intervals (``scipy.stats.bootstrap``, percentile): over test volumes for the paper's Dice figures, and
over repeated measurements for a benchmark's ratio of two rates.

A segmenter's score is :class:`~mrgen.models.metrics.dice.DiceReport`'s: per organ averaged over volumes, then over
organs, NaN ("not scored") left out. Volumes are the unit that is resampled: every organ of a drawn volume comes
along, and a paired difference draws the same volumes for both segmenters, so what two segmenters share (an easy
or a hard volume) cancels. Percentile intervals: a constant offset gives the interval [offset, offset], where BCa
has no defined answer.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import bootstrap

LEVEL = 0.95
RESAMPLES = 2000

PerVolume = Mapping[str, Mapping[str, float | None]]  # volume → organ → Dice (None or NaN: not scored)


def _matrix(per_volume: PerVolume, volumes: Sequence[str], organs: Sequence[str]) -> np.ndarray:
    """[organ, volume] Dice with NaN where not scored."""
    return np.array([[np.nan if (v := per_volume[vol].get(o)) is None else float(v) for vol in volumes]
                     for o in organs], dtype=np.float64)


def _organ_means(x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # an organ absent from every drawn volume is NaN, as in DiceReport
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=-1)


def _paper_mean(x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(_organ_means(x), axis=0)


def _interval(data: tuple[np.ndarray, ...], statistic, seed: int, paired: bool) -> tuple[float, float]:
    result = bootstrap(data, statistic, paired=paired, vectorized=True, axis=-1, confidence_level=LEVEL,
                       n_resamples=RESAMPLES, method="percentile", random_state=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return float(low), float(high)


def _summary(value: float, low: float, high: float) -> dict[str, float | None]:
    clean = [None if np.isnan(v) else float(v) for v in (value, low, high)]
    return dict(zip(("value", "low", "high"), clean))


def dice_intervals(per_volume: PerVolume, organs: Sequence[str], seed: int = 0) -> dict[str, object]:
    """The paper's mean and each organ's mean with their 95 % bootstrap intervals over the volumes:
    ``{"mean": {value, low, high}, "per_organ": {organ: {value, low, high}}, "volumes": n}``."""
    volumes = sorted(per_volume)
    if len(volumes) < 2:
        raise ValueError(f"a bootstrap over volumes needs at least 2 volumes, got {len(volumes)}")
    x = _matrix(per_volume, volumes, organs)
    mean = _interval((x,), lambda d, axis=-1: _paper_mean(d), seed, paired=False)
    per_organ = {}
    for i, organ in enumerate(organs):
        scored = x[i][~np.isnan(x[i])]
        if len(scored) >= 2 and np.ptp(scored) > 0:
            low, high = _interval((scored,), lambda d, axis=-1: d.mean(axis=axis), seed, paired=False)
        else:  # one scored volume, or every volume alike: nothing to resample
            low = high = float(scored.mean()) if len(scored) else np.nan
        per_organ[organ] = _summary(float(scored.mean()) if len(scored) else np.nan, low, high)
    return {"mean": _summary(float(_paper_mean(x)), *mean), "per_organ": per_organ, "volumes": len(volumes)}


def paired_difference(a: PerVolume, b: PerVolume, organs: Sequence[str], seed: int = 0) -> dict[str, float | None]:
    """Paper mean of ``a`` minus that of ``b`` on the same volumes, with its 95 % paired bootstrap interval
    (``{value, low, high, volumes}``); both must score the same volumes."""
    volumes = sorted(a)
    if sorted(b) != volumes:
        raise ValueError(f"paired difference needs the same volumes: {len(volumes)} vs {len(b)} "
                         f"({sorted(set(volumes) ^ set(b))[:4]} in one only)")
    if len(volumes) < 2:
        raise ValueError(f"a bootstrap over volumes needs at least 2 volumes, got {len(volumes)}")
    xa, xb = _matrix(a, volumes, organs), _matrix(b, volumes, organs)

    def difference(p: np.ndarray, q: np.ndarray, axis: int = -1) -> np.ndarray:
        return _paper_mean(p) - _paper_mean(q)

    value = float(difference(xa, xb))
    if np.allclose(xa, xb, equal_nan=True):
        low = high = value
    else:
        low, high = _interval((xa, xb), difference, seed, paired=True)
    return {**_summary(value, low, high), "volumes": len(volumes)}


def seed_average(runs: Sequence[PerVolume]) -> dict[str, dict[str, float | None]]:
    """Per-volume Dice averaged over runs (seeds) that scored the same volumes: the pooled input of the
    multi-seed intervals (NaN where no run scored the organ in that volume)."""
    volumes = sorted(runs[0])
    if any(sorted(r) != volumes for r in runs):
        raise ValueError("the runs scored different test volumes: pooling needs the same ones")
    organs = sorted({o for r in runs for v in r.values() for o in v})
    out: dict[str, dict[str, float | None]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for vol in volumes:
            stacked = np.array([[np.nan if (d := r[vol].get(o)) is None else d for o in organs] for r in runs], float)
            out[vol] = {o: None if np.isnan(m) else float(m) for o, m in zip(organs, np.nanmean(stacked, axis=0))}
    return out


def ratio_interval(a: Sequence[float], b: Sequence[float], statistic=np.median,
                   seed: int = 0) -> dict[str, float | None]:
    """``statistic(a) / statistic(b)`` with its 95 % bootstrap interval, ``a`` and ``b`` resampled independently
    (two runs' repeated measurements, e.g. samples/s per logging interval): ``{value, low, high, n_a, n_b}``."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not len(x) or not len(y):
        raise ValueError(f"a ratio needs measurements on both sides, got {len(x)} and {len(y)}")

    def ratio(p: np.ndarray, q: np.ndarray, axis: int = -1) -> np.ndarray:
        return statistic(p, axis=axis) / statistic(q, axis=axis)

    value = float(ratio(x, y))
    if len(x) < 2 or len(y) < 2 or (np.ptp(x) == 0 and np.ptp(y) == 0):
        low = high = value  # nothing to resample
    else:
        low, high = _interval((x, y), ratio, seed, paired=False)
    return {**_summary(value, low, high), "n_a": len(x), "n_b": len(y)}


def rate_ratio_interval(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]],
                        seed: int = 0) -> dict[str, float | None]:
    """The rate of ``b`` over the rate of ``a``, each a window of (count, seconds) intervals whose rate is
    sum(count) / sum(seconds), with its 95 % percentile bootstrap interval: each window's intervals resampled
    independently (e.g. the masks a synthesis run published at each part, early and late in the run):
    ``{value, low, high, n_a, n_b}``."""
    x, y = np.asarray(a, dtype=np.float64).reshape(-1, 2), np.asarray(b, dtype=np.float64).reshape(-1, 2)
    if not len(x) or not len(y):
        raise ValueError(f"a rate ratio needs intervals on both sides, got {len(x)} and {len(y)}")

    def rate(w: np.ndarray, axis: int = -1) -> np.ndarray:  # w: [count | seconds, ..., interval]
        return w[0].sum(axis=axis) / w[1].sum(axis=axis)

    def ratio(p: np.ndarray, q: np.ndarray, axis: int = -1) -> np.ndarray:
        return rate(q, axis) / rate(p, axis)

    value = float(ratio(x.T, y.T))
    if len(x) < 2 or len(y) < 2:
        low = high = value  # nothing to resample
    else:
        low, high = _interval((x.T, y.T), ratio, seed, paired=False)
    return {**_summary(value, low, high), "n_a": len(x), "n_b": len(y)}

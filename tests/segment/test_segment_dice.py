"""Volumetric Dice against hand-worked cases, including the empty-organ convention."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mrgen.models.metrics.dice import DiceReport, dice, dice_per_organ, nanmean

ORGANS = {1: "liver", 2: "spleen", 3: "kidney"}


def test_dice_of_overlapping_squares():
    ref = np.zeros((1, 6, 6), bool)
    pred = np.zeros((1, 6, 6), bool)
    ref[0, 0:4, 0:4] = True   # 16 voxels
    pred[0, 2:6, 2:6] = True  # 16 voxels, overlap 2x2 = 4
    assert dice(pred, ref) == pytest.approx(2 * 4 / 32)


def test_dice_is_over_the_whole_volume_not_a_mean_of_slices():
    # slice 0: perfect (4 of 4); slice 1: reference 4 voxels, prediction empty.
    # volumetric: 2*4 / (4 + 8) = 2/3; a mean of slice Dices would be (1 + 0) / 2 = 0.5
    ref = np.zeros((2, 4, 4), np.uint8)
    pred = np.zeros((2, 4, 4), np.uint8)
    ref[0, :2, :2] = ref[1, :2, :2] = 1
    pred[0, :2, :2] = 1
    assert dice_per_organ(pred, ref, {1: "liver"})["liver"] == pytest.approx(2 / 3)


def test_empty_conventions():
    empty = np.zeros((2, 3, 3), bool)
    some = empty.copy()
    some[0, 1, 1] = True
    assert math.isnan(dice(empty, empty))          # nothing to find, nothing found: not scored
    assert dice(some, empty) == 0.0                # organ predicted where there is none: 0
    assert dice(empty, some) == 0.0                # organ missed entirely: 0
    assert dice(some, some) == 1.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((2, 2)), np.zeros((2, 3)))


def test_per_organ_labels_are_separated():
    ref = np.array([[[1, 1, 2, 2, 0, 0]]], np.uint8)
    pred = np.array([[[1, 2, 2, 2, 3, 0]]], np.uint8)
    scores = dice_per_organ(pred, ref, ORGANS)
    assert scores["liver"] == pytest.approx(2 * 1 / 3)     # |P|=1, |R|=2, overlap 1
    assert scores["spleen"] == pytest.approx(2 * 2 / 5)    # |P|=3, |R|=2, overlap 2
    assert scores["kidney"] == 0.0                         # reference empty, predicted: 0


def test_report_averages_like_the_paper():
    report = DiceReport(organs=["liver", "spleen", "kidney"])
    report.add("a", {"liver": 0.9, "spleen": 0.5, "kidney": math.nan})
    report.add("b", {"liver": 0.7, "spleen": math.nan, "kidney": 0.2})
    # per organ over volumes, NaN skipped
    assert report.organ_means() == pytest.approx({"liver": 0.8, "spleen": 0.5, "kidney": 0.2})
    # then the mean over organs (not over all (volume, organ) pairs, which would give 2.3/4 = 0.575)
    assert report.mean() == pytest.approx((0.8 + 0.5 + 0.2) / 3)
    assert report.volume_mean("a") == pytest.approx(0.7)
    out = report.to_json()
    assert out["per_volume"]["a"]["kidney"] is None
    assert out["mean_dice"] == pytest.approx(0.5)
    table = report.table()
    assert "mean over volumes" in table and "80.0" in table and "-" in table


def test_report_organ_never_scored_is_left_out_of_the_mean():
    report = DiceReport(organs=["liver", "bladder"])
    report.add("a", {"liver": 0.6, "bladder": math.nan})
    assert math.isnan(report.organ_mean("bladder"))
    assert report.mean() == pytest.approx(0.6)
    assert report.to_json()["per_organ"]["bladder"] is None


def test_report_rejects_duplicates_and_unknown_organs():
    report = DiceReport(organs=["liver"])
    report.add("a", {"liver": 1.0})
    with pytest.raises(ValueError, match="twice"):
        report.add("a", {"liver": 1.0})
    with pytest.raises(ValueError, match="spleen"):
        report.add("b", {"spleen": 1.0})


def test_nanmean_of_nothing_is_nan():
    assert math.isnan(nanmean([]))
    assert math.isnan(nanmean([math.nan]))

"""The organ vocabulary: spellings of one organ meet in one name; unknown names come back normalised."""
from __future__ import annotations

import pytest

from mrgen.datasets.organs import canonical_organ, canonical_organ_map


@pytest.mark.parametrize("name", ["right kidney", "Right kidney", "right_kidney", "kidney_right", "Kidney (right)",
                                  "RK", "R-Kidney"])
def test_spellings_of_the_right_kidney(name):
    assert canonical_organ(name) == "right kidney"


def test_public_datasets_own_names_and_unknown_names():
    assert canonical_organ_map({1: "Liver", 4: "gall bladder", 8: "arota", 9: "postcava", 15: "prostate/uterus",
                                20: "PZ", 21: "Portal_Vein"}) == {
        1: "liver", 4: "gallbladder", 8: "aorta", 9: "inferior vena cava", 15: "prostate or uterus",
        20: "prostate peripheral zone", 21: "portal vein"}
    assert canonical_organ("left kidney") != canonical_organ("right kidney")

"""Modality attribute table: exact and keyword matching of free-text labels, config extension, unknown labels."""
from __future__ import annotations

import pytest

from mrgen.datasets.modality import (MODALITY_TABLE, MODALITY_TABLE_VERSION, UnknownModalityError, attributes_for,
                                     canonical_modality)

REQUIRED = ("T1", "T1 in-phase", "T1 out-of-phase", "T1 fat-sat", "T1 C+", "T2", "T2 SPIR", "T2 HASTE", "STIR", "PD",
            "DWI", "ADC", "CT")


@pytest.mark.parametrize("label, expected", [
    ("T1", "T1"),
    ("T1-weighted", "T1"),
    ("T1W abdomen MRI", "T1"),
    ("T2 SPIR Abdomen MRI", "T2 SPIR"),
    ("t2 fat-sat", "T2 SPIR"),
    ("T2W SPAIR axial", "T2 SPIR"),
    ("T2-weighted", "T2"),
    ("T2 TSE", "T2"),
    ("t1 opposed phase", "T1 out-of-phase"),
    ("T1 out-of-phase MRI", "T1 out-of-phase"),
    ("T1 OutOfPhase", "T1 out-of-phase"),
    ("T1 in-phase MRI", "T1 in-phase"),
    ("T1 InPhase", "T1 in-phase"),
    ("dwi b800", "DWI"),
    ("Diffusion weighted b 50", "DWI"),
    ("ADC map", "ADC"),
    ("apparent diffusion coefficient", "ADC"),
    ("T1 C+ portal venous", "T1 C+"),
    ("T1 fat-sat post contrast", "T1 C+"),
    ("t1 vibe arterial", "T1 C+"),
    ("T1 fat sat", "T1 fat-sat"),
    ("T2 HASTE coronal", "T2 HASTE"),
    ("SSFSE", "T2 HASTE"),
    ("STIR", "STIR"),
    ("Proton density", "PD"),
    ("CT abdomen", "CT"),
    ("Computed tomography", "CT"),
])
def test_labels_resolve(label, expected):
    assert canonical_modality(label) == expected
    assert attributes_for(label) == MODALITY_TABLE[expected]


def test_table_covers_required_modalities_in_paper_form():
    assert MODALITY_TABLE_VERSION >= 1
    for name in REQUIRED:
        text = MODALITY_TABLE[name]
        for tissue in ("fat", "muscle", "water"):
            assert f"{tissue} " in text, (name, tissue)
    assert MODALITY_TABLE["T1"].startswith("fat high signal, muscle intermediate signal, water low signal, fat bright")
    assert MODALITY_TABLE["T1"] != MODALITY_TABLE["T2"]
    assert MODALITY_TABLE["T2"] != MODALITY_TABLE["T2 SPIR"]
    assert MODALITY_TABLE["T1 in-phase"] != MODALITY_TABLE["T1 out-of-phase"]


@pytest.mark.parametrize("label", ["FLAIR-ish banana", "ultrasound", "", "   ", "MRI"])
def test_unknown_label_is_reported(label):
    with pytest.raises(UnknownModalityError) as err:
        attributes_for(label)
    assert err.value.label == label
    assert repr(label) in str(err.value)


def test_extra_adds_labels_and_overrides_builtin():
    extra = {"Banana weighted": "fat banana signal", "T2 SPIR": "custom spir text"}
    assert attributes_for("banana-weighted MRI", extra) == "fat banana signal"
    assert attributes_for("T2 SPIR Abdomen MRI", extra) == "custom spir text"
    assert attributes_for("t2 spair", extra) == "custom spir text"  # keyword match lands on the overridden name
    assert attributes_for("T1 MRI", extra) == MODALITY_TABLE["T1"]
    with pytest.raises(UnknownModalityError):
        attributes_for("banana", {})

"""CHAOS MR: DICOM series written with pydicom (each file its own SeriesInstanceUID, as CHAOS ships them) next to
PNG ground truth in grey bands; one study stored with the columns flipped in its DICOM orientation."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mrgen.datasets.config import DBConfig
from mrgen.datasets.ingest import layouts
from mrgen.datasets.ingest.build import ingest_volume
from mrgen.datasets.ingest.cases import VolumeError
from mrgen.datasets.schema import decode_mask

from tests.datasets.ingest.layout_data import PIXEL_MM, SLICE_MM, display_case, liver_side, write_chaos


@pytest.fixture(scope="module")
def chaos(tmp_path_factory):
    return write_chaos(tmp_path_factory.mktemp("chaos") / "CHAOS")


def test_discovery_splits_and_partial_studies(chaos):
    found = layouts.discover(chaos)
    assert found.layout == "chaos" and found.dataset == "chaos-mri"
    rows = {r.volume_id: r for r in found.rows}
    assert {v: (r.modality, r.split) for v, r in rows.items() if v.startswith(("1_", "4_"))} == {
        "1_T1DUAL_InPhase": ("T1 in-phase", "train"), "1_T1DUAL_OutPhase": ("T1 out-of-phase", "train"),
        "1_T2SPIR": ("T2 SPIR", "train"), "4_T1DUAL_InPhase": ("T1 in-phase", "test"),
        "4_T1DUAL_OutPhase": ("T1 out-of-phase", "test"), "4_T2SPIR": ("T2 SPIR", "test")}
    assert rows["4_T2SPIR"].label is None and rows["1_T2SPIR"].label.endswith("1/T2SPIR/Ground")
    assert "3_T2SPIR" not in rows and "3_T1DUAL_InPhase" in rows  # its gap is found when the series is read
    problems = [(p.file.split("MR/")[1], p.reason) for p in found.problems]
    assert problems == [  # study 3's InPhase lost a slice and its mask, which OutPhase shares; T2SPIR lost a mask
        ("3/T1DUAL/Ground", "case 3: T1DUAL/Ground/ holds 4 PNG masks for the 5 DICOM files of "
                            "T1DUAL/DICOM_anon/OutPhase/"),
        ("3/T2SPIR/Ground", "case 3: T2SPIR/Ground/ holds 4 PNG masks for the 5 DICOM files of T2SPIR/DICOM_anon/")]


def test_ground_truth_lands_on_the_anatomy_in_either_dicom_orientation(chaos):
    rows = {r.volume_id: r for r in layouts.discover(chaos).rows}
    config = DBConfig(resolution=16)
    plain = ingest_volume(rows["1_T2SPIR"], "a", config).to_pylist()
    flipped = ingest_volume(rows["2_T2SPIR"], "a", config).to_pylist()
    _, ids = display_case(5)
    assert [decode_mask(r["mask"], 16, 16).tolist() for r in plain] == ids.tolist()  # inferior → superior
    assert [r["mask"] for r in plain] == [r["mask"] for r in flipped]
    assert [r["image"] for r in plain] == [r["image"] for r in flipped]
    assert all(liver_side(decode_mask(r["mask"], 16, 16)) == "left" for r in plain)
    assert plain[0]["organs"] == ["liver", "right kidney"]
    assert plain[0]["source_organ_map"] == '{"1": "Liver", "2": "Right kidney", "3": "Left kidney", "4": "Spleen"}'
    assert plain[0]["source_spacing"] == pytest.approx([PIXEL_MM, PIXEL_MM, SLICE_MM])


def test_a_gap_in_the_series_and_a_stray_grey_level_name_the_files(chaos):
    rows = {r.volume_id: r for r in layouts.discover(chaos).rows}
    with pytest.raises(VolumeError, match=r"gap of 12.00 mm between IMG-0002-00004.dcm and IMG-0002-00002.dcm"):
        ingest_volume(rows["3_T1DUAL_InPhase"], "a", DBConfig(resolution=16))
    png = chaos / "CHAOS_Train_Sets/Train_Sets/MR/5/T1DUAL/Ground/IMG-0002-00001.png"
    grey = np.array(Image.open(png))
    grey[0, 0] = 30
    Image.fromarray(grey).save(png)
    with pytest.raises(VolumeError, match="grey level 30 lies in none of CHAOS's bands") as error:
        ingest_volume(rows["5_T1DUAL_OutPhase"], "a", DBConfig(resolution=16))
    assert error.value.file == str(png)


def test_split_by_keeps_a_patients_sequences_together(chaos):
    found = layouts.discover(chaos, split="3:0.34")
    splits = {}
    for row in found.rows:
        splits.setdefault(found.cases[row.key], set()).add(row.split)
    assert all(len(s) == 1 for s in splits.values())
    moved = [case for case, s in splits.items() if s == {"test"} and case != "4"]  # 4 is CHAOS's own test case
    assert splits["4"] == {"test"} and len(moved) == 1  # round(0.34 x 4 train cases)
    assert [r.split for r in layouts.discover(chaos, split="3:0.34").rows] == [r.split for r in found.rows]

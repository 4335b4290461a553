"""nnU-Net v2 raw: discovery (channels, splits, problems) and the rows it makes, read without Ray."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mrgen.datasets.config import DBConfig
from mrgen.datasets.ingest import layouts
from mrgen.datasets.ingest.build import ingest_volume
from mrgen.datasets.schema import decode_mask, decode_organ_map

from tests.datasets.ingest.layout_data import liver_side, ras_case, save_nifti

CONFIG = DBConfig(resolution=16)


@pytest.fixture()
def raw(tmp_path):
    root = tmp_path / "Dataset007_Tiny"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True)
    save = save_nifti
    for case, folder, flip in (("abd_001", "Tr", False), ("abd_002", "Tr", True), ("abd_003", "Ts", False)):
        image, label = ras_case(seed=1)  # the same anatomy, abd_002 stored with x flipped
        save(root / f"images{folder}" / f"{case}_0000.nii.gz", image, flip)
        save(root / f"images{folder}" / f"{case}_0001.nii.gz", image * 0.5 + 7, flip)
        save(root / f"labels{folder}" / f"{case}.nii.gz", label, flip)
    image, label = ras_case(seed=2)
    save(root / "imagesTr" / "abd_004_0000.nii.gz", image)  # its channel 1 is missing
    save(root / "labelsTr" / "abd_004.nii.gz", label)
    save(root / "labelsTr" / "abd_009.nii.gz", label)  # a label without its image
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "Liver": 1, "kidney_right": 2},
        "numTraining": 3, "file_ending": ".nii.gz"}))
    return root


def test_cases_channels_splits_and_problems(raw):
    found = layouts.discover(raw)
    assert found.layout == "nnunet" and found.dataset == "dataset007-tiny"
    by_volume = {r.volume_id: r for r in found.rows}
    assert sorted(by_volume) == ["abd_001_ADC", "abd_001_T2", "abd_002_ADC", "abd_002_T2", "abd_003_ADC",
                                 "abd_003_T2"]
    assert {v: r.split for v, r in by_volume.items() if v.endswith("T2")} == {
        "abd_001_T2": "train", "abd_002_T2": "train", "abd_003_T2": "test"}
    assert by_volume["abd_001_ADC"].modality == "ADC" and by_volume["abd_001_T2"].modality == "T2"
    assert by_volume["abd_001_ADC"].image.endswith("imagesTr/abd_001_0001.nii.gz")
    assert by_volume["abd_003_T2"].label.endswith("labelsTs/abd_003.nii.gz")
    problems = {p.file.split("Dataset007_Tiny/")[1]: p.reason for p in found.problems}
    assert problems == {"labelsTr/abd_009.nii.gz": "case abd_009: label without its image: imagesTr/ holds no "
                                                   "abd_009_0000.nii.gz",
                        "imagesTr/abd_004_0001.nii.gz": "case abd_004: channel 1 (ADC) image abd_004_0001.nii.gz is "
                                                        "missing"}
    assert found.cases["dataset007-tiny/abd_002_ADC"] == "abd_002"


def test_flipped_affine_gives_the_same_slices_and_organs_are_normalised(raw):
    rows = {r.volume_id: r for r in layouts.discover(raw).rows}
    plain, flipped = (ingest_volume(rows[v], "attrs", CONFIG).to_pylist() for v in ("abd_001_T2", "abd_002_T2"))
    assert [r["image"] for r in plain] == [r["image"] for r in flipped]
    assert [r["mask"] for r in plain] == [r["mask"] for r in flipped]
    for row in plain + flipped:
        assert liver_side(decode_mask(row["mask"], 16, 16)) == "left"  # the patient's right
        assert row["organs"] == ["liver", "right kidney"]
        assert decode_organ_map(row["organ_map"]) == {1: "liver", 2: "right kidney"}
        assert decode_organ_map(row["source_organ_map"]) == {1: "Liver", 2: "kidney_right"}
        assert row["source_spacing"] == pytest.approx([0.9, 0.8, 3.0])  # rows run along j, columns along i


def test_layout_errors_name_the_folder(tmp_path, raw):
    with pytest.raises(layouts.LayoutError, match="no known dataset layout"):
        layouts.discover(tmp_path)
    with pytest.raises(layouts.LayoutError, match="--layout 'nnUNet'"):
        layouts.discover(raw, layout="nnUNet")
    with pytest.raises(layouts.LayoutError, match="SEED:FRACTION"):
        layouts.discover(raw, split="0.2")
    (raw / "dataset.json").write_text("{")
    with pytest.raises(layouts.LayoutError, match="dataset.json: not valid JSON"):
        layouts.discover(raw, layout="nnunet")


def test_other_nnunet_file_endings_read_in_the_same_orientation(tmp_path):
    import SimpleITK as sitk

    from mrgen.datasets.ingest.readers import read_volume

    image, _ = ras_case(seed=3)
    save_nifti(tmp_path / "a.nii.gz", image, flip_x=True)
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "a.nii.gz")), str(tmp_path / "a.nrrd"))
    nifti, nrrd = read_volume(tmp_path / "a.nii.gz"), read_volume(tmp_path / "a.nrrd")
    np.testing.assert_array_equal(nifti.array, nrrd.array)
    assert nrrd.spacing == pytest.approx(nifti.spacing)

"""Medical Segmentation Decathlon: a 4-D T2 + ADC task gives one volume per channel; dataset.json's lists give the
splits and name missing files."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from mrgen.datasets.config import DBConfig
from mrgen.datasets.ingest import layouts
from mrgen.datasets.ingest.build import ingest_volume
from mrgen.datasets.schema import decode_image, decode_mask

from tests.datasets.ingest.layout_data import liver_side, ras_case


def test_prostate_channels_splits_and_missing_files(tmp_path):
    root = tmp_path / "Task05_Prostate"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    image, label = ras_case(seed=4)
    adc = np.flip(image, axis=1) + 50  # a different picture in channel 1
    affine = np.diag([0.6, 0.6, 3.6, 1.0])
    nib.save(nib.Nifti1Image(np.stack([image, adc], axis=-1), affine), str(root / "imagesTr" / "prostate_00.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / "prostate_00.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / "prostate_02.nii.gz"))  # listed nowhere
    nib.save(nib.Nifti1Image(np.stack([image, adc], axis=-1), affine), str(root / "imagesTs" / "prostate_03.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({
        "name": "PROSTATE", "modality": {"0": "T2", "1": "ADC"}, "labels": {"0": "background", "1": "PZ", "2": "TZ"},
        "training": [{"image": "./imagesTr/prostate_00.nii.gz", "label": "./labelsTr/prostate_00.nii.gz"},
                     {"image": "./imagesTr/prostate_01.nii.gz", "label": "./labelsTr/prostate_01.nii.gz"}],
        "test": ["./imagesTs/prostate_03.nii.gz"]}))

    found = layouts.discover(root)
    assert found.layout == "msd" and found.dataset == "msd-prostate"
    rows = {r.volume_id: r for r in found.rows}
    assert {v: (r.modality, r.split, r.channel) for v, r in rows.items()} == {
        "prostate_00_T2": ("T2", "train", 0), "prostate_00_ADC": ("ADC", "train", 1),
        "prostate_03_T2": ("T2", "test", 0), "prostate_03_ADC": ("ADC", "test", 1)}
    assert rows["prostate_03_T2"].label is None
    problems = sorted((p.file.split("Task05_Prostate/")[1], p.reason) for p in found.problems)
    assert problems == [("imagesTr/prostate_01.nii.gz", "case prostate_01: dataset.json names "
                                                        "imagesTr/prostate_01.nii.gz, which is missing"),
                        ("labelsTr/prostate_02.nii.gz", "case prostate_02: label not in dataset.json's training list")]

    config = DBConfig(resolution=16)
    t2, adc_rows = (ingest_volume(rows[v], "a", config).to_pylist() for v in ("prostate_00_T2", "prostate_00_ADC"))
    assert t2[0]["organs"] == ["prostate peripheral zone", "prostate transition zone"]
    assert [r["mask"] for r in t2] == [r["mask"] for r in adc_rows]
    assert liver_side(decode_mask(t2[1]["mask"], 16, 16)) == "left"
    # channel 1 is ADC: mirrored along j (rows) in the file, so its slices are the T2's upside down
    np.testing.assert_allclose(decode_image(adc_rows[1]["image"], 16, 16)[::-1],
                               decode_image(t2[1]["image"], 16, 16), atol=0.06)


def test_a_case_listed_twice_is_built_once_and_reported(tmp_path):
    root = tmp_path / "Task05_Prostate"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    image, label = ras_case(seed=4)
    affine = np.diag([0.6, 0.6, 3.6, 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / "prostate_00.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / "prostate_00.nii.gz"))
    entry = {"image": "./imagesTr/prostate_00.nii.gz", "label": "./labelsTr/prostate_00.nii.gz"}
    (root / "dataset.json").write_text(json.dumps({
        "name": "PROSTATE", "modality": {"0": "T2"}, "labels": {"0": "background", "1": "PZ"},
        "training": [entry, entry], "test": []}))

    found = layouts.discover(root)
    assert [r.volume_id for r in found.rows] == ["prostate_00"]
    assert [p.reason for p in found.problems] == ["case prostate_00: volume prostate_00 also found in "
                                                  f"{found.rows[0].image}"]

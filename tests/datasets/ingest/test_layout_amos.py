"""AMOS: MR cases are the ids >= 500, training / validation / test give the splits, its 15 organ names (with its
own spellings) are normalised, and its unnamed MR sequence is warned about."""
from __future__ import annotations

import json

from mrgen.datasets.config import DBConfig
from mrgen.datasets.ingest import layouts
from mrgen.datasets.ingest.build import ingest_volume
from mrgen.datasets.ingest.layouts.amos import LABELS

from tests.datasets.ingest.layout_data import ras_case, save_nifti


def test_mr_cases_splits_organs_and_warnings(tmp_path):
    root = tmp_path / "amos22"
    for sub in ("imagesTr", "labelsTr", "imagesVa", "labelsVa", "imagesTs"):
        (root / sub).mkdir(parents=True)
    image, label = ras_case(seed=9)
    label[label == 1] = 8  # AMOS's "arota"
    for case, images, labels in (("amos_0001", "imagesTr", "labelsTr"), ("amos_0507", "imagesTr", "labelsTr"),
                                 ("amos_0510", "imagesVa", "labelsVa"), ("amos_0540", "imagesTs", None)):
        save_nifti(root / images / f"{case}.nii.gz", image)
        if labels:
            save_nifti(root / labels / f"{case}.nii.gz", label)
    save_nifti(root / "labelsVa" / "amos_0588.nii.gz", label)  # its image is missing
    entry = {"image": "./imagesTr/{0}.nii.gz", "label": "./labelsTr/{0}.nii.gz"}
    (root / "dataset.json").write_text(json.dumps({
        "modality": {"0": "CT"}, "labels": {"0": "background", **{str(k): v for k, v in LABELS.items()}},
        "training": [{k: v.format(c) for k, v in entry.items()} for c in ("amos_0001", "amos_0507", "amos_0599")],
        "validation": [{"image": "./imagesVa/amos_0510.nii.gz", "label": "./labelsVa/amos_0510.nii.gz"}],
        "test": [{"image": "./imagesTs/amos_0540.nii.gz"}]}))

    found = layouts.discover(root)
    assert found.layout == "amos" and found.dataset == "amos-mri"
    assert {r.volume_id: (r.split, r.modality) for r in found.rows} == {
        "amos_0507": ("train", "MRI"), "amos_0510": ("val", "MRI"), "amos_0540": ("test", "MRI")}
    assert sorted((p.file.split("amos22/")[1], p.reason) for p in found.problems) == [
        ("imagesTr/amos_0599.nii.gz", "case amos_0599: imagesTr/amos_0599.nii.gz is missing"),
        ("labelsVa/amos_0588.nii.gz", "case amos_0588: label without its image in imagesVa/ (or dataset.json's "
                                      "'validation' list)")]
    assert found.warnings == [
        "AMOS MR cases (ids >= 500): sequence 'MRI', which the modality table does not know; its volumes are "
        "skipped: give --modality LABEL or db.modality_attributes",
        f"{root}: 1 CT case(s) (ids < 500) left out; MR cases are ids >= 500"]

    labelled = layouts.discover(root, modality="T1")
    assert {r.modality for r in labelled.rows} == {"T1"} and "labelled 'T1' (--modality)" in labelled.warnings[0]
    [row] = [r for r in labelled.rows if r.volume_id == "amos_0507"]
    slices = ingest_volume(row, "a", DBConfig(resolution=16)).to_pylist()
    assert slices[0]["organs"] == ["right kidney", "aorta"]
    assert json.loads(slices[0]["organ_map"])["9"] == "inferior vena cava"  # AMOS's "postcava"
    assert json.loads(slices[0]["source_organ_map"])["8"] == "arota"

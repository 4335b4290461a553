"""`export_nnunet` writes a 2-D PNG nnU-Net v2 raw dataset that nnU-Net's own integrity check accepts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrgen.datasets.store import read_table
from mrgen.jobs.export.nnunet import ExportError, export_nnunet, volume_groups


def test_export_passes_nnunet_verify_and_keeps_volumes(tiny_db, tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    summary = export_nnunet(str(tmp_path / "raw"), 501, "phantom-syn", synthetic=tiny_db, real=tiny_db,
                            real_split="test", real_datasets=["phantom-tgt"])
    folder = Path(summary["folder"])
    assert folder.name == "Dataset501_phantom-syn"
    verify_dataset_integrity(str(folder), num_processes=1)  # raises on any problem

    meta = json.loads((folder / "dataset.json").read_text())
    labels = meta["labels"]
    assert labels["background"] == 0 and sorted(labels.values()) == list(range(len(labels)))
    assert meta["file_ending"] == ".png" and meta["channel_names"] == {"0": "MRI"}
    n_train = read_table(tiny_db, columns=["slice_id"], has_mask=True).num_rows
    assert meta["numTraining"] == n_train == len(list((folder / "labelsTr").iterdir()))
    label = Image.open(next((folder / "labelsTr").iterdir()))
    assert label.mode == "L"
    values = set()
    for f in (folder / "labelsTr").iterdir():
        values |= set(np.unique(np.array(Image.open(f))).tolist())
    assert values <= set(labels.values()) and len(values) > 2

    real = read_table(tiny_db, columns=["slice_id", "volume_id", "slice_index"], has_mask=True, split="test",
                      dataset="phantom-tgt").to_pylist()
    groups = volume_groups(folder)
    assert sum(len(v) for v in groups.values()) == len(real) == len(list((folder / "imagesTs").iterdir()))
    for key, slices in groups.items():
        indices = [i for i, _ in slices]
        assert indices == sorted(indices) and key.startswith("phantom-tgt/")
        assert all((folder / "labelsTs" / f"{case}.png").exists() for _, case in slices)


def test_export_to_object_storage(tiny_db, tmp_path, s3_server):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    from mrgen.platform import storage

    uri = f"s3://{s3_server['bucket']}/exports/{tmp_path.name}"
    summary = export_nnunet(uri, 502, "phantom-s3", synthetic=tiny_db, real=tiny_db, real_split="test",
                            real_datasets=["phantom-tgt"])
    assert summary["folder"] == f"{uri}/Dataset502_phantom-s3"
    assert storage.listdir(uri) == ["Dataset502_phantom-s3"]  # no temporary folder left behind
    local = storage.download_dir(summary["folder"], tmp_path / "Dataset502_phantom-s3")
    verify_dataset_integrity(str(local), num_processes=1)
    assert len(list((local / "labelsTr").iterdir())) == summary["train_cases"] > 0
    assert len(list((local / "imagesTs").iterdir())) == summary["test_cases"] > 0


def test_export_errors(tiny_db, tmp_path):
    with pytest.raises(ExportError, match="999"):
        export_nnunet(str(tmp_path), 1000, "x", synthetic=tiny_db)
    with pytest.raises(ExportError, match="letters, digits"):
        export_nnunet(str(tmp_path), 5, "bad_name", synthetic=tiny_db)
    with pytest.raises(ExportError, match="no masked slices"):
        export_nnunet(str(tmp_path), 5, "x", real=tiny_db, real_split="val")
    assert not any(tmp_path.glob("Dataset005*"))


def test_labels_match_organ_maps_in_any_spelling():
    """`--labels Liver,Spleen` selects the organs a built DB names "liver" / "spleen" (and older DBs "Liver")."""
    from mrgen.datasets.schema import encode_mask, encode_organ_map
    from mrgen.jobs.export.nnunet import _label_names, _remap

    mask = np.array([[0, 1], [2, 3]], np.uint8)
    for organ_map in ({1: "liver", 2: "spleen", 3: "right kidney"}, {1: "Liver", 2: "SPLEEN", 3: "kidney_right"}):
        row = {"height": 2, "width": 2, "mask": encode_mask(mask), "organ_map": encode_organ_map(organ_map),
               "slice_id": "s"}
        label_ids = _label_names([row], ["Liver", "Spleen"])
        assert _remap(row, label_ids).tolist() == [[0, 1], [2, 0]]

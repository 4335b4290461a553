"""Manifest parsing: JSONL and CSV rows, defaults, and errors naming file, row and field."""
from __future__ import annotations

import json

import pytest

from mrgen.datasets.ingest.manifest import ManifestError, default_volume_id, read_manifest


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_rows_resolve_paths_and_defaults(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"image": "a/ct_01.nii.gz", "label": "a/ct_01_seg.nii.gz", "labels": {"0": "background", "1": "liver"},
         "dataset": "d", "modality": "T1"},
        {"image": "/abs/series_7", "dataset": "d", "modality": "T2", "split": "test", "volume_id": "v7"},
    ])
    rows, problems = read_manifest(manifest)
    assert problems == []
    assert rows[0].image == str(tmp_path / "a" / "ct_01.nii.gz")
    assert rows[0].label == str(tmp_path / "a" / "ct_01_seg.nii.gz")
    assert rows[0].labels == {1: "liver"}  # 0 is background
    assert (rows[0].split, rows[0].volume_id, rows[0].row) == ("train", "ct_01", 1)
    assert (rows[1].image, rows[1].split, rows[1].volume_id, rows[1].labels) == ("/abs/series_7", "test", "v7", {})


def test_csv_with_json_labels(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text('image,label,labels,dataset,modality\n'
                        'x.png,x_seg.png,"{""1"": ""liver"", ""2"": ""spleen""}",d,T2 SPIR\n'
                        'y.png,,,d,T2 SPIR\n')
    rows, problems = read_manifest(manifest)
    assert problems == []
    assert rows[0].labels == {1: "liver", 2: "spleen"} and rows[0].volume_id == "x"
    assert rows[1].label is None and rows[1].labels == {}


@pytest.mark.parametrize("row, field", [
    ({"dataset": "d", "modality": "T1"}, "image"),
    ({"image": "a.nii", "modality": "T1"}, "dataset"),
    ({"image": "a.nii", "dataset": "d"}, "modality"),
    ({"image": "a.nii", "label": "s.nii", "dataset": "d", "modality": "T1"}, "labels"),
    ({"image": "a.nii", "dataset": "d", "modality": "T1", "split": "holdout"}, "split"),
    ({"image": "a.nii", "dataset": "d", "modality": "T1", "label": "s.nii", "labels": {"x": "liver"}}, "labels"),
    ({"image": "a.nii", "dataset": "d", "modality": "T1", "colour": "red"}, "colour"),
])
def test_bad_row_names_row_and_field_and_keeps_others(tmp_path, row, field):
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"image": "ok.nii", "dataset": "d", "modality": "T1"}, row])
    rows, problems = read_manifest(manifest)
    assert [r.volume_id for r in rows] == ["ok"]
    assert len(problems) == 1
    assert problems[0].file == str(manifest) and problems[0].row == 2
    assert f"'{field}'" in problems[0].reason


def test_invalid_json_line_and_duplicate_volume(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"image": "a.nii", "dataset": "d", "modality": "T1"}, "{not json",
        {"image": "b/a.nii.gz", "dataset": "d", "modality": "T1"}])
    rows, problems = read_manifest(manifest)
    assert len(rows) == 1
    assert [(p.row, "JSON" in p.reason or "already" in p.reason) for p in problems] == [(2, True), (3, True)]


def test_missing_manifest_and_unknown_format(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.jsonl")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ManifestError, match="jsonl"):
        read_manifest(tmp_path / "m.txt")


def test_default_volume_id():
    assert default_volume_id("/x/case_1.nii.gz") == "case_1"
    assert default_volume_id("/x/series_folder/") == "series_folder"
    assert default_volume_id("/x/slice.PNG") == "slice"

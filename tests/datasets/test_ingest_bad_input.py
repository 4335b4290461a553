"""Every kind of bad input is reported (file, row, reason) while the rest is built; --strict stops at the first."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from mrgen.datasets.config import DBConfig
from mrgen.datasets.ingest.build import REPORT_FILE, BuildError, build_db
from mrgen.datasets.store import existing_shards, load_index, read_table, try_load_index

SHAPE = (10, 8, 3)  # NIfTI voxel axes; 3 slices


def nifti(path: Path, data: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0])), str(path))
    return path.name


def volume(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(SHAPE).astype(np.float32) * 500


def dicom(path: Path, pixels: np.ndarray) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
    ds.set_pixel_data(pixels, photometric_interpretation="MONOCHROME2", bits_stored=16)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_sources(src: Path) -> list[dict]:
    """Manifest rows: two good volumes, then one row per kind of bad input (row number = position + 1)."""
    src.mkdir()
    seg = np.zeros(SHAPE, np.uint8)
    seg[2:6, 2:5, 1] = 1
    nifti(src / "good_a.nii.gz", volume(0))
    nifti(src / "good_a_seg.nii.gz", seg)
    nifti(src / "good_b.nii.gz", volume(1))
    (src / "corrupt.nii.gz").write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    whole = (src / "good_b.nii.gz").read_bytes()
    (src / "truncated.nii.gz").write_bytes(whole[: len(whole) // 2])
    good_dicom = dicom(src / "full.dcm", (np.arange(64 * 64) % 4000).astype(np.uint16).reshape(64, 64)).read_bytes()
    (src / "truncated_dicom.dcm").write_bytes(good_dicom[:-3000])
    nifti(src / "mismatch_seg.nii.gz", seg[:, :, :2])
    bad_values = seg.copy()
    bad_values[0, 0, 0] = 7
    nifti(src / "values_seg.nii.gz", bad_values)
    nan = volume(2)
    nan[3, 3, 1] = np.nan
    nifti(src / "nan.nii.gz", nan)
    inf = volume(3)
    inf[1, 1, 0] = np.inf
    nifti(src / "inf.nii.gz", inf)
    nifti(src / "zeros.nii.gz", np.zeros(SHAPE, np.float32))
    (src / "no_slices").mkdir()
    (src / "volume.vtk").write_text("# vtk DataFile Version 3.0\n")
    base = {"dataset": "bad", "modality": "T2 SPIR"}
    return [
        {**base, "image": "good_a.nii.gz", "label": "good_a_seg.nii.gz", "labels": {"1": "liver"}},  # row 1
        {**base, "image": "good_b.nii.gz"},  # row 2
        {**base, "image": "corrupt.nii.gz"},  # row 3
        {**base, "image": "truncated.nii.gz"},  # row 4
        {**base, "image": "truncated_dicom.dcm"},  # row 5
        {**base, "image": "good_b.nii.gz", "volume_id": "mismatch", "label": "mismatch_seg.nii.gz",
         "labels": {"1": "liver"}},  # 6
        {**base, "image": "good_b.nii.gz", "volume_id": "values", "label": "values_seg.nii.gz",
         "labels": {"1": "liver"}},  # 7
        {**base, "image": "nan.nii.gz"},  # row 8
        {**base, "image": "inf.nii.gz"},  # row 9
        {**base, "image": "zeros.nii.gz"},  # row 10
        {**base, "image": "no_slices"},  # row 11
        {**base, "image": "volume.vtk"},  # row 12
        {"dataset": "bad", "image": "good_b.nii.gz", "volume_id": "no_modality"},  # row 13
        {"dataset": "bad", "modality": "ultrasound elastography", "image": "good_b.nii.gz",
         "volume_id": "unknown"},  # 14
        {**base, "image": "missing.nii.gz"},  # row 15
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("bad_input")
    rows = write_sources(root / "src")
    manifest = root / "src" / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = str(root / "db")
    report = build_db(manifest, out, DBConfig.load("tiny", ["resolution=16", "shard_rows=4"]))
    return {"report": report, "src": root / "src", "manifest": manifest, "out": out, "rows": rows}


def entry(built, row: int):
    found = [s for s in built["report"].skipped if s.row == row]
    assert len(found) == 1, f"expected one report entry for row {row}, got {built['report'].skipped}"
    return found[0]


@pytest.mark.parametrize("row, file, reason", [
    (3, "corrupt.nii.gz", "unreadable nifti corrupt.nii.gz"),
    (4, "truncated.nii.gz", "unreadable nifti truncated.nii.gz: truncated or corrupt gzip"),
    (5, "truncated_dicom.dcm", "unreadable dicom truncated_dicom.dcm"),
    (6, "mismatch_seg.nii.gz", "image/label shape mismatch: image (3, 8, 10), label (2, 8, 10)"),
    (7, "values_seg.nii.gz", "label values [7] absent from 'labels'"),
    (8, "nan.nii.gz", "1 NaN/Inf voxels"),
    (9, "inf.nii.gz", "1 NaN/Inf voxels"),
    (10, "zeros.nii.gz", "empty volume: all voxels are 0"),
    (11, "no_slices", "empty volume"),
    (12, "volume.vtk", "unsupported format '.vtk'"),
    (13, "manifest.jsonl", "missing field 'modality'"),
    (14, "manifest.jsonl", "unknown modality label 'ultrasound elastography'"),
    (15, "missing.nii.gz", "file not found"),
], ids=["corrupt", "truncated-nifti", "truncated-dicom", "shape-mismatch", "label-values", "nan", "inf",
        "all-zero", "zero-slices", "unsupported-format", "missing-field", "unknown-modality", "missing-file"])
def test_bad_input_is_reported_and_rest_built(built, row, file, reason):
    skip = entry(built, row)
    assert Path(skip.file).name == file
    assert reason in skip.reason
    # the rest is built: both good volumes, nothing else
    assert {v for s in load_index(built["out"]).shards for v in s.volumes} == {"bad/good_a", "bad/good_b"}


def test_report_file_lists_every_skip(built):
    report = built["report"]
    assert (report.built_volumes, report.rows, len(report.skipped)) == (2, 6, 13)
    on_disk = json.loads((Path(built["out"]) / REPORT_FILE).read_text())
    assert [(s["row"], s["reason"]) for s in on_disk["skipped"]] == [(s.row, s.reason) for s in report.skipped]
    assert sorted(read_table(built["out"],
                             columns=["volume_id"]).column("volume_id").to_pylist()) == ["good_a"] * 3 + ["good_b"] * 3


def test_strict_stops_at_manifest_problem_before_building(built, tmp_path):
    config = DBConfig.load("tiny", ["resolution=16", "strict=true"])
    with pytest.raises(BuildError, match=r"manifest.jsonl: row 13: missing field 'modality'"):
        build_db(built["manifest"], str(tmp_path / "db"), config)
    assert try_load_index(str(tmp_path / "db")) is None and existing_shards(str(tmp_path / "db")) == []


def test_strict_stops_at_first_bad_volume_and_keeps_finished_shards(built, tmp_path):
    src = built["src"]
    manifest = tmp_path / "strict.jsonl"
    rows = [built["rows"][1], {**built["rows"][7], "image": str(src / "nan.nii.gz")}]
    rows[0] = {**rows[0], "image": str(src / "good_b.nii.gz")}
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    out = str(tmp_path / "db")
    config = DBConfig.load("tiny", ["resolution=16", "shard_rows=1", "strict=true"])
    with pytest.raises(BuildError, match=r"nan.nii.gz: row 2: 1 NaN/Inf voxels") as info:
        build_db(manifest, out, config)
    assert info.value.skip.row == 2
    written = existing_shards(out)
    index = try_load_index(out)
    assert index is None or {s.file for s in index.shards} == {s.file for s in written}
    # a non-strict rerun builds what was not finished and reuses what was
    rerun = build_db(manifest, out, DBConfig.load("tiny", ["resolution=16", "shard_rows=1"]))
    assert rerun.already_present == len(written) and rerun.already_present + rerun.built_volumes == 1
    assert [s.row for s in rerun.skipped] == [2]

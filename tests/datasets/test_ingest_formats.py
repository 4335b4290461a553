"""Readers on files written here with nibabel, pydicom and PIL, and one build over every format."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from mrgen.datasets.ingest.readers import ReadError, UnsupportedFormatError, detect_format, read_volume, source_sha256

ROWS, COLS, SLICES = 12, 10, 5
ROW_MM, COL_MM, SLICE_MM = 0.8, 0.7, 3.0


def stack(seed=0) -> np.ndarray:
    """uint16 [slice, row, column], slice k filled with a pattern that differs per slice and per pixel."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 3000, size=(SLICES, ROWS, COLS))
            + np.arange(SLICES)[:, None, None] * 5000).astype(np.uint16)


def _dicom_base(sop_class) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.StudyInstanceUID = "MR", "phantom", "1.2.3"
    return ds


def write_dicom_series(folder: Path, pixels: np.ndarray, slope=2.0, intercept=-100.0) -> Path:
    """One file per slice; standard axial orientation, slice k at z = k * SLICE_MM; instance numbers and file
    names deliberately out of slice order, so only the positions give the right order."""
    folder.mkdir(parents=True)
    series = generate_uid()
    for k in range(len(pixels)):
        ds = _dicom_base(MRImageStorage)
        ds.SeriesInstanceUID = series
        ds.InstanceNumber = len(pixels) - k
        ds.ImagePositionPatient = [-20.0, -30.0, k * SLICE_MM]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [ROW_MM, COL_MM]
        ds.SliceThickness = SLICE_MM
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.set_pixel_data(pixels[k], photometric_interpretation="MONOCHROME2", bits_stored=16)
        ds.save_as(folder / f"IM{(k * 7) % len(pixels)}_{k}.dcm", enforce_file_format=True)
    return folder


def write_dicom_multiframe(path: Path, pixels: np.ndarray) -> Path:
    """An Enhanced MR multi-frame file whose frames are stored superior → inferior (positions say so)."""
    ds = _dicom_base(EnhancedMRImageStorage)
    ds.SeriesInstanceUID = generate_uid()
    shared = Dataset()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing, measures.SliceThickness = [ROW_MM, COL_MM], SLICE_MM
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [orientation], [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for f in range(len(pixels)):
        group, position = Dataset(), Dataset()
        position.ImagePositionPatient = [-20.0, -30.0, (len(pixels) - 1 - f) * SLICE_MM]
        group.PlanePositionSequence = [position]
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.set_pixel_data(pixels[::-1].copy(), photometric_interpretation="MONOCHROME2", bits_stored=16)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nifti_like_dicom(path: Path, pixels: np.ndarray, dtype=np.float32) -> Path:
    """The same volume as the DICOM writers, as RAS NIfTI: voxel (i=column, j=row, k=slice); the DICOM column
    direction is patient left (RAS -x) and the row direction posterior (RAS -y)."""
    affine = np.diag([-COL_MM, -ROW_MM, SLICE_MM, 1.0])
    nib.save(nib.Nifti1Image(np.transpose(pixels, (2, 1, 0)).astype(dtype), affine), str(path))
    return path


def write_png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path)
    return path


# ---------------------------------------------------------------- readers

def test_nifti_gz_is_reoriented_to_display_order(tmp_path):
    data = np.zeros((6, 5, 4), np.float32)  # RAS: i → right, j → anterior, k → superior
    data[5, 4, 0] = 7.0  # most right, most anterior, most inferior voxel
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 2.0, 3.0, 1.0])), str(tmp_path / "v.nii.gz"))
    volume = read_volume(tmp_path / "v.nii.gz")
    assert volume.shape == (4, 5, 6)
    assert volume.array[0, 0, 0] == 7.0  # first slice inferior; row 0 anterior; column 0 patient right
    assert volume.spacing == (2.0, 1.0, 3.0)
    # an LPS-stored copy of the same volume lands in the same place
    flipped = data[::-1, ::-1, :]
    affine = np.array([[-1.0, 0, 0, 5], [0, -2.0, 0, 8], [0, 0, 3.0, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(flipped, affine), str(tmp_path / "lps.nii.gz"))
    assert np.array_equal(read_volume(tmp_path / "lps.nii.gz").array, volume.array)


def test_dicom_series_ordered_by_position_with_rescale(tmp_path):
    pixels = stack()
    volume = read_volume(write_dicom_series(tmp_path / "series", pixels))
    assert volume.shape == (SLICES, ROWS, COLS)
    np.testing.assert_array_equal(volume.array, pixels.astype(np.float32) * 2.0 - 100.0)
    assert volume.spacing == pytest.approx((ROW_MM, COL_MM, SLICE_MM))
    assert detect_format(tmp_path / "series") == "dicom-series"


def test_multiframe_dicom_matches_series_and_nifti(tmp_path):
    pixels = stack(1)
    multi = read_volume(write_dicom_multiframe(tmp_path / "multi.dcm", pixels))
    nifti = read_volume(write_nifti_like_dicom(tmp_path / "same.nii.gz", pixels))
    np.testing.assert_array_equal(multi.array, pixels.astype(np.float32))
    np.testing.assert_array_equal(nifti.array, multi.array)
    assert multi.spacing == pytest.approx(nifti.spacing)


def test_png_16bit_slice_and_folder_in_natural_order(tmp_path):
    pixels = stack(2)
    single = read_volume(write_png(tmp_path / "s.png", pixels[0]))
    assert Image.open(tmp_path / "s.png").mode.startswith("I")
    assert single.shape == (1, ROWS, COLS)
    np.testing.assert_array_equal(single.array[0], pixels[0].astype(np.float32))
    folder = tmp_path / "slices"
    folder.mkdir()
    for k in range(12):
        write_png(folder / f"slice_{k}.png", np.full((ROWS, COLS), k * 1000, np.uint16))
    volume = read_volume(folder)
    assert [float(s[0, 0]) for s in volume.array] == [k * 1000.0 for k in range(12)]  # 10, 11 after 9


def test_labels_are_integers_and_non_integer_labels_rejected(tmp_path):
    labels = np.zeros((4, 3, 2), np.float32)
    labels[1, 1, 1] = 2
    nib.save(nib.Nifti1Image(labels, np.eye(4)), str(tmp_path / "seg.nii.gz"))
    out = read_volume(tmp_path / "seg.nii.gz", label=True).array
    assert out.dtype == np.int64 and out.sum() == 2
    labels[0, 0, 0] = 0.5
    nib.save(nib.Nifti1Image(labels, np.eye(4)), str(tmp_path / "bad.nii.gz"))
    with pytest.raises(ReadError, match="non-integer"):
        read_volume(tmp_path / "bad.nii.gz", label=True)


def test_unsupported_and_unreadable(tmp_path):
    (tmp_path / "v.vtk").write_bytes(b"# vtk DataFile\n")
    with pytest.raises(UnsupportedFormatError, match="unsupported format '.vtk'"):
        read_volume(tmp_path / "v.vtk")
    (tmp_path / "v.mha").write_bytes(b"ObjectType = Image\n")  # an ending nnU-Net reads (SimpleITK), but garbage
    with pytest.raises(ReadError, match="unreadable itk v.mha"):
        read_volume(tmp_path / "v.mha")
    (tmp_path / "v.nii.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ReadError, match="unreadable nifti v.nii.gz"):
        read_volume(tmp_path / "v.nii.gz")


def test_folder_checksum_covers_every_file(tmp_path):
    folder = write_dicom_series(tmp_path / "series", stack())
    before = source_sha256(folder)
    (folder / sorted(p.name for p in folder.iterdir())[0]).write_bytes(b"changed")
    assert source_sha256(folder) != before


# ---------------------------------------------------------------- one build over every format

def test_build_every_format(tmp_path, ray_session):
    from mrgen.datasets.config import DBConfig
    from mrgen.datasets.ingest.build import build_db
    from mrgen.datasets.schema import decode_image, decode_mask
    from mrgen.datasets.store import read_table

    pixels = stack(3)
    mask = np.zeros_like(pixels, dtype=np.uint8)
    mask[1:3, 2:8, 2:6] = 1
    mask[2, 8:11, 6:9] = 2
    src = tmp_path / "src"
    src.mkdir()
    write_nifti_like_dicom(src / "nii_case.nii.gz", pixels)
    write_nifti_like_dicom(src / "nii_case_seg.nii.gz", mask, dtype=np.uint8)
    write_dicom_multiframe(src / "mf.dcm", pixels)
    write_dicom_series(src / "series", pixels)
    write_png(src / "one.png", pixels[0])
    (src / "pngs").mkdir()
    for k in range(3):
        write_png(src / "pngs" / f"{k}.png", (pixels[k] // 256).astype(np.uint8))
    rows = [
        {"image": "nii_case.nii.gz", "label": "nii_case_seg.nii.gz", "labels": {"1": "liver", "2": "spleen"},
         "dataset": "fmt", "modality": "T2 SPIR", "split": "test"},
        {"image": "mf.dcm", "dataset": "fmt", "modality": "T1 in-phase"},
        {"image": "series", "dataset": "fmt", "modality": "T1 out-of-phase"},
        {"image": "one.png", "dataset": "fmt", "modality": "T2"},
        {"image": "pngs", "dataset": "fmt", "modality": "T2"},
    ]
    (src / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    out = str(tmp_path / "db")
    report = build_db(src / "m.jsonl", out, DBConfig.load("tiny", ["resolution=16", "shard_rows=6"]))
    assert report.skipped == []
    assert (report.built_volumes, report.rows) == (5, SLICES * 3 + 1 + 3)
    table = read_table(out)
    by_volume = {}
    for row in table.to_pylist():
        by_volume.setdefault(row["volume_id"], []).append(row)
    assert {k: len(v) for k, v in by_volume.items()} == {"nii_case": 5, "mf": 5, "series": 5, "one": 1, "pngs": 3}
    first = lambda v: sorted(by_volume[v], key=lambda r: r["slice_index"])  # noqa: E731
    # the multi-frame file and the series (rescaled: slope 2, intercept -100) hold the same volume in the same
    # orientation; min-max normalisation removes the rescale → the same slices
    for a, b in zip(first("mf"), first("series")):
        np.testing.assert_allclose(decode_image(a["image"], 16, 16), decode_image(b["image"], 16, 16), atol=1e-5)
    nii = first("nii_case")
    assert [r["organs"] for r in nii] == [[], ["liver"], ["liver", "spleen"], [], []]
    assert nii[2]["prompt"].startswith("T2 SPIR; fat low signal") and nii[2]["prompt"].endswith("; liver, spleen")
    assert json.loads(nii[0]["organ_map"]) == {"1": "liver", "2": "spleen"} and nii[0]["split"] == "test"
    assert set(np.unique(decode_mask(nii[2]["mask"], 16, 16))) == {0, 1, 2}
    # 9.6 x 7.0 mm at square pixels: 16 x 12 of 0.6 x 0.58 mm, padded to 16 x 16
    assert nii[0]["pixel_spacing"] == pytest.approx([ROW_MM * ROWS / 16, COL_MM * COLS / 12])
    assert nii[0]["source_sha256"] == source_sha256(src / "nii_case.nii.gz")
    images = np.stack([decode_image(r["image"], 16, 16) for r in table.to_pylist()])
    assert images.min() >= 0.0 and images.max() <= 1.0
    mf = first("mf")
    assert all(not r["has_mask"] and r["mask"] is None and r["organs"] == [] for r in mf)
    vol = np.stack([decode_image(r["image"], 16, 16) for r in mf])
    assert vol.min() < 0.05 and vol.max() > 0.95  # no mask: min-max over the volume (then bilinear resize)

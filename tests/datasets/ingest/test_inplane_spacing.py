"""In-plane spacing: a slice is resampled to square pixels with its aspect kept (zero-padded to a square) on its way
to db.resolution, so a round organ stays round whatever the source's pixel spacing or field of view. Volumes are
built with ``ingest_volume`` (no Ray)."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from mrgen.datasets.config import DBConfig
from mrgen.datasets.ingest.build import ingest_volume
from mrgen.datasets.ingest.manifest import ManifestRow
from mrgen.datasets.schema import decode_image, decode_mask

R = 32
CONFIG = DBConfig(resolution=R)
RADIUS_MM, SLICE_MM = 20.0, 3.0


def scan(rows: int, columns: int, spacing: tuple[float, float], centre_mm: tuple[float, float]):
    """Image and mask [3 slices, rows, columns] of one disc: the mask is 1 where a pixel's centre lies within
    RADIUS_MM of ``centre_mm``; the image is bright there, over a background that grows 1 per mm to the left."""
    r = (np.arange(rows) + 0.5) * spacing[0]
    c = (np.arange(columns) + 0.5) * spacing[1]
    mask = ((r[:, None] - centre_mm[0]) ** 2 + (c[None, :] - centre_mm[1]) ** 2 <= RADIUS_MM ** 2).astype(np.uint8)
    image = 100.0 + 800.0 * mask + c[None, :]
    return np.repeat(image[None], 3, axis=0).astype(np.float32), np.repeat(mask[None], 3, axis=0)


def save_nifti(path, display: np.ndarray, spacing: tuple[float, float]) -> str:
    """``display`` [slice, row, column] stored as NIfTI whose affine puts it in the display orientation."""
    affine = np.diag([-spacing[1], -spacing[0], SLICE_MM, 1.0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(np.transpose(display, (2, 1, 0))), affine), str(path))
    return str(path)


def build(image: str, label: str, volume_id: str) -> list[dict]:
    row = ManifestRow(row=1, image=image, dataset="spacing", modality="T2", split="train", volume_id=volume_id,
                      label=label, labels={1: "liver"})
    return sorted(ingest_volume(row, "attrs", CONFIG).to_pylist(), key=lambda r: r["slice_index"])


def extents(mask: np.ndarray) -> tuple[int, int]:
    rows, columns = np.nonzero(mask)
    return int(rows.max() - rows.min() + 1), int(columns.max() - columns.min() + 1)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


def test_a_disc_stays_round_at_anisotropic_spacing_and_matches_its_isotropic_twin(tmp_path):
    # one disc, two scans: 64 x 64 mm at 1 x 1 mm, and 48 x 64 mm at 1 x 2 mm (rows x columns), centred alike
    scans = {"iso": ((1.0, 1.0), scan(64, 64, (1.0, 1.0), (32.0, 32.0))),
             "aniso": ((1.0, 2.0), scan(48, 32, (1.0, 2.0), (24.0, 32.0)))}
    volumes = {}
    for name, (spacing, (image, mask)) in scans.items():
        volumes[name] = build(save_nifti(tmp_path / f"{name}.nii.gz", image, spacing),
                              save_nifti(tmp_path / f"{name}_seg.nii.gz", mask, spacing), name)
    # the same volume as nnU-Net's 3-D TIFF, its spacing (slice, row, column) in the .json beside it
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    image, mask = scans["aniso"][1]
    tifffile.imwrite(tmp_path / "images" / "case_0000.tiff", image.astype(np.uint16))
    tifffile.imwrite(tmp_path / "labels" / "case.tiff", mask)
    for folder in ("images", "labels"):
        (tmp_path / folder / "case.json").write_text(json.dumps({"spacing": [SLICE_MM, 1.0, 2.0]}))
    volumes["tiff"] = build(str(tmp_path / "images" / "case_0000.tiff"), str(tmp_path / "labels" / "case.tiff"),
                            "tiff")

    masks = {name: np.stack([decode_mask(r["mask"], R, R) for r in rows]) for name, rows in volumes.items()}
    for name, rows in volumes.items():
        assert [r["pixel_spacing"] for r in rows] == [pytest.approx([2.0, 2.0])] * 3, name  # 64 mm over 32 pixels
        for mask in masks[name]:
            height, width = extents(mask)
            assert abs(height - width) <= 1 and abs(height - 2 * RADIUS_MM / 2.0) <= 1, (name, height, width)
    assert volumes["aniso"][0]["source_spacing"] == pytest.approx([1.0, 2.0, SLICE_MM])
    assert volumes["iso"][0]["source_spacing"] == pytest.approx([1.0, 1.0, SLICE_MM])
    for a, b in zip(masks["iso"], masks["aniso"]):
        assert dice(a, b) >= 0.9
        assert all(abs(x - y) <= 1 for x, y in zip(extents(a), extents(b)))
        assert abs(np.argwhere(a).mean(0) - np.argwhere(b).mean(0)).max() <= 1  # centred alike (the 48 mm axis padded)
    assert np.array_equal(masks["tiff"], masks["aniso"])
    assert [r["image"] for r in volumes["tiff"]] == [r["image"] for r in volumes["aniso"]]
    image = decode_image(volumes["aniso"][1]["image"], R, R)
    assert (image[:4] == 0).all() and (image[-4:] == 0).all()  # 48 mm is 24 rows at 2 mm: 4 padding rows each side
    assert image[4].min() < 0.05 and image[4, 1:].min() > 0  # the first row of the scan (its left column darkest)
    assert extents(image > 0.5) == extents(masks["aniso"][1])


@pytest.mark.parametrize("ending", [".bmp", ".tif"])
def test_2d_bmp_and_tif_slices_build_with_their_aspect_kept(tmp_path, ending):
    mask = np.zeros((20, 40), np.uint8)  # 20 x 40 pixels, nominal 1 mm: 16 x 32 rows and columns at R = 32
    mask[5:15, 20:30] = 1  # a 10 x 10 square
    image = (np.arange(40, dtype=np.uint8)[None].repeat(20, 0) + 150 * mask).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / f"slice{ending}")
    Image.fromarray(mask).save(tmp_path / f"slice_seg{ending}")
    (row,) = build(str(tmp_path / f"slice{ending}"), str(tmp_path / f"slice_seg{ending}"), "slice")
    out = decode_mask(row["mask"], R, R)
    assert extents(out) == (8, 8) and row["organs"] == ["liver"]
    assert row["pixel_spacing"] == pytest.approx([1.25, 1.25])
    pixels = decode_image(row["image"], R, R)
    assert (pixels[:8] == 0).all() and (pixels[-8:] == 0).all() and pixels[8, 1:].min() > 0  # 16 rows, centred


def test_a_spacing_that_is_not_positive_is_an_error():
    from mrgen.datasets.ingest.preprocess import PreprocessError, preprocess_volume

    image = np.arange(2 * 4 * 6, dtype=np.float32).reshape(2, 4, 6)
    assert preprocess_volume(image, None, (1.0, 2.0, 3.0), 16).images.shape == (2, 16, 16)
    with pytest.raises(PreprocessError, match=r"in-plane spacing \(0.0, 2.0\) mm"):
        preprocess_volume(image, None, (0.0, 2.0, 3.0), 16)

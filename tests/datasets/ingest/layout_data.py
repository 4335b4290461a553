"""Tiny volumes with a landmark for the layout tests: the liver on the patient's right, so in every slice it must
land in the image's left half (radiological display) whatever way the file stores it."""
from __future__ import annotations

import nibabel as nib
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

SIZE, SLICES = 16, 4
LIVER, KIDNEY = 1, 2


def ras_case(seed: int = 0, slices: int = SLICES) -> tuple[np.ndarray, np.ndarray]:
    """Image and label in RAS voxel order [i → patient's right, j → anterior, k → superior]; the liver (bright)
    lies at large i (the patient's right), the kidney (dark grey) at small i."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(100, 900, size=(SIZE, SIZE, slices)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    label[10:15, 3:11] = LIVER
    label[2:5, 9:13] = KIDNEY
    image[label == LIVER] = 1000
    image[label == KIDNEY] = 300
    image[:, :2] = 0  # a band of background in every slice
    return image, label


def save_nifti(path, data: np.ndarray, flip_x: bool = False, spacing=(0.8, 0.9, 3.0)) -> None:
    """``data`` in RAS voxel order; ``flip_x`` stores it with the first axis reversed and an affine saying so."""
    affine = np.diag([*spacing, 1.0])
    if flip_x:
        data = data[::-1]
        affine[0, 0], affine[0, 3] = -spacing[0], spacing[0] * (data.shape[0] - 1)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), str(path))


def liver_side(mask: np.ndarray) -> str:
    """Which half of the image (display order) the liver's pixels are in."""
    columns = np.nonzero(mask == LIVER)[-1]
    return "left" if columns.mean() < mask.shape[-1] / 2 else "right"


# ---------------------------------------------------------------- CHAOS: DICOM series and PNG ground truth

GREY = {1: 63, 2: 126}  # liver, right kidney as CHAOS draws them
SLICES, PIXEL_MM, SLICE_MM = 5, 1.5, 6.0


def display_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Image and organ ids in display order [inferior → superior, anterior → posterior, patient right → left]."""
    rng = np.random.default_rng(seed)
    image = rng.integers(100, 900, size=(SLICES, 16, 16)).astype(np.uint16)
    ids = np.zeros(image.shape, np.uint8)
    ids[:, 3:11, 1:6] = 1  # liver: the patient's right, the image's left
    ids[:, 9:13, 11:14] = 2
    image[ids == 1], image[ids == 2] = 1000, 300
    image[:, :2] = 0  # every slice holds the darkest and the brightest value (an exact round trip through 8 bits)
    return image, ids


def write_series(folder, image: np.ndarray, flip_columns: bool = False, skip_file: int | None = None) -> None:
    """DICOM files IMG-0002-0000<n>.dcm, n = 1 the most superior slice (name order runs superior → inferior)."""
    folder.mkdir(parents=True)
    for k in range(SLICES):
        n = SLICES - k
        if n == skip_file:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID = meta, MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "MR", generate_uid(), n
        x0 = -12.0 + (15 * PIXEL_MM if flip_columns else 0)
        ds.ImageOrientationPatient = [-1 if flip_columns else 1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [x0, -10.0, k * SLICE_MM]
        ds.PixelSpacing, ds.SliceThickness = [PIXEL_MM, PIXEL_MM], SLICE_MM
        pixels = image[k][:, ::-1] if flip_columns else image[k]
        ds.set_pixel_data(np.ascontiguousarray(pixels), photometric_interpretation="MONOCHROME2", bits_stored=16)
        ds.save_as(folder / f"IMG-0002-{n:05d}.dcm", enforce_file_format=True)


def write_ground(folder, ids: np.ndarray, flip_columns: bool = False, skip_file: int | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(SLICES):
        n = SLICES - k
        if n == skip_file:
            continue
        grey = np.zeros(ids[k].shape, np.uint8)
        for organ, level in GREY.items():
            grey[ids[k] == organ] = level
        Image.fromarray(grey[:, ::-1] if flip_columns else grey).save(folder / f"IMG-0002-{n:05d}.png")


def write_study(mr, study: str, seed: int, flip_columns=False, ground=True, gap=False, missing_png=False) -> None:
    image, ids = display_case(seed)
    base = mr / study
    write_series(base / "T1DUAL/DICOM_anon/InPhase", image, flip_columns, 3 if gap else None)
    write_series(base / "T1DUAL/DICOM_anon/OutPhase", image // 2 + 40, flip_columns)
    write_series(base / "T2SPIR/DICOM_anon", 1200 - image, flip_columns)
    if ground:
        write_ground(base / "T1DUAL/Ground", ids, flip_columns, 3 if gap else None)
        write_ground(base / "T2SPIR/Ground", ids, flip_columns, 2 if missing_png else None)


def write_chaos(root):
    """CHAOS as downloaded: train studies 1, 2 (study 1's anatomy, columns stored the other way), 3 (a slice of
    T1DUAL InPhase missing with its mask, a T2SPIR mask missing) and 5; test study 4 without ground truth."""
    train, test = root / "CHAOS_Train_Sets/Train_Sets/MR", root / "CHAOS_Test_Sets/Test_Sets/MR"
    write_study(train, "1", seed=5)
    write_study(train, "2", seed=5, flip_columns=True)
    write_study(train, "3", seed=6, gap=True, missing_png=True)
    write_study(train, "5", seed=7)
    write_study(test, "4", seed=8, ground=False)
    return root

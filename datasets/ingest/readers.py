"""Load a source volume as ``(array [Z, H, W], spacing)`` in MRGen-DB's one slice orientation.

Formats: NIfTI (.nii / .nii.gz, nibabel; one channel of a 4-D file with ``channel``), DICOM (one file,
multi-frame included, or a series folder; pydicom), a PNG / JPEG slice (8- or 16-bit, PIL) or a folder of such
slices, and the other endings nnU-Net accepts: .nrrd / .mha / .gipl (SimpleITK, reoriented with ``DICOMOrient``)
and .bmp / .tif / .tiff (nnU-Net's own readers, no geometry). Label volumes go through the same readers and come
back as integers.

Orientation (as documented in ``mrgen.datasets.schema``): axis 0 runs over axial slices inferior → superior;
within a slice rows run anterior → posterior and columns run from the patient's right to left (radiological
display). NIfTI volumes are first reoriented to RAS+ with ``nibabel.as_closest_canonical``; DICOM volumes get an
affine from ImageOrientationPatient / ImagePositionPatient / PixelSpacing (LPS, converted to RAS) and the same
closest-canonical reorientation, so both land in the same orientation. Slices of a DICOM series are ordered by
their position along the slice normal (InstanceNumber, then file name, when positions are missing); a step more
than 1.5x the series' usual spacing is a missing slice, an error naming the files on either side. A DICOM volume
keeps the map from its files' pixel order to the display order (:meth:`Volume.from_native`), for per-file masks
such as CHAOS's PNG ground truth. PNG / JPEG slices carry no geometry: they are taken as displayed, a folder's
files (natural name order) as inferior → superior, with a nominal 1 mm spacing.

``spacing`` is (row spacing, column spacing, slice spacing) in mm.
"""
from __future__ import annotations

import gzip
import hashlib
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
# each format's reader library (nibabel, SimpleITK, pydicom, nnU-Net's image I/O) where that format is read

NIFTI_SUFFIXES = (".nii.gz", ".nii")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
ITK_SUFFIXES = (".nrrd", ".mha", ".gipl")
NNUNET_IO_SUFFIXES = (".bmp", ".tif", ".tiff")


class ReadError(ValueError):
    """A source file cannot be read as a volume; the message is the reason."""


class UnsupportedFormatError(ReadError):
    pass


@dataclass
class Volume:
    array: np.ndarray  # [Z, H, W]
    spacing: tuple[float, float, float]  # row, column, slice (mm)
    files: list[Path]  # the files it was read from, in slice order where it matters
    ornt: np.ndarray | None = None  # DICOM: nibabel orientation from the files' [column, row, file] axes to RAS

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def from_native(self, stack: np.ndarray) -> np.ndarray:
        """A stack [file, row, column] of per-file pixels (``files`` order) in this volume's display order."""
        from nibabel.orientations import apply_orientation

        if self.ornt is None:
            raise ReadError("only volumes read from DICOM files know their files' pixel order")
        if len(stack) != len(self.files) or stack.size != self.array.size:
            raise ReadError(f"{len(stack)} per-file slices of {stack.shape[1:]} do not fit the series' "
                            f"{len(self.files)} files of {self.array.shape}")
        return _to_display(apply_orientation(np.transpose(stack, (2, 1, 0)), self.ornt))


def detect_format(path: str | Path) -> str:
    """One of ``nifti``, ``dicom``, ``dicom-series``, ``image``, ``image-folder``."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        files = folder_files(path)
        if not files:
            raise ReadError(f"empty volume: folder {path} holds no slice files")
        suffixes = {_suffix(f) for f in files}
        if suffixes <= set(IMAGE_SUFFIXES):
            return "image-folder"
        if suffixes & {*NIFTI_SUFFIXES, *IMAGE_SUFFIXES}:
            raise UnsupportedFormatError(f"unsupported format: folder {path} mixes file types "
                                         f"{sorted(s or '(none)' for s in suffixes)}")
        return "dicom-series"
    if not path.exists():
        raise ReadError(f"file not found: {path}")
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    if name.endswith(DICOM_SUFFIXES) or _has_dicom_preamble(path):
        return "dicom"
    if name.endswith(ITK_SUFFIXES):
        return "itk"
    if name.endswith(NNUNET_IO_SUFFIXES):
        return "nnunet-io"
    raise UnsupportedFormatError(
        f"unsupported format {_suffix(path) or '(no extension)'!r}: expected NIfTI (.nii/.nii.gz), DICOM, PNG/JPEG, "
        "another nnU-Net file ending (.nrrd .mha .gipl .bmp .tif .tiff) or a folder")


def read_volume(path: str | Path, label: bool = False, channel: int | None = None,
                one_series: bool = True) -> Volume:
    """Read ``path`` in the documented orientation; ``label=True`` returns integer organ ids.

    ``channel``: the volume at this index of a 4-D NIfTI's last axis. ``one_series=False`` reads a DICOM folder
    as one volume whatever its files' SeriesInstanceUIDs say (CHAOS gives every file its own).
    """
    path = Path(path)
    kind = detect_format(path)
    if channel and kind != "nifti":
        raise ReadError(f"{path.name}: channel {channel} asked of a {kind} file (only 4-D NIfTI holds channels)")
    reader = {"nifti": lambda p, lab: _read_nifti(p, lab, channel), "dicom": _read_dicom_file,
              "dicom-series": lambda p, lab: _read_dicom_series(p, lab, one_series), "image": _read_image,
              "image-folder": _read_image_folder, "itk": _read_itk, "nnunet-io": _read_nnunet_io}[kind]
    try:
        volume = reader(path, label)
    except ReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - every library error here means an unreadable or corrupt file
        raise ReadError(f"unreadable {kind} {path.name}: {type(exc).__name__}: {exc}") from exc
    if label:
        volume.array = _as_labels(volume.array, path)
    return volume


def source_sha256(path: str | Path) -> str:
    """Checksum of a source file, or of a folder's files (relative name and bytes, in name order)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- orientation

def _to_display(ras: np.ndarray) -> np.ndarray:
    """RAS+ voxel axes (i → right, j → anterior, k → superior) to [slice, row, column] display order."""
    return np.ascontiguousarray(np.transpose(ras, (2, 1, 0))[:, ::-1, ::-1])


def _display_order(ras: np.ndarray, zooms) -> tuple[np.ndarray, tuple[float, float, float]]:
    return _to_display(ras), (float(zooms[1]), float(zooms[0]), float(zooms[2]))


def _reorient_to_ras(data: np.ndarray, affine: np.ndarray, zooms) -> tuple[np.ndarray, list[float], np.ndarray]:
    from nibabel.orientations import apply_orientation, io_orientation

    ornt = io_orientation(affine)
    out = apply_orientation(data, ornt)
    new_zooms = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt):
        new_zooms[int(target)] = float(zooms[axis])
    return out, new_zooms, ornt


# ---------------------------------------------------------------- NIfTI

def _read_nifti(path: Path, label: bool, channel: int | None = None) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as exc:  # noqa: BLE001
        _check_gzip(path)
        raise ReadError(f"unreadable nifti {path.name}: {type(exc).__name__}: {exc}") from exc
    shape = img.shape
    if channel is not None and not (len(shape) == 4 and 0 <= channel < shape[3] or len(shape) == 3 and channel == 0):
        raise ReadError(f"{path.name}: NIfTI has shape {shape}; it holds no channel {channel}")
    if len(shape) == 4 and (shape[3] == 1 or channel is not None):
        img = img.slicer[..., channel or 0]
    elif len(shape) == 2:
        img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., None], img.affine, img.header)
    elif len(shape) != 3:
        raise ReadError(f"{path.name}: NIfTI has shape {shape}; expected one 3-D volume")
    canonical = nib.as_closest_canonical(img)
    try:
        data = np.asanyarray(canonical.dataobj) if label else canonical.get_fdata(dtype=np.float32)
    except Exception:  # noqa: BLE001
        _check_gzip(path)
        raise
    array, spacing = _display_order(data, canonical.header.get_zooms()[:3])
    return Volume(array, spacing, [path])


def _check_gzip(path: Path) -> None:
    """Name truncation / corruption of a .gz file plainly (nibabel's own message does not)."""
    if not path.name.lower().endswith(".gz"):
        return
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    except (EOFError, OSError, zlib.error) as exc:
        raise ReadError(f"unreadable nifti {path.name}: truncated or corrupt gzip stream ({exc})") from exc


# ---------------------------------------------------------------- DICOM

def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _first(ds, *paths):
    """The first attribute found along dotted paths through (functional-group) sequences, or None."""
    for dotted in paths:
        node = ds
        for part in dotted.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
            if part.endswith("Sequence"):
                node = node[0] if len(node) else None
                if node is None:
                    break
        if node is not None:
            return node
    return None


def _rescale(ds, frame_group=None):
    slope = _first(frame_group, "PixelValueTransformationSequence.RescaleSlope") if frame_group is not None else None
    intercept = (_first(frame_group, "PixelValueTransformationSequence.RescaleIntercept")
                 if frame_group is not None else None)
    slope = slope if slope is not None else _first(ds, "RescaleSlope",
                                                   "SharedFunctionalGroupsSequence.PixelValueTransformationSequence.RescaleSlope")
    intercept = intercept if intercept is not None else _first(ds, "RescaleIntercept",
                                                               "SharedFunctionalGroupsSequence.PixelValueTransformationSequence.RescaleIntercept")
    return float(slope if slope is not None else 1.0), float(intercept if intercept is not None else 0.0)


def _frames_of(ds, label: bool):
    """(pixels [R, C], position or None, (slope, intercept)) per frame of one dataset."""
    pixels = ds.pixel_array
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if getattr(ds, "SamplesPerPixel", 1) != 1:
        raise ReadError(f"DICOM with {ds.SamplesPerPixel} samples per pixel: expected a grayscale image")
    pixels = pixels.reshape(frames, *pixels.shape[-2:])
    per_frame = list(getattr(ds, "PerFrameFunctionalGroupsSequence", []) or [])
    out = []
    for index in range(frames):
        group = per_frame[index] if index < len(per_frame) else None
        position = _first(group, "PlanePositionSequence.ImagePositionPatient") if group is not None else None
        if position is None and frames == 1:
            position = getattr(ds, "ImagePositionPatient", None)
        out.append((pixels[index], position, (1.0, 0.0) if label else _rescale(ds, group)))
    return out


def _geometry(ds):
    orientation = _first(ds, "ImageOrientationPatient",
                         "SharedFunctionalGroupsSequence.PlaneOrientationSequence.ImageOrientationPatient",
                         "PerFrameFunctionalGroupsSequence.PlaneOrientationSequence.ImageOrientationPatient")
    spacing = _first(ds, "PixelSpacing", "SharedFunctionalGroupsSequence.PixelMeasuresSequence.PixelSpacing",
                     "PerFrameFunctionalGroupsSequence.PixelMeasuresSequence.PixelSpacing")
    thickness = _first(ds, "SpacingBetweenSlices", "SliceThickness",
                       "SharedFunctionalGroupsSequence.PixelMeasuresSequence.SpacingBetweenSlices",
                       "SharedFunctionalGroupsSequence.PixelMeasuresSequence.SliceThickness")
    return orientation, spacing, thickness


def _assemble(frames, ds, path: Path, files: list[Path]) -> Volume:
    orientation, pixel_spacing, thickness = _geometry(ds)
    row_sp, col_sp = (float(pixel_spacing[0]), float(pixel_spacing[1])) if pixel_spacing else (1.0, 1.0)
    row_cos, col_cos = (np.array(orientation[:3], float), np.array(orientation[3:], float)) if orientation else (
        np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
    normal = np.cross(row_cos, col_cos)
    shapes = {f[0].shape for f in frames}
    if len(shapes) != 1:
        raise ReadError(f"{path.name}: slices have different sizes {sorted(shapes)}")
    slice_sp = float(thickness) if thickness else 1.0
    if orientation and all(f[1] is not None for f in frames):
        heights = [float(np.dot(np.array(f[1], float), normal)) for f in frames]
        order = np.argsort(heights, kind="stable")
        frames, files = [frames[i] for i in order], [files[i] for i in order] if len(files) == len(frames) else files
        steps = np.diff(np.sort(heights))
        if len(steps) and np.median(steps) > 0:
            slice_sp = float(np.median(steps))
        _check_gaps(steps, files, path)
    stack = np.stack([f[0].astype(np.float32) * f[2][0] + f[2][1] for f in frames])  # [s, r, c]
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = row_cos * col_sp, col_cos * row_sp, normal * slice_sp
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS → RAS
    ras, zooms, ornt = _reorient_to_ras(np.transpose(stack, (2, 1, 0)), affine, (col_sp, row_sp, slice_sp))
    array, spacing = _display_order(ras, zooms)
    return Volume(array, spacing, files, ornt=ornt if len(files) == len(frames) else None)


def _check_gaps(steps: np.ndarray, files: list[Path], path: Path) -> None:
    """A step along the slice normal over 1.5x the median step is a missing slice (``steps`` between the slices'
    heights and ``files`` in height order)."""
    if len(steps) < 2 or np.median(steps) <= 0:
        return
    usual = float(np.median(steps))
    for i in np.flatnonzero(steps > 1.5 * usual):
        names = (files[i].name, files[i + 1].name) if len(files) == len(steps) + 1 else (f"slice {i}", f"slice {i + 1}")
        raise ReadError(f"series {path.name}: gap of {steps[i]:.2f} mm between {names[0]} and {names[1]} (the "
                        f"series' spacing is {usual:.2f} mm): a slice is missing")


def _read_dicom_file(path: Path, label: bool) -> Volume:
    import pydicom

    ds = pydicom.dcmread(str(path))
    return _assemble(_frames_of(ds, label), ds, path, [path])


def _read_dicom_series(path: Path, label: bool, one_series: bool = True) -> Volume:
    import pydicom

    files = folder_files(path)
    datasets = []
    for file in files:
        try:
            datasets.append(pydicom.dcmread(str(file)))
        except Exception as exc:  # noqa: BLE001
            raise ReadError(f"unreadable DICOM file {file.name} in series {path.name}: "
                            f"{type(exc).__name__}: {exc}") from exc
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1 and one_series:
        raise ReadError(f"folder {path.name} holds {len(series)} DICOM series; give one series per manifest row")
    order = sorted(range(len(datasets)), key=lambda i: (int(getattr(datasets[i], "InstanceNumber", 0) or 0),
                                                        files[i].name))
    datasets, files = [datasets[i] for i in order], [files[i] for i in order]
    frames = []
    for ds, file in zip(datasets, files):
        try:
            frames.extend(_frames_of(ds, label))
        except Exception as exc:  # noqa: BLE001
            raise ReadError(f"unreadable DICOM file {file.name} in series {path.name}: "
                            f"{type(exc).__name__}: {exc}") from exc
    if len(frames) != len(files):
        raise ReadError(f"series {path.name}: multi-frame files inside a series folder are not supported")
    return _assemble(frames, datasets[0], path, files)


# ---------------------------------------------------------------- PNG / JPEG

def _read_slice(path: Path, label: bool) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
            if label:
                raise ReadError(f"{path.name}: label slice has mode {im.mode}; expected one channel of organ ids")
            im = im.convert("L")
        elif im.mode == "P" and not label:
            im = im.convert("L")
        return np.array(im)


def _read_image(path: Path, label: bool) -> Volume:
    pixels = _read_slice(path, label)[None]
    return Volume(pixels if label else pixels.astype(np.float32), (1.0, 1.0, 1.0), [path])


def _read_image_folder(path: Path, label: bool) -> Volume:
    files = folder_files(path)
    slices = []
    for file in files:
        try:
            slices.append(_read_slice(file, label))
        except Exception as exc:  # noqa: BLE001
            raise ReadError(f"unreadable slice {file.name} in {path.name}: {type(exc).__name__}: {exc}") from exc
    shapes = {s.shape for s in slices}
    if len(shapes) != 1:
        raise ReadError(f"folder {path.name}: slices have different sizes {sorted(shapes)}")
    stack = np.stack(slices)
    return Volume(stack if label else stack.astype(np.float32), (1.0, 1.0, 1.0), files)


# ---------------------------------------------------------------- other nnU-Net file endings

def _read_itk(path: Path, label: bool) -> Volume:
    """.nrrd / .mha / .gipl: SimpleITK, reoriented so that the array's axes run toward L, P and S (DICOMOrient
    "LPS"), which is the display order: slices inferior → superior, rows anterior → posterior, columns right → left."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() not in (2, 3):
        raise ReadError(f"{path.name}: {image.GetDimension()}-D image with {image.GetNumberOfComponentsPerPixel()} "
                        "components; expected one 3-D volume")
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    image = sitk.DICOMOrient(image, "LPS")
    array = sitk.GetArrayFromImage(image)
    column_sp, row_sp, slice_sp = image.GetSpacing()
    return Volume(array if label else array.astype(np.float32), (row_sp, column_sp, slice_sp), [path])


def _read_nnunet_io(path: Path, label: bool) -> Volume:
    """.bmp / .tif / .tiff through the reader nnU-Net picks for the ending; taken as displayed (no geometry)."""
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

    io_class = determine_reader_writer_from_file_ending(_suffix(path), verbose=False)
    io = io_class()
    data, properties = io.read_seg(str(path)) if label else io.read_images((str(path),))
    if data.shape[0] != 1:
        raise ReadError(f"{path.name}: {data.shape[0]} channels; expected one grey-level image")
    spacing = (1.0, 1.0, 1.0) if io_class is NaturalImage2DIO else tuple(float(s) for s in properties["spacing"])
    return Volume(data[0] if label else data[0].astype(np.float32), (spacing[1], spacing[2], spacing[0]), [path])


# ---------------------------------------------------------------- helpers

def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def natural_key(path: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def folder_files(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")), key=natural_key)


def _as_labels(array: np.ndarray, path: Path) -> np.ndarray:
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        return array.astype(np.int64, copy=False)
    if not np.isfinite(array).all():
        raise ReadError(f"label {path.name} has NaN/Inf values")
    rounded = np.rint(array)
    if not np.array_equal(rounded, array):
        raise ReadError(f"label {path.name} has non-integer values; expected organ ids")
    return rounded.astype(np.int64)

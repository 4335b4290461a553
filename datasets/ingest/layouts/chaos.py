"""CHAOS MR: ``MR/<id>/T1DUAL/DICOM_anon/{InPhase,OutPhase}/`` with ``MR/<id>/T1DUAL/Ground/*.png`` (one mask per
slice, shared by both phases) and ``MR/<id>/T2SPIR/DICOM_anon/`` with ``MR/<id>/T2SPIR/Ground/*.png``.

DIR is the ``MR`` folder, or holds it as ``MR``, ``*/MR`` or ``*/*/MR`` (the challenge's
``CHAOS_Train_Sets/Train_Sets/MR`` and ``CHAOS_Test_Sets/Test_Sets/MR``): an MR folder under a "Train" folder is
train, under a "Test" folder test; otherwise the layout sets no split. Each study gives three volumes of one case
(the patient): ``<id>_T1DUAL_InPhase``, ``<id>_T1DUAL_OutPhase``, ``<id>_T2SPIR``.

Ground truth is grey bands (:data:`BANDS`). The i-th PNG in name order is the mask of the i-th DICOM file in name
order, so the masks are stacked in the series' file order and put through the DICOM pixels' own reorientation
(``Volume.from_native``): they land on the anatomy whatever the DICOM orientation says. CHAOS gives each DICOM file
its own SeriesInstanceUID, so a folder is read as one series whatever those say.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mrgen.datasets.ingest.cases import VolumeError, check_label, read_file
from mrgen.datasets.ingest.layouts.common import Discovery, Sequences
from mrgen.datasets.ingest.manifest import ManifestRow
from mrgen.datasets.ingest.readers import ReadError, Volume, folder_files, natural_key

NAME = "chaos"
BANDS = ((55, 70, 1), (110, 135, 2), (175, 200, 3), (240, 255, 4))
LABELS = {1: "Liver", 2: "Right kidney", 3: "Left kidney", 4: "Spleen"}  # as CHAOS names them
SERIES = (("T1DUAL/DICOM_anon/InPhase", "T1DUAL/Ground", "T1DUAL InPhase"),
          ("T1DUAL/DICOM_anon/OutPhase", "T1DUAL/Ground", "T1DUAL OutPhase"),
          ("T2SPIR/DICOM_anon", "T2SPIR/Ground", "T2SPIR"))


def _mr_folders(root: Path) -> list[Path]:
    found = [root] if root.name == "MR" else []
    return found + [p for pattern in ("MR", "*/MR", "*/*/MR") for p in sorted(root.glob(pattern)) if p.is_dir()]


def _studies(mr: Path) -> list[Path]:
    return sorted((p for p in mr.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def _split(mr: Path, root: Path) -> str:
    parts = [p.lower() for p in mr.relative_to(root.parent).parts]
    return "test" if any("test" in p for p in parts) else "train"


def _pngs(folder: Path) -> list[Path]:
    return [p for p in folder_files(folder) if p.suffix.lower() == ".png"] if folder.is_dir() else []


def detect(root: Path) -> bool:
    return any((s / "T2SPIR").is_dir() or (s / "T1DUAL").is_dir() for mr in _mr_folders(root) for s in _studies(mr))


def discover(root: Path, sequences: Sequences) -> Discovery:
    found = Discovery(NAME, "chaos-mri")
    for mr in _mr_folders(root):
        for study in _studies(mr):
            for series, ground, sequence in SERIES:
                folder, ground_folder = study / series, study / ground
                if not folder.is_dir():
                    found.problem(folder, study.name, f"no {series}/ folder")
                    continue
                dicoms, pngs = folder_files(folder), _pngs(ground_folder)
                if ground_folder.is_dir() and len(pngs) != len(dicoms):
                    found.problem(ground_folder, study.name, f"{ground}/ holds {len(pngs)} PNG masks for the "
                                                             f"{len(dicoms)} DICOM files of {series}/")
                    continue
                found.add(study.name, ManifestRow(
                    row=0, image=str(folder.absolute()), dataset=found.dataset, modality=sequences(sequence, "CHAOS"),
                    split=_split(mr, root), volume_id=f"{study.name}_{sequence.replace(' ', '_')}",
                    label=str(ground_folder.absolute()) if pngs else None, labels=LABELS if pngs else {}, reader=NAME))
    return found


def read_case(row: ManifestRow) -> tuple[Volume, np.ndarray | None]:
    """The DICOM series, and its PNG ground truth as organ ids in the same (display) orientation."""
    image = read_file(row.image, one_series=False)
    if not row.label:
        return image, None
    pngs = _pngs(Path(row.label))
    if len(pngs) != len(image.files):
        raise VolumeError(row.label, f"{len(pngs)} PNG masks for the {len(image.files)} DICOM files of "
                                     f"{Path(row.image).name}")
    png_of = dict(zip(sorted(image.files, key=natural_key), pngs))
    masks = [grey_to_ids(png_of[file]) for file in image.files]
    odd = next(((png_of[f], m.shape) for f, m in zip(image.files, masks) if m.shape != masks[0].shape), None)
    if odd is not None:
        raise VolumeError(str(odd[0]), f"mask is {odd[1]}, the series' other masks {masks[0].shape}")
    try:
        mask = image.from_native(np.stack(masks))
    except ReadError as exc:
        raise VolumeError(row.label, str(exc)) from None
    return image, check_label(row, image, mask)


def grey_to_ids(png: Path) -> np.ndarray:
    grey = read_file(str(png), label=True).array[0]
    ids = np.zeros(grey.shape, np.uint8)
    for low, high, organ in BANDS:
        ids[(grey >= low) & (grey <= high)] = organ
    stray = (grey > 0) & (ids == 0)
    if stray.any():
        raise VolumeError(str(png), f"grey level {int(grey[stray][0])} lies in none of CHAOS's bands (55-70 liver, "
                                    "110-135 right kidney, 175-200 left kidney, 240-255 spleen)")
    return ids

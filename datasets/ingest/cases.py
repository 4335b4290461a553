"""One row's volume and mask, read in the display orientation: the row's files (``read_files``), or, where the row
names one (``row.reader``), its layout's own reader (``layouts.CASE_READERS``). Errors name the file at fault."""
from __future__ import annotations

import json

import numpy as np

from mrgen.datasets.ingest.manifest import ManifestRow
from mrgen.datasets.ingest.readers import ReadError, Volume, read_volume


class VolumeError(ValueError):
    def __init__(self, file: str, reason: str):
        super().__init__(reason)
        self.file = file


def read_file(path: str, **options) -> Volume:
    """:func:`readers.read_volume`, its errors as :class:`VolumeError` naming ``path``."""
    try:
        return read_volume(path, **options)
    except ReadError as exc:
        raise VolumeError(path, str(exc)) from None


def check_label(row: ManifestRow, image: Volume, mask: np.ndarray) -> np.ndarray:
    """``mask`` if it fits ``image`` and holds only ids of ``row.labels``."""
    if mask.shape != image.shape:
        raise VolumeError(row.label, f"image/label shape mismatch: image {image.shape}, label {mask.shape} "
                                     "(slices, rows, columns)")
    unknown = sorted(set(np.unique(mask).tolist()) - {0} - set(row.labels))
    if unknown:
        raise VolumeError(row.label, f"label values {unknown[:10]} absent from 'labels' "
                                     f"{json.dumps({str(k): v for k, v in row.labels.items()})}")
    return mask


def read_files(row: ManifestRow) -> tuple[Volume, np.ndarray | None]:
    image = read_file(row.image, channel=row.channel)
    if not row.label:
        return image, None
    return image, check_label(row, image, read_file(row.label, label=True).array)

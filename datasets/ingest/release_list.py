"""The official MRGen release's data lists (its ``conditional_dataset/*.json``): one 2-D slice per row.

A list is a JSON array (``.json``) or JSON Lines (``.jsonl``) of objects with

* ``image_path``           the slice (PNG / JPEG; read as 8-bit grey, as the release does)
* ``mask0_path`` … ``mask3_path``  optional binary organ masks of the same size (``""`` or absent: none)
* ``modality``             e.g. ``T2 SPIR Abdomen MRI``; ``modality_attributes`` its attribute text (kept verbatim)
* ``region``               optional, one of the schema's ``REGIONS``
* ``label``                the dataset's label list: ``mask{i}_path`` is organ ``label[i]`` (organ id ``i + 1``)
* ``organs``               the organs in the slice (informational; the DB derives them from the masks)

and optionally ``dataset``, ``split``, ``volume_id`` (defaults: the list's file name without a trailing
``_train`` / ``_test`` / ``_all``, the split that suffix names (else train), the image's file name). Other fields
are ignored. Relative paths are relative to the list's folder.

Preprocessing is the release's (``utils/util.py``): per-slice min-max to [0, 1] (``/ (max − min + 1e-6)``), zero
padding to a square (centred, the odd pixel at the end), scikit-image ``resize`` to ``resolution`` with
anti-aliasing (``mode="reflect"``, bilinear); masks go the same way and are then thresholded at 0.5 into ids. A
slice becomes a one-slice volume of the DB (nominal 1 mm pixels before resizing).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from skimage.transform import resize

from mrgen.datasets.ingest.manifest import ManifestRow, RowProblem, default_volume_id
from mrgen.datasets.ingest.preprocess import PreparedVolume, pad_to_square
from mrgen.datasets.ingest.readers import ReadError
from mrgen.datasets.schema import REGIONS, SPLITS

MASK_FIELDS = tuple(f"mask{i}_path" for i in range(4))
_SPLIT_SUFFIXES = {"_train": "train", "_test": "test", "_val": "val", "_all": "train"}


@dataclass(frozen=True)
class ReleaseRow(ManifestRow):
    """One slice of a release list: a manifest row with its binary mask files, attribute text and region."""

    masks: tuple[str | None, ...] = ()
    attributes: str | None = None
    region: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "masks": list(self.masks), "attributes": self.attributes, "region": self.region}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReleaseRow:
        return super().from_json({**data, "masks": tuple(data["masks"])})


def _records(path: Path) -> list[tuple[int, Any]] | None:
    """(row number, record) of a release list, or None when ``path`` is not one (no ``image_path`` in row 1)."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return None
        records = list(enumerate(data, start=1)) if isinstance(data, list) else None
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append((number, json.loads(line)))
                except json.JSONDecodeError as exc:
                    records.append((number, {"__error__": f"not valid JSON: {exc.msg} at column {exc.colno}"}))
    else:
        return None
    first = next((r for _, r in records if isinstance(r, dict) and "__error__" not in r), None) if records else None
    return records if isinstance(first, dict) and "image_path" in first else None


def is_release_list(path: str | Path) -> bool:
    path = Path(path)
    return path.is_file() and _records(path) is not None


def read_release_list(path: str | Path) -> tuple[list[ReleaseRow], list[RowProblem]]:
    """Valid rows, and a problem (file, row, field) for every invalid one."""
    path = Path(path)
    stem, split = path.stem, "train"
    for suffix, name in _SPLIT_SUFFIXES.items():
        if stem.lower().endswith(suffix):
            stem, split = stem[: -len(suffix)], name
    rows, problems, seen = [], [], {}
    for number, raw in _records(path) or []:
        try:
            row = _parse(raw, number, path.parent, stem, split)
        except ValueError as exc:
            problems.append(RowProblem(str(path), number, str(exc)))
            continue
        if row.key in seen:
            problems.append(RowProblem(str(path), number, f"field 'volume_id': slice {row.key!r} already given in "
                                                          f"row {seen[row.key]}"))
            continue
        seen[row.key] = number
        rows.append(row)
    return rows, problems


def _text(raw: dict[str, Any], name: str, required: bool = False) -> str | None:
    value = raw.get(name)
    if value in (None, ""):
        if required:
            raise ValueError(f"missing field '{name}'")
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"field '{name}' must be a non-empty string")
    return value.strip()


def _parse(raw: Any, number: int, root: Path, dataset: str, split: str) -> ReleaseRow:
    if not isinstance(raw, dict):
        raise ValueError("a row must be a JSON object")
    if "__error__" in raw:
        raise ValueError(raw["__error__"])
    image = _resolve(_text(raw, "image_path", required=True), root)
    labels = raw.get("label") or []
    if not isinstance(labels, list) or not all(isinstance(x, str) and x.strip() for x in labels):
        raise ValueError("field 'label' must be a list of organ names (the dataset's label list)")
    masks = []
    for i, name in enumerate(MASK_FIELDS):
        mask = _text(raw, name)
        if mask is not None and i >= len(labels):
            raise ValueError(f"field '{name}': no organ name for it (field 'label' has {len(labels)} entries)")
        masks.append(_resolve(mask, root) if mask else None)
    region = _text(raw, "region")
    if region is not None and region not in REGIONS:
        raise ValueError(f"field 'region': {region!r} is not one of {', '.join(REGIONS)}")
    split = _text(raw, "split") or split
    if split not in SPLITS:
        raise ValueError(f"field 'split': {split!r} is not one of {', '.join(SPLITS)}")
    volume_id = _text(raw, "volume_id") or default_volume_id(image)
    return ReleaseRow(row=number, image=image, dataset=_text(raw, "dataset") or dataset,
                      modality=_text(raw, "modality", required=True), split=split, volume_id=volume_id,
                      masks=tuple(masks), attributes=_text(raw, "modality_attributes"), region=region,
                      labels={i + 1: labels[i].strip() for i, m in enumerate(masks) if m is not None})


def _resolve(path: str, root: Path) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (root / p).absolute())


# ---------------------------------------------------------------- preprocessing (the release's)

def release_preprocess(pixels: np.ndarray, resolution: int) -> np.ndarray:
    """8-bit grey [H, W] → float [R, R] in [0, 1]: min-max, zero-pad to a square, anti-aliased resize."""
    x = pixels.astype(np.float32)
    x = pad_to_square((x - x.min()) / (x.max() - x.min() + 1e-6))
    x = resize(x, (resolution, resolution), preserve_range=True, anti_aliasing=True, mode="reflect")
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def prepare_release_slice(image: np.ndarray, masks: list[np.ndarray | None], resolution: int) -> PreparedVolume:
    """One slice and its binary organ masks (organ ``i + 1`` = ``masks[i]``) as a one-slice volume."""
    out = release_preprocess(image, resolution)[None]
    ids = np.zeros((1, resolution, resolution), np.uint8)
    for i, mask in enumerate(masks):
        if mask is not None:
            ids[0][release_preprocess(mask, resolution) >= 0.5] = i + 1
    spacing = (float(max(image.shape)) / resolution,) * 2
    return PreparedVolume(out, ids if any(m is not None for m in masks) else None, spacing)


def read_grey(path: str) -> np.ndarray:
    """A slice or mask file as 8-bit grey [H, W] (``convert("L")``, as the release reads both)."""
    if not Path(path).is_file():
        raise ReadError(f"file not found: {path}")
    try:
        with Image.open(path) as im:
            return np.array(im.convert("L"))
    except Exception as exc:  # noqa: BLE001 - any unreadable or corrupt image
        raise ReadError(f"unreadable image {Path(path).name}: {type(exc).__name__}: {exc}") from exc

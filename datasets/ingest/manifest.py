"""The build manifest: one row per source volume, as JSON Lines or CSV.

Fields of a row:

* ``image``     NIfTI (.nii/.nii.gz), a DICOM file or series folder, a PNG/JPEG slice or a folder of slices
* ``label``     optional organ mask in any of the same formats (integer organ ids)
* ``dataset``   dataset name, e.g. ``chaos-mri``
* ``modality``  free-text modality label, e.g. ``T2 SPIR Abdomen MRI``
* ``labels``    label value → organ name, e.g. ``{"1": "liver", "2": "spleen"}`` (a JSON object in a CSV cell);
                required with ``label``; value 0 is background and ignored
* ``split``     optional, ``train`` (default), ``val`` or ``test``
* ``volume_id`` optional, default the image's file or folder name without extensions

Relative paths are relative to the manifest's folder. A bad row becomes a :class:`RowProblem` naming the manifest
file, the row number (1-based data row: a JSONL line, or a CSV record after the header) and the field.

The dataset layouts (``layouts/``) make the same rows from a dataset folder (row number 0), with two fields a
manifest does not take: ``channel`` (a 4-D image's channel) and ``reader`` (the layout's own reader of the
image and label, e.g. CHAOS's DICOM series with PNG ground truth; see ``cases.py``).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrgen.datasets.schema import SPLITS

REQUIRED = ("image", "dataset", "modality")
KNOWN = (*REQUIRED, "label", "labels", "split", "volume_id")
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".dicom", ".png", ".jpg", ".jpeg")


class ManifestError(ValueError):
    """The manifest as a whole cannot be read (missing file, unknown format)."""


@dataclass(frozen=True)
class ManifestRow:
    row: int
    image: str
    dataset: str
    modality: str
    split: str
    volume_id: str
    label: str | None = None
    labels: dict[int, str] = field(default_factory=dict)
    channel: int | None = None
    reader: str | None = None

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.volume_id}"

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row, "image": self.image, "dataset": self.dataset, "modality": self.modality,
                "split": self.split, "volume_id": self.volume_id, "label": self.label,
                "labels": {str(k): v for k, v in self.labels.items()}, "channel": self.channel,
                "reader": self.reader}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ManifestRow:
        return cls(**{**data, "labels": {int(k): v for k, v in data["labels"].items()}})


@dataclass(frozen=True)
class RowProblem:
    file: str
    row: int
    reason: str


def default_volume_id(image: str) -> str:
    name = Path(image.rstrip("/")).name
    for suffix in _VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_manifest(path: str | Path) -> tuple[list[ManifestRow], list[RowProblem]]:
    """Valid rows, and a problem for every invalid row (the rest of the manifest is still read)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    raw_rows = list(_raw_rows(path))
    rows, problems, seen = [], [], {}
    for number, raw in raw_rows:
        try:
            row = _parse_row(raw, number, path.parent)
        except ValueError as exc:
            problems.append(RowProblem(str(path), number, str(exc)))
            continue
        if row.key in seen:
            problems.append(RowProblem(str(path), number,
                                       f"field 'volume_id': volume {row.key!r} already given in row {seen[row.key]}"))
            continue
        seen[row.key] = number
        rows.append(row)
    return rows, problems


def _raw_rows(path: Path):
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        for number, record in enumerate(reader, start=1):
            yield number, {k.strip(): v for k, v in record.items() if k is not None and v not in (None, "")}
        return
    if path.suffix.lower() not in (".jsonl", ".json", ".ndjson"):
        raise ManifestError(f"{path}: manifest must be .jsonl (JSON Lines) or .csv")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, {"__error__": f"not valid JSON: {exc.msg} at column {exc.colno}"}
            continue
        yield number, record if isinstance(record, dict) else {"__error__": "a row must be a JSON object"}


def _parse_row(raw: dict[str, Any], number: int, root: Path) -> ManifestRow:
    if "__error__" in raw:
        raise ValueError(raw["__error__"])
    for name in REQUIRED:
        value = raw.get(name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"missing field '{name}'" if value in (None, "")
                             else f"field '{name}' must be a non-empty string")
    unknown = sorted(set(raw) - set(KNOWN))
    if unknown:
        raise ValueError(f"unknown field '{unknown[0]}' (fields: {', '.join(KNOWN)})")
    label = raw.get("label") or None
    labels = parse_labels(raw.get("labels"), required=label is not None)
    split = raw.get("split") or "train"
    if split not in SPLITS:
        raise ValueError(f"field 'split': {split!r} is not one of {', '.join(SPLITS)}")
    volume_id = str(raw.get("volume_id") or default_volume_id(raw["image"]))
    if "/" in volume_id:
        raise ValueError(f"field 'volume_id': {volume_id!r} must not contain '/'")
    return ManifestRow(row=number, image=_resolve(raw["image"], root), dataset=raw["dataset"].strip(),
                       modality=raw["modality"].strip(), split=split, volume_id=volume_id,
                       label=_resolve(label, root) if label else None, labels=labels)


def parse_labels(value: Any, required: bool) -> dict[int, str]:
    if value in (None, "", {}):
        if required:
            raise ValueError("missing field 'labels' (label value → organ name), required with 'label'")
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"field 'labels': not a JSON object: {exc.msg}") from None
    if not isinstance(value, dict):
        raise ValueError("field 'labels' must be an object mapping label value to organ name")
    labels = {}
    for key, name in value.items():
        try:
            label_value = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"field 'labels': key {key!r} is not an integer label value") from None
        if not 0 <= label_value <= 255:
            raise ValueError(f"field 'labels': label value {label_value} outside 0..255")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"field 'labels': organ name for {label_value} must be a non-empty string")
        if label_value:
            labels[label_value] = name.strip()
    return dict(sorted(labels.items()))


def _resolve(path: str, root: Path) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (root / p).absolute())

"""Public MRI collections in their native layouts → the manifest's rows (`mrgen db build DIR`).

A layout module has ``NAME``, ``detect(root)`` and ``discover(root, sequences) -> Discovery``; one that reads its
volumes its own way (CHAOS) also has ``read_case(row)``, found through :data:`CASE_READERS` by ``row.reader``.
Recognition tries :data:`LAYOUTS` in order: AMOS before the Decathlon, whose dataset.json fields AMOS's also has.
"""
from __future__ import annotations

from pathlib import Path

from mrgen.datasets.ingest.layouts import amos, chaos, msd, nnunet_raw
from mrgen.datasets.ingest.layouts.common import Discovery, LayoutError, Sequences, parse_split_by, split_by

LAYOUTS = {module.NAME: module for module in (amos, msd, nnunet_raw, chaos)}
CASE_READERS = {chaos.NAME: chaos.read_case}

__all__ = ["CASE_READERS", "LAYOUTS", "Discovery", "LayoutError", "detect_layout", "discover"]


def detect_layout(root: Path) -> str:
    for name, module in LAYOUTS.items():
        if module.detect(root):
            return name
    raise LayoutError(f"{root}: no known dataset layout ({', '.join(LAYOUTS)}) recognised; name one with --layout, "
                      "or give a manifest")


def discover(root: str | Path, layout: str | None = None, split: str | None = None, modality: str | None = None,
             modality_attributes: dict[str, str] | None = None) -> Discovery:
    """The rows of the dataset folder ``root``, problems naming case and file, and warnings.

    ``layout`` forces one of :data:`LAYOUTS`; ``split`` ("SEED:FRACTION", ``--split-by``) puts a seeded share of
    the train cases in test; ``modality`` labels volumes whose sequence the modality table does not know.
    """
    root = Path(root)
    if layout is not None and layout not in LAYOUTS:
        raise LayoutError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    seed_fraction = parse_split_by(split) if split else None
    name = layout or detect_layout(root)
    warnings: list[str] = []
    found = LAYOUTS[name].discover(root, Sequences(modality, modality_attributes or {}, warnings))
    found.warnings[:0] = warnings
    if not found.rows and not found.problems:
        raise LayoutError(f"{root}: no cases found in the {name} layout")
    first: dict[str, str] = {}
    kept = []
    for row in found.rows:  # a volume found twice (e.g. one study id in CHAOS's train and test sets) is a problem
        if row.key in first:
            found.problem(row.image, found.cases[row.key], f"volume {row.volume_id} also found in {first[row.key]}")
            continue
        first[row.key] = row.image
        kept.append(row)
    found.rows = kept
    if seed_fraction:
        split_by(found, *seed_fraction)
    return found

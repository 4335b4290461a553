"""What a layout hands the build (:class:`Discovery`), and what the layouts share: dataset.json, sequence names →
modality labels, the dataset's slug, the seeded case-level split."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mrgen.datasets.ingest.manifest import ManifestRow, RowProblem, parse_labels
from mrgen.datasets.modality import UnknownModalityError, canonical_modality


class LayoutError(ValueError):
    """The folder as a whole cannot be read as the layout (no or unreadable dataset.json, no cases ...)."""


@dataclass
class Discovery:
    layout: str
    dataset: str
    rows: list[ManifestRow] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)  # row 0; the reason names the case
    warnings: list[str] = field(default_factory=list)
    cases: dict[str, str] = field(default_factory=dict)  # row key → its case (patient): the unit of --split-by

    def add(self, case: str, row: ManifestRow) -> None:
        self.rows.append(row)
        self.cases[row.key] = case

    def add_channels(self, case: str, images: dict[int, Path], label: Path | None, split: str,
                     channels: dict[int, str], modalities: dict[int, str], labels: dict[int, str],
                     in_one_file: bool = False) -> None:
        """One volume per channel: ``<case>`` for one channel, else ``<case>_<channel name>``; ``in_one_file``:
        the channels are those of one 4-D image."""
        for channel, name in channels.items():
            volume = case if len(channels) == 1 else f"{case}_{re.sub(r'[^A-Za-z0-9-]+', '-', name)}"
            self.add(case, ManifestRow(row=0, image=str(images[channel].absolute()), dataset=self.dataset,
                                       modality=modalities[channel], split=split, volume_id=volume,
                                       label=str(label.absolute()) if label else None, labels=labels if label else {},
                                       channel=channel if in_one_file and len(channels) > 1 else None))

    def problem(self, file: Path | str, case: str, reason: str) -> None:
        self.problems.append(RowProblem(str(file), 0, f"case {case}: {reason}"))


def read_dataset_json(root: Path, required: tuple[str, ...]) -> dict:
    path = root / "dataset.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise LayoutError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LayoutError(f"{path}: not valid JSON: {exc}") from None
    missing = [key for key in required if key not in data] if isinstance(data, dict) else list(required)
    if missing:
        raise LayoutError(f"{path}: missing field '{missing[0]}'")
    return data


def peek_dataset_json(root: Path) -> dict:
    """dataset.json as a dict, or {} when absent or unreadable (for recognising a layout)."""
    try:
        data = json.loads((root / "dataset.json").read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def organ_labels(entries: dict, by_name: bool, file: Path, warnings: list[str]) -> dict[int, str]:
    """dataset.json's labels as id → the dataset's organ name, background left out, checked as a manifest's
    ``labels``: nnU-Net's name → id (``by_name``) or the Decathlon's id → name. nnU-Net's region labels (lists of
    ids) are no organs: left out with a warning."""
    if by_name:
        regions = {name: value for name, value in entries.items() if isinstance(value, (list, tuple))}
        warnings.extend(f"{file}: region label {name!r} {list(v)} left out (a region is no organ)"
                        for name, v in regions.items())
        entries = {value: name for name, value in entries.items() if name not in regions}
    try:
        return parse_labels(entries, required=False)
    except ValueError as exc:
        raise LayoutError(f"{file}: {exc}") from None


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


class Sequences:
    """A layout's sequence names → labels of the modality table, with one warning per name the table does not know.

    ``fallback`` (``--modality``) labels those; without it their volumes keep the dataset's name and the build
    skips them unless ``db.modality_attributes`` gives it (``extra``).
    """

    def __init__(self, fallback: str | None, extra: dict[str, str], warnings: list[str]):
        self.fallback, self.extra, self.warnings = fallback, extra, warnings
        self._seen: set[tuple[str | None, str]] = set()

    def __call__(self, name: str | None, where: str) -> str:
        try:
            return canonical_modality(name or "", self.extra)
        except UnknownModalityError:
            pass
        label = self.fallback or name or "unnamed"
        if (name, where) not in self._seen:
            self._seen.add((name, where))
            said = f"sequence {name!r}" if name else "no sequence name"
            fix = (f"labelled {self.fallback!r} (--modality)" if self.fallback else
                   "its volumes are skipped: give --modality LABEL or db.modality_attributes")
            self.warnings.append(f"{where}: {said}, which the modality table does not know; {fix}")
        return label


def parse_split_by(text: str) -> tuple[int, float]:
    seed, _, fraction = text.partition(":")
    try:
        seed_value, fraction_value = int(seed), float(fraction)
    except ValueError:
        raise LayoutError(f"--split-by {text!r}: expected SEED:FRACTION, e.g. 0:0.2") from None
    if not 0 < fraction_value < 1:
        raise LayoutError(f"--split-by {text!r}: FRACTION must lie between 0 and 1")
    return seed_value, fraction_value


def split_by(found: Discovery, seed: int, fraction: float) -> None:
    """A seeded share of the cases the layout puts in train goes to test, whole cases at a time (all volumes of a
    case, e.g. CHAOS's three sequences of one patient, stay together)."""
    cases = sorted({found.cases[r.key] for r in found.rows if r.split == "train"})
    count = min(len(cases) - 1, max(1, round(fraction * len(cases)))) if len(cases) > 1 else 0
    test = {cases[i] for i in np.random.default_rng(seed).permutation(len(cases))[:count]}
    found.rows = [replace(r, split="test") if r.split == "train" and found.cases[r.key] in test else r
                  for r in found.rows]

"""AMOS 2022: ``imagesTr/ labelsTr/ imagesVa/ labelsVa/ imagesTs/`` with ``dataset.json`` (``labels`` and the
``training`` / ``validation`` / ``test`` lists; the folders are read where a list is absent).

Only the MR cases are taken: ids ≥ 500 (``amos_0500`` and up); the CT cases are left out with a warning. Its 15
organ labels apply (dataset.json's, else :data:`LABELS`, as AMOS spells them: "arota", "postcava" ...). AMOS names
no MR sequence, so its volumes carry the label "MRI", which the modality table does not know: give ``--modality``.
Splits: training → train, validation → val, test → test.
"""
from __future__ import annotations

import re
from pathlib import Path

from mrgen.datasets.ingest.layouts.common import Discovery, Sequences, organ_labels, peek_dataset_json
from mrgen.datasets.ingest.manifest import default_volume_id

NAME = "amos"
FIRST_MR_ID = 500
LABELS = {1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gall bladder", 5: "esophagus", 6: "liver",
          7: "stomach", 8: "arota", 9: "postcava", 10: "pancreas", 11: "right adrenal gland", 12: "left adrenal gland",
          13: "duodenum", 14: "bladder", 15: "prostate/uterus"}
SETS = (("training", "imagesTr", "labelsTr", "train"), ("validation", "imagesVa", "labelsVa", "val"),
        ("test", "imagesTs", None, "test"))


def detect(root: Path) -> bool:
    meta = peek_dataset_json(root)
    named = any(re.fullmatch(r"amos_\d+\.nii(\.gz)?", p.name) for p in (root / "imagesTr").glob("*.nii*"))
    return (root / "imagesTr").is_dir() and ("validation" in meta or (root / "imagesVa").is_dir() or named)


def discover(root: Path, sequences: Sequences) -> Discovery:
    meta = peek_dataset_json(root)
    found = Discovery(NAME, "amos-mri")
    labels = organ_labels(meta["labels"], False, root / "dataset.json", found.warnings) if "labels" in meta else LABELS
    ct = 0
    for key, images, label_folder, split in SETS:
        listed = set()
        for image, label in _entries(root, meta, key, images, label_folder):
            case = default_volume_id(image.name)
            listed.add(case)
            number = re.search(r"(\d+)$", case)
            if number is None or int(number.group(1)) < FIRST_MR_ID:
                ct += 1
                continue
            missing = next((p for p in (image, label) if p is not None and not p.is_file()), None)
            if missing is not None:
                found.problem(missing, case, f"{missing.parent.name}/{missing.name} is missing")
                continue
            modality = sequences("MRI", "AMOS MR cases (ids >= 500)")
            found.add_channels(case, {0: image}, label, split, {0: "MRI"}, {0: modality}, labels)
        for label in sorted((root / label_folder).glob("*.nii*")) if label_folder else []:
            if default_volume_id(label.name) not in listed:
                found.problem(label, default_volume_id(label.name),
                              f"label without its image in {images}/ (or dataset.json's {key!r} list)")
    if ct:
        found.warnings.append(f"{root}: {ct} CT case(s) (ids < {FIRST_MR_ID}) left out; MR cases are ids >= "
                              f"{FIRST_MR_ID}")
    return found


def _entries(root: Path, meta: dict, key: str, images: str, label_folder: str | None):
    """(image, label or None) of a set: dataset.json's list, else the files of its folders."""
    if key in meta:
        for entry in meta[key]:
            image = entry["image"] if isinstance(entry, dict) else entry
            label = entry.get("label") if isinstance(entry, dict) else None
            yield root / image, (root / label if label else None)
        return
    for image in sorted((root / images).glob("*.nii*")):
        label = root / label_folder / image.name if label_folder else None
        yield image, label if label is not None and label.exists() else None

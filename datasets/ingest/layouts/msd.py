"""Medical Segmentation Decathlon: ``TaskXX_Name/`` with ``dataset.json`` (``modality``, ``labels``, the
``training`` and ``test`` lists), ``imagesTr/``, ``labelsTr/``, ``imagesTs/``.

A 4-D image (Prostate's T2 and ADC) gives one volume per channel, ``<case>_<modality name>``, read in place as that
channel of the 4-D NIfTI. nnU-Net's converter (``nnunetv2.dataset_conversion.convert_MSD_dataset``) is not used: it
copies the whole task into ``$nnUNet_raw`` under a new dataset id and drops the ``training`` / ``test`` lists, which
this layout checks against the files and takes its splits from (training → train, test → test).
"""
from __future__ import annotations

import re
from pathlib import Path

from mrgen.datasets.ingest.layouts.common import (Discovery, Sequences, organ_labels, peek_dataset_json,
                                                  read_dataset_json, slug)
from mrgen.datasets.ingest.manifest import default_volume_id

NAME = "msd"
REQUIRED = ("modality", "labels", "training")


def detect(root: Path) -> bool:
    meta = peek_dataset_json(root)
    return all(key in meta for key in REQUIRED) and "channel_names" not in meta


def discover(root: Path, sequences: Sequences) -> Discovery:
    meta = read_dataset_json(root, REQUIRED)
    name = re.sub(r"^Task\d+_", "", root.name)
    found = Discovery(NAME, f"msd-{slug(name)}")
    labels = organ_labels(meta["labels"], False, root / "dataset.json", found.warnings)
    channels = {int(k): str(v) for k, v in sorted(meta["modality"].items(), key=lambda kv: int(kv[0]))}
    modalities = {c: sequences(n, f"{root.name} modality {c}") for c, n in channels.items()}
    listed_labels = set()
    for entry in meta["training"]:
        image, label = root / entry["image"], root / entry["label"]
        listed_labels.add(label.resolve())
        add_case(found, image, label, "train", channels, modalities, labels)
    for entry in meta.get("test", []):
        add_case(found, root / (entry["image"] if isinstance(entry, dict) else entry), None, "test", channels,
                 modalities, labels)
    for label in sorted((root / "labelsTr").glob("*.nii*")):
        if not label.name.startswith((".", "_")) and label.resolve() not in listed_labels:
            found.problem(label, default_volume_id(label.name), "label not in dataset.json's training list")
    return found


def add_case(found: Discovery, image: Path, label: Path | None, split: str, channels: dict[int, str],
             modalities: dict[int, str], labels: dict[int, str]) -> None:
    """One listed case, one volume per channel; a listed file that is missing is a problem naming it."""
    case = default_volume_id(image.name)
    for path in (image, label):
        if path is not None and not path.is_file():
            found.problem(path, case, f"dataset.json names {path.parent.name}/{path.name}, which is missing")
            return
    found.add_channels(case, dict.fromkeys(channels, image), label, split, channels, modalities, labels,
                       in_one_file=True)

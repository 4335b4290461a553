"""nnU-Net v2 raw: ``DatasetXXX_Name/`` with ``dataset.json`` (``channel_names``, ``labels``, ``file_ending``),
``imagesTr/``, ``labelsTr/``, ``imagesTs/`` and, where present, ``labelsTs/``.

Cases are found as nnU-Net finds them: one ``<case>_<XXXX><file_ending>`` file per channel (its
``get_identifiers_from_splitted_dataset_folder``), or the ``dataset`` entry of dataset.json
(``get_filenames_of_train_images_and_targets``); every ending nnU-Net reads is read (``readers.py``). Each channel is
its own volume, ``<case>`` for one channel, else ``<case>_<channel name>``, with the modality its channel name maps
to. imagesTr is train, imagesTs test.
"""
from __future__ import annotations

from pathlib import Path

from nnunetv2.utilities.utils import (get_filenames_of_train_images_and_targets,
                                      get_identifiers_from_splitted_dataset_folder)

from mrgen.datasets.ingest.layouts.common import (Discovery, Sequences, organ_labels, peek_dataset_json,
                                                  read_dataset_json, slug)

NAME = "nnunet"
REQUIRED = ("channel_names", "labels", "file_ending")
FOLDERS = (("imagesTr", "labelsTr", "train"), ("imagesTs", "labelsTs", "test"))


def detect(root: Path) -> bool:
    meta = peek_dataset_json(root)
    return all(key in meta for key in REQUIRED) and (root / "imagesTr").is_dir()


def discover(root: Path, sequences: Sequences) -> Discovery:
    meta = read_dataset_json(root, REQUIRED)
    found = Discovery(NAME, slug(root.name))
    labels = organ_labels(meta["labels"], True, root / "dataset.json", found.warnings)
    channels = {int(k): str(v) for k, v in sorted(meta["channel_names"].items(), key=lambda kv: int(kv[0]))}
    modalities = {c: sequences(name, f"{root.name} channel {c}") for c, name in channels.items()}
    ending = meta["file_ending"]
    if "dataset" in meta:  # explicit file lists, training cases only
        for case, entry in get_filenames_of_train_images_and_targets(str(root), meta).items():
            images = {c: Path(p) for c, p in zip(channels, entry["images"])}
            _add_case(found, case, images, Path(entry["label"]), "train", channels, modalities, labels)
        return found
    for images_folder, label_folder, split in FOLDERS:
        folder, label_dir = root / images_folder, root / label_folder
        if not folder.is_dir():
            continue
        cases = [str(c) for c in get_identifiers_from_splitted_dataset_folder(str(folder), ending)]
        for label in sorted(label_dir.glob(f"*{ending}")) if label_dir.is_dir() else []:
            case = label.name[: -len(ending)]
            if case not in cases:
                found.problem(label, case, f"label without its image: {images_folder}/ holds no "
                                           f"{case}_0000{ending}")
        for case in cases:
            label = label_dir / f"{case}{ending}"
            if split == "test" and not label.is_file():
                label = None  # test cases may come without labels
            images = {c: folder / f"{case}_{c:04d}{ending}" for c in channels}
            _add_case(found, case, images, label, split, channels, modalities, labels)
    return found


def _add_case(found: Discovery, case: str, images: dict[int, Path], label: Path | None, split: str,
              channels: dict[int, str], modalities: dict[int, str], labels: dict[int, str]) -> None:
    missing = [c for c in channels if c not in images or not images[c].is_file()]
    if missing:
        path = images.get(missing[0])
        found.problem(path or label or case, case, f"channel {missing[0]} ({channels[missing[0]]}) image "
                                                   f"{path.name if path else '(not listed)'} is missing")
        return
    if label is not None and not label.is_file():
        found.problem(label, case, f"no label {label.parent.name}/{label.name}")
        return
    found.add_channels(case, images, label, split, channels, modalities, labels)

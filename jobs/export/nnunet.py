"""MRGen-DB → nnU-Net v2 raw dataset (2-D PNG), the input of `nnUNetv2_plan_and_preprocess`.

    DIR/Dataset<NNN>_<NAME>/dataset.json
    DIR/Dataset<NNN>_<NAME>/imagesTr/<case>_0000.png   8-bit single-channel image (round(x * 255))
    DIR/Dataset<NNN>_<NAME>/labelsTr/<case>.png        8-bit single-channel raw class ids (not a palette PNG)
    DIR/Dataset<NNN>_<NAME>/imagesTs/, labelsTs/        real slices (``real=``), same format
    DIR/Dataset<NNN>_<NAME>/cases.json                  case → {set, slice_id, dataset, volume_id, slice_index}

Labels are organ *names* mapped to consecutive ids 1..K (background 0) in the order of their smallest id in the
inputs' organ maps, so datasets whose maps number organs differently still agree. Real test cases are named
``<volume>_<slice index>`` so slices of one volume sort together and can be stacked back into a volume.
The dataset folder is written under a temporary name and published whole (``storage.publish_dir``) when complete.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from mrgen.datasets.organs import canonical_organ
from mrgen.datasets.schema import decode_image, decode_mask, decode_organ_map
from mrgen.datasets.store import load_index, row_filter_expression, select_shards, shard_uris
from mrgen.platform import storage

ROW_COLUMNS = ["slice_id", "dataset", "volume_id", "slice_index", "height", "width", "image", "mask", "organ_map",
               "has_mask"]


class ExportError(ValueError):
    pass


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 1 <= dataset_id <= 999:
        raise ExportError(f"--dataset-id must be 1..999 (nnU-Net uses three digits), got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", name):
        raise ExportError(f"--name {name!r}: use letters, digits and '-' only (nnU-Net splits on '_')")
    return f"Dataset{dataset_id:03d}_{name}"


def iter_rows(uri: str, **filters: Any) -> Iterator[dict[str, Any]]:
    """Rows shard by shard (memory stays one shard), masked slices only."""
    index = load_index(uri)
    filters = {"has_mask": True, **{k: v for k, v in filters.items() if v is not None}}
    expr = row_filter_expression(**filters)
    for shard_uri in shard_uris(uri, select_shards(index, **filters)):
        fs, path = storage.arrow_filesystem(shard_uri)
        yield from pq.read_table(path, filesystem=fs, columns=ROW_COLUMNS, filters=expr).to_pylist()


def _case_slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-")


def _label_names(rows: Sequence[dict[str, Any]], labels: Sequence[str] | None) -> dict[str, int]:
    if labels:  # in the vocabulary's spelling, as `mrgen db build` writes organ maps ("Liver" → "liver")
        return {canonical_organ(name): i + 1 for i, name in enumerate(labels)}
    first_id: dict[str, int] = {}
    for row in rows:
        for oid, name in decode_organ_map(row["organ_map"]).items():
            first_id[name] = min(oid, first_id.get(name, oid))
    return {name: i + 1 for i, name in enumerate(sorted(first_id, key=lambda n: (first_id[n], n)))}


def _remap(row: dict[str, Any], label_ids: dict[str, int]) -> np.ndarray:
    h, w = row["height"], row["width"]
    mask = decode_mask(row["mask"], h, w)
    organ_map = decode_organ_map(row["organ_map"])
    lut = np.zeros(256, np.uint8)
    for oid in np.unique(mask):
        if oid == 0:
            continue
        if int(oid) not in organ_map:
            raise ExportError(f"row {row['slice_id']}: mask id {int(oid)} is not in its organ_map {organ_map}")
        lut[oid] = label_ids.get(canonical_organ(organ_map[int(oid)]), 0)
    return lut[mask]


def encode_case(row: dict[str, Any], label_ids: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """A masked row as the exported case holds it: 8-bit image ``round(x * 255)`` and the dataset's label ids."""
    image = np.round(np.clip(decode_image(row["image"], row["height"], row["width"]), 0, 1) * 255).astype(np.uint8)
    return image, _remap(row, label_ids)


def _write_case(folder: Path, images_dir: str, labels_dir: str, case: str, row: dict[str, Any],
                label_ids: dict[str, int], size: tuple[int, int] | None) -> tuple[int, int]:
    h, w = row["height"], row["width"]
    if size is not None and (h, w) != size:
        raise ExportError(f"row {row['slice_id']}: {h}x{w} slice, but the dataset's slices are {size[0]}x{size[1]} "
                          "(nnU-Net's 2-D PNG datasets need one pixel size)")
    image, label = encode_case(row, label_ids)
    Image.fromarray(image, mode="L").save(folder / images_dir / f"{case}_0000.png")
    Image.fromarray(label, mode="L").save(folder / labels_dir / f"{case}.png")
    return h, w


def export_nnunet(out_dir: str, dataset_id: int, name: str, synthetic: str | None = None, real: str | None = None,
                  real_split: str = "test", real_datasets: Sequence[str] | None = None,
                  real_modalities: Sequence[str] | None = None, labels: Sequence[str] | None = None,
                  channel_name: str = "MRI", synthetic_filters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``out_dir/Dataset<NNN>_<name>``; returns a summary (folder, cases, labels).

    ``synthetic_filters`` (dataset / modality / split / region → value or list) select the training rows.
    """
    folder_name = dataset_folder_name(dataset_id, name)
    if synthetic is None and real is None:
        raise ExportError("nothing to export: give synthetic= (training cases) and/or real= (test cases)")
    train_rows = list(iter_rows(synthetic, **(synthetic_filters or {}))) if synthetic else []
    test_rows = list(iter_rows(real, split=real_split, dataset=list(real_datasets) if real_datasets else None,
                               modality=list(real_modalities) if real_modalities else None)) if real else []
    if synthetic and not train_rows:
        raise ExportError(f"--synthetic {synthetic}: no slices with masks to export")
    if real and not test_rows:
        raise ExportError(f"--real {real}: no masked slices in split {real_split!r}")
    label_ids = _label_names(train_rows + test_rows, labels)
    if not label_ids:
        raise ExportError("no organ labels found in the organ maps")

    final = storage.join(out_dir, folder_name)
    cases: dict[str, dict[str, Any]] = {}
    with storage.staging_dir(final) as tmp:
        for sub in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if test_rows else ()):
            (tmp / sub).mkdir(parents=True)
        size = None
        for i, row in enumerate(sorted(train_rows, key=lambda r: r["slice_id"])):
            case = f"syn-{i:06d}"
            size = _write_case(tmp, "imagesTr", "labelsTr", case, row, label_ids, size)
            cases[case] = {"set": "train", "slice_id": row["slice_id"], "dataset": row["dataset"],
                           "volume_id": row["volume_id"], "slice_index": row["slice_index"]}
        for row in sorted(test_rows, key=lambda r: (r["dataset"], r["volume_id"], r["slice_index"])):
            case = f"{_case_slug(row['dataset'] + '-' + row['volume_id'])}_{row['slice_index']:04d}"
            if case in cases:
                raise ExportError(f"real slices {cases[case]['slice_id']} and {row['slice_id']} map to one case {case}")
            size = _write_case(tmp, "imagesTs", "labelsTs", case, row, label_ids, size)
            cases[case] = {"set": "test", "slice_id": row["slice_id"], "dataset": row["dataset"],
                           "volume_id": row["volume_id"], "slice_index": row["slice_index"]}
        dataset_json = {"channel_names": {"0": channel_name}, "labels": {"background": 0, **label_ids},
                        "numTraining": len(train_rows), "file_ending": ".png",
                        "name": name, "description": "exported from MRGen-DB by `mrgen export nnunet`",
                        "mrgen": {"synthetic": synthetic, "real": real, "real_split": real_split}}
        (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
        (tmp / "cases.json").write_text(json.dumps(cases, indent=1, sort_keys=True))
        storage.publish_dir(tmp, final, marker="dataset.json")
    return {"folder": final, "train_cases": len(train_rows), "test_cases": len(test_rows),
            "labels": {"background": 0, **label_ids}}


def volume_groups(dataset_folder: str | Path) -> dict[str, list[tuple[int, str]]]:
    """Test cases grouped by volume, sorted by slice index: ``{"<dataset>/<volume>": [(slice_index, case), ...]}``."""
    cases = json.loads((Path(dataset_folder) / "cases.json").read_text())
    groups: dict[str, list[tuple[int, str]]] = {}
    for case, info in cases.items():
        if info["set"] == "test":
            groups.setdefault(f"{info['dataset']}/{info['volume_id']}", []).append((info["slice_index"], case))
    return {k: sorted(v) for k, v in sorted(groups.items())}

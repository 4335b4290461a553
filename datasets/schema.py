"""MRGen-DB schema, version 1: one Parquet row per 2-D axial slice.

Images are stored losslessly as the preprocessed float32 array (values in [0, 1], C-order, little-endian,
``height`` x ``width``); masks as uint8 organ ids of the same size, decoded with ``organ_map``. Arrays are
stored as raw bytes (Parquet's zstd compresses them) so that decoding is a zero-copy ``np.frombuffer``.

Orientation: slices are axial, indexed inferior → superior along the volume's slice axis after
reorientation to RAS (NIfTI/DICOM); rows run anterior → posterior, columns patient right → left
(radiological display: the patient's right on the image's left).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1

REGIONS = (
    "upper thoracic region",
    "middle thoracic region",
    "lower thoracic region",
    "upper abdominal region",
    "lower abdominal region",
    "pelvic region",
)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    description: str
    nullable: bool = False


SLICE_COLUMNS: tuple[Column, ...] = (
    Column("slice_id", pa.string(), "unique key '<dataset>/<volume_id>/<slice_index:04d>'"),
    Column("dataset", pa.string(), "source dataset name, e.g. 'chaos-mri'"),
    Column("volume_id", pa.string(), "volume identifier, unique within the dataset"),
    Column("slice_index", pa.int32(), "axial position in the volume, inferior → superior, from 0"),
    Column("split", pa.string(), "one of train / val / test"),
    Column("modality", pa.string(), "free-text modality label, e.g. 'T2 SPIR Abdomen MRI'"),
    Column("modality_attributes", pa.string(), "fat / muscle / water signal description of the modality"),
    Column("region", pa.string(), "one of the six regions in REGIONS, or null when unknown", nullable=True),
    Column("organs", pa.list_(pa.string()), "names of the organs present in this slice's mask (empty without mask)"),
    Column("prompt", pa.string(), "templated prompt '<modality>; <attributes>; <region>; <organs>'"),
    Column("height", pa.int32(), "rows of image and mask"),
    Column("width", pa.int32(), "columns of image and mask"),
    Column("image", pa.binary(), "float32 [0,1] pixels, height x width, raw little-endian bytes"),
    Column("has_mask", pa.bool_(), "whether `mask` holds an organ annotation"),
    Column("mask", pa.binary(), "uint8 organ ids, height x width, raw bytes; null without annotation", nullable=True),
    Column("organ_map", pa.string(), "JSON object organ id (string) → organ name, e.g. {\"1\": \"liver\"}"),
    Column("pixel_spacing", pa.list_(pa.float32()), "row and column spacing in mm after resizing"),
    Column("source_file", pa.string(), "image file or folder the slice came from"),
    Column("source_sha256", pa.string(), "checksum of the source image file(s)"),
)

COLUMN_NAMES = tuple(c.name for c in SLICE_COLUMNS)

# Extra columns of DBs built from source volumes (`mrgen db build`, written with ShardWriter(extra=...)); DBs
# without them (the phantom, earlier builds) stay valid.
SOURCE_COLUMNS: tuple[Column, ...] = (
    Column("source_organ_map", pa.string(), "the dataset's own organ names: JSON organ id (string) → name as the "
                                            "source labels it; organ_map holds them in the organ vocabulary",
           nullable=True),
    Column("source_spacing", pa.list_(pa.float32()), "row, column and slice spacing in mm of the source volume, "
                                                     "before in-plane resampling", nullable=True),
)
# Columns summarised per shard in the index; readers prune shards on them.
INDEX_COLUMNS = ("dataset", "modality", "region", "has_mask", "split")


def arrow_schema(extra: tuple[Column, ...] = ()) -> pa.Schema:
    fields = [pa.field(c.name, c.type, nullable=c.nullable, metadata={"description": c.description})
              for c in (*SLICE_COLUMNS, *extra)]
    return pa.schema(fields, metadata={"mrgen.schema_version": str(SCHEMA_VERSION)})


class SchemaError(ValueError):
    """A table or row does not follow the MRGen-DB schema; the message names the column and row."""


def validate_slice_table(table: pa.Table, where: str = "table") -> None:
    """Raise SchemaError unless ``table`` has every slice column with the right type and consistent arrays."""
    for col in SLICE_COLUMNS:
        if col.name not in table.column_names:
            raise SchemaError(f"{where}: missing column '{col.name}' ({col.description})")
        actual = table.schema.field(col.name).type
        if actual != col.type and not (pa.types.is_large_binary(actual) and col.type == pa.binary()):
            raise SchemaError(f"{where}: column '{col.name}' has type {actual}, expected {col.type}")
        if not col.nullable and table.column(col.name).null_count:
            raise SchemaError(f"{where}: column '{col.name}' has nulls")
    rows = table.select(["slice_id", "height", "width", "image", "has_mask", "mask", "split", "region"]).to_pylist()
    for i, row in enumerate(rows):
        pixels = row["height"] * row["width"]
        if len(row["image"]) != 4 * pixels:
            raise SchemaError(f"{where}: row {i} ({row['slice_id']}): image has {len(row['image'])} bytes, expected "
                              f"{4 * pixels}")
        if row["has_mask"] != (row["mask"] is not None):
            raise SchemaError(f"{where}: row {i} ({row['slice_id']}): has_mask={row['has_mask']} but mask is "
                              f"{'set' if row['mask'] else 'null'}")
        if row["mask"] is not None and len(row["mask"]) != pixels:
            raise SchemaError(f"{where}: row {i} ({row['slice_id']}): mask has {len(row['mask'])} bytes, expected "
                              f"{pixels}")
        if row["split"] not in SPLITS:
            raise SchemaError(f"{where}: row {i} ({row['slice_id']}): split {row['split']!r} not in {SPLITS}")
        if row["region"] is not None and row["region"] not in REGIONS:
            raise SchemaError(f"{where}: row {i} ({row['slice_id']}): region {row['region']!r} not in {REGIONS}")


def slice_id(dataset: str, volume_id: str, index: int) -> str:
    return f"{dataset}/{volume_id}/{index:04d}"


def encode_image(image: np.ndarray) -> bytes:
    return np.ascontiguousarray(image, dtype="<f4").tobytes()


def encode_mask(mask: np.ndarray) -> bytes:
    return np.ascontiguousarray(mask, dtype=np.uint8).tobytes()


def decode_image(data: bytes, height: int, width: int) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4").reshape(height, width)


def decode_mask(data: bytes | None, height: int, width: int) -> np.ndarray | None:
    return None if data is None else np.frombuffer(data, dtype=np.uint8).reshape(height, width)


def decode_organ_map(text: str) -> dict[int, str]:
    return {int(k): v for k, v in json.loads(text).items()}


def encode_organ_map(organ_map: dict[int, str]) -> str:
    return json.dumps({str(k): v for k, v in sorted(organ_map.items())}, sort_keys=False)


def decode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Turn a Ray Data / numpy batch's ``image`` and ``mask`` bytes into float32 [B,H,W] / uint8 [B,H,W] arrays.

    All rows of a batch must share one size (the DB is built at one resolution). Rows without a mask get an
    all-zero mask; ``has_mask`` tells them apart.
    """
    out = dict(batch)
    h, w = int(batch["height"][0]), int(batch["width"][0])
    if (np.asarray(batch["height"]) != h).any() or (np.asarray(batch["width"]) != w).any():
        raise SchemaError(f"batch mixes slice sizes {sorted(set(zip(batch['height'], batch['width'])))}")
    out["image"] = np.stack([decode_image(b, h, w) for b in batch["image"]])
    out["mask"] = np.stack([decode_mask(m, h, w) if m is not None else np.zeros((h, w), np.uint8)
                            for m in batch["mask"]])
    return out

"""`mrgen db build`: a manifest of source volumes or a dataset folder → MRGen-DB shards, a Ray Data job over volumes.

The manifest is ours (``manifest.py``) or one of the official MRGen release's data lists (``release_list.py``,
recognised by its ``image_path`` field): each of its rows is a slice, ingested as a one-slice volume with the
release's own preprocessing. A folder is a public collection in its native layout (``layouts/``: nnU-Net v2 raw,
Medical Segmentation Decathlon, CHAOS MR, AMOS), whose cases become the same rows a manifest gives.

Every row's organ names are put in the organ vocabulary (``datasets/organs.py``); the dataset's own names and the
source volume's spacing are kept in the extra columns ``source_organ_map`` and ``source_spacing``.

Each volume is read and preprocessed in its own Ray task (``ray.data.from_items(rows).map(...)``), which
returns the volume's slice table (Arrow IPC bytes) or an error record. The driver streams the results, writes
shards holding whole volumes through :class:`ShardWriter` (a shard closes at a volume boundary once it holds
``shard_rows`` slices), and commits the index last, merged with the shards already there.

Resuming: volumes recorded in the footers of shards already under the URI (``existing_shards``) are skipped, so
a rerun after a crash — even one that died before writing the index — only does the missing volumes.

Bad input is reported, not fatal: each skipped volume or manifest row becomes an entry (file, row or case, reason)
of ``OUT/build_report.json`` (written atomically), which also lists the volumes built and the layout's warnings;
with ``strict`` the first one raises :class:`BuildError`, after the shards already finished are kept and indexed.

Source paths are read by the Ray workers, so on a multi-node cluster they must be on a filesystem every node
sees; the output URI is written only by the driver.
"""
from __future__ import annotations

import io
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray.data
import torch

from mrgen.datasets.config import DBConfig
from mrgen.datasets.ingest import layouts
from mrgen.datasets.ingest.cases import VolumeError, read_files
from mrgen.datasets.ingest.manifest import ManifestRow, read_manifest
from mrgen.datasets.ingest.preprocess import PreprocessError, preprocess_volume
from mrgen.datasets.ingest.readers import ReadError, source_sha256
from mrgen.datasets.ingest.release_list import (ReleaseRow, is_release_list, prepare_release_slice, read_grey,
                                                read_release_list)
from mrgen.datasets.modality import UnknownModalityError, attributes_for
from mrgen.datasets.organs import canonical_organ_map
from mrgen.datasets.prompt import build_prompt
from mrgen.datasets.schema import SOURCE_COLUMNS, arrow_schema, encode_image, encode_mask, encode_organ_map, slice_id
from mrgen.datasets.store import ShardWriter, existing_shards, try_load_index
from mrgen.platform import storage
from mrgen.platform.cluster import init_ray
from mrgen.platform.progress import Progress

REPORT_FILE = "build_report.json"


@dataclass(frozen=True)
class Skip:
    file: str
    row: int
    reason: str
    volume: str | None = None

    def __str__(self) -> str:
        where = f"row {self.row}: " if self.row else f"volume {self.volume}: " if self.volume else ""
        return f"{self.file}: {where}{self.reason}"


@dataclass
class BuildReport:
    manifest: str  # the manifest, or the dataset folder
    out: str
    layout: str | None = None  # the dataset folder's layout
    warnings: list[str] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)  # built by this run
    built_volumes: int = 0
    rows: int = 0  # slices written by this run
    already_present: int = 0  # volumes found in existing shards and not rebuilt
    shards_written: int = 0
    seconds: float = 0.0

    @property
    def slices_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["slices_per_second"] = round(self.slices_per_second, 2)
        return data

    def summary(self) -> str:
        lines = [f"built {self.built_volumes} volumes ({self.rows} slices, {self.shards_written} shards) into "
                 f"{self.out} "
                 f"in {self.seconds:.1f}s; {self.already_present} already present; {len(self.skipped)} skipped"]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  skipped: {s}" for s in self.skipped]
        return "\n".join(lines)


class BuildError(RuntimeError):
    """A strict build met bad input (the message names file, row and reason), or the target DB does not fit."""

    def __init__(self, message: str, skip: Skip | None = None):
        super().__init__(message)
        self.skip = skip


# ---------------------------------------------------------------- one volume (runs in a Ray task)

def ingest_volume(row: ManifestRow, attributes: str, config: DBConfig) -> pa.Table:
    """The slice table of one manifest row; raises :class:`VolumeError` naming the file at fault."""
    image, mask = (layouts.CASE_READERS[row.reader] if row.reader else read_files)(row)
    try:
        prepared = preprocess_volume(image.array, mask, image.spacing, config.resolution,
                                     tuple(config.clip_percentiles))
    except PreprocessError as exc:
        raise VolumeError(row.image, str(exc)) from None
    return _slice_table(row, attributes, prepared, source_sha256(row.image))


def ingest_release_row(row: ReleaseRow, attributes: str, config: DBConfig) -> pa.Table:
    """The one-slice table of a release data-list row; raises :class:`VolumeError` naming the file at fault."""
    try:
        image = read_grey(row.image)
    except ReadError as exc:
        raise VolumeError(row.image, str(exc)) from None
    masks = []
    for path in row.masks:
        try:
            mask = read_grey(path) if path else None
        except ReadError as exc:
            raise VolumeError(path, str(exc)) from None
        if mask is not None and mask.shape != image.shape:
            raise VolumeError(path, f"mask is {mask.shape[1]}x{mask.shape[0]} but its image_path is "
                                    f"{image.shape[1]}x{image.shape[0]}")
        masks.append(mask)
    prepared = prepare_release_slice(image, masks, config.resolution)
    return _slice_table(row, attributes, prepared, source_sha256(row.image))


def _slice_table(row: ManifestRow | ReleaseRow, attributes: str, prepared, sha256: str) -> pa.Table:
    z, height, width = prepared.images.shape
    region = getattr(row, "region", None)
    canonical = canonical_organ_map(row.labels)
    organ_map = encode_organ_map(canonical)
    organs = [prepared.organs(i, canonical) for i in range(z)]
    columns = {
        "slice_id": [slice_id(row.dataset, row.volume_id, i) for i in range(z)],
        "dataset": [row.dataset] * z,
        "volume_id": [row.volume_id] * z,
        "slice_index": list(range(z)),
        "split": [row.split] * z,
        "modality": [row.modality] * z,
        "modality_attributes": [attributes] * z,
        "region": [region] * z,
        "organs": organs,
        "prompt": [build_prompt(row.modality, attributes, region, o) for o in organs],
        "height": [height] * z,
        "width": [width] * z,
        "image": [encode_image(prepared.images[i]) for i in range(z)],
        "has_mask": [prepared.masks is not None] * z,
        "mask": [encode_mask(prepared.masks[i]) for i in range(z)] if prepared.masks is not None else [None] * z,
        "organ_map": [organ_map] * z,
        "pixel_spacing": [list(prepared.pixel_spacing)] * z,
        "source_file": [row.image] * z,
        "source_sha256": [sha256] * z,
        "source_organ_map": [encode_organ_map(row.labels)] * z,
        "source_spacing": [list(prepared.source_spacing) if prepared.source_spacing else None] * z,
    }
    return pa.table(columns, schema=arrow_schema(SOURCE_COLUMNS))


def _ingest_item(item: dict[str, Any]) -> dict[str, Any]:
    """Ray Data map function: a manifest row (JSON) → its slice table as Arrow IPC bytes, or an error."""
    torch.set_num_threads(1)
    release = item.get("kind") == "release"
    row = (ReleaseRow if release else ManifestRow).from_json(json.loads(item["row"]))
    config = DBConfig.model_validate_json(item["config"])
    out = {"key": row.key, "row": row.row, "file": row.image, "error": "", "table": b"", "slices": 0}
    try:
        table = (ingest_release_row if release else ingest_volume)(row, item["attributes"], config)
    except VolumeError as exc:
        return {**out, "file": exc.file, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - any other failure is reported against the volume, not the job
        return {**out, "error": f"{type(exc).__name__}: {exc}"}
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return {**out, "table": sink.getvalue(), "slices": table.num_rows}


# ---------------------------------------------------------------- the job

class _ShardBuffer:
    """Collects whole volumes and writes a shard once ``shard_rows`` slices are buffered."""

    def __init__(self, writer: ShardWriter, shard_rows: int, report: BuildReport):
        self.writer, self.shard_rows, self.report = writer, shard_rows, report
        self.tables: list[pa.Table] = []
        self.volumes: list[str] = []

    def add(self, volume: str, table: pa.Table) -> None:
        self.tables.append(table)
        self.volumes.append(volume)
        if sum(t.num_rows for t in self.tables) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self.tables:
            return
        table = pa.concat_tables(self.tables)
        self.writer.write(table, list(self.volumes))
        self.report.volumes.extend(self.volumes)
        self.report.built_volumes += len(self.volumes)
        self.report.rows += table.num_rows
        self.report.shards_written += 1
        self.tables, self.volumes = [], []


def build_db(manifest_path: str | Path, out_uri: str, config: DBConfig, layout: str | None = None,
             split_by: str | None = None, modality: str | None = None) -> BuildReport:
    """Build (or resume building) the MRGen-DB at ``out_uri`` from a manifest or a dataset folder (see the module
    docstring). For a folder: ``layout`` forces one (default: recognised), ``split_by`` ("SEED:FRACTION") puts a
    seeded share of its train cases in test, ``modality`` labels the volumes whose sequence the layout does not
    name in the modality table's terms."""
    started = time.monotonic()
    out_uri = storage.absolute(out_uri)  # volumes are read and written by Ray tasks in other directories
    report = BuildReport(manifest=str(manifest_path), out=out_uri)
    folder = Path(manifest_path).is_dir()
    release = not folder and is_release_list(manifest_path)
    if folder:
        try:
            found = layouts.discover(manifest_path, layout, split_by, modality, config.modality_attributes)
        except layouts.LayoutError as exc:
            raise BuildError(str(exc)) from None
        rows, problems, report.layout, report.warnings = found.rows, found.problems, found.layout, found.warnings
    elif layout or split_by or modality:
        raise BuildError(f"{manifest_path}: --layout, --split-by and --modality apply to a dataset folder, not a "
                         "manifest")
    else:
        rows, problems = read_release_list(manifest_path) if release else read_manifest(manifest_path)
    writer, done = _open_writer(out_uri, config)
    buffer = _ShardBuffer(writer, config.shard_rows, report)

    def skip(entry: Skip) -> None:
        report.skipped.append(entry)
        if config.strict:
            _finish(buffer, report, started)
            raise BuildError(f"bad input (strict): {entry}", entry)

    for problem in problems:
        skip(Skip(problem.file, problem.row, problem.reason))
    items = []
    for row in rows:
        if row.key in done:
            report.already_present += 1
            continue
        try:
            attributes = getattr(row, "attributes", None) or attributes_for(row.modality, config.modality_attributes)
        except UnknownModalityError as exc:
            skip(Skip(row.image if folder else str(manifest_path), row.row, f"field 'modality': {exc}", row.key))
            continue
        items.append({"row": json.dumps(row.to_json()), "attributes": attributes, "config": config.model_dump_json(),
                      "kind": "release" if release else "volume"})

    if items:
        init_ray()
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        dataset = dataset.map(_ingest_item, num_cpus=config.cpus_per_task)
        progress = Progress("db build", total=len(items))
        for result in dataset.iter_rows():
            if result["error"]:
                progress.update(1, slices=report.rows, skipped=len(report.skipped) + 1)
                skip(Skip(result["file"], int(result["row"]), result["error"], result["key"]))
                continue
            buffer.add(result["key"], pa.ipc.open_stream(result["table"]).read_all())
            progress.update(1, slices=report.rows + sum(t.num_rows for t in buffer.tables), skipped=len(report.skipped))
    _finish(buffer, report, started)
    return report


def _open_writer(out_uri: str, config: DBConfig) -> tuple[ShardWriter, set[str]]:
    index = try_load_index(out_uri)
    version = index.version if index else 1
    if index and index.meta.get("resolution") not in (None, config.resolution):
        raise BuildError(f"{out_uri} holds slices at resolution {index.meta['resolution']}; this build uses "
                         f"{config.resolution} (set db.resolution={index.meta['resolution']} or build elsewhere)")
    present = {s.file: s for s in (index.shards if index else [])}
    present.update({s.file: s for s in existing_shards(out_uri, version)})
    meta = dict(index.meta) if index else {}
    meta.update(resolution=config.resolution, built_by="mrgen db build")
    writer = ShardWriter(out_uri, version=version, extra=SOURCE_COLUMNS, keep=list(present.values()), meta=meta)
    done = {volume for shard in present.values() for volume in shard.volumes}
    return writer, done


def _finish(buffer: _ShardBuffer, report: BuildReport, started: float) -> None:
    buffer.flush()
    if buffer.writer.shards:
        buffer.writer.commit()
    report.seconds = time.monotonic() - started
    storage.write_text(storage.join(report.out, REPORT_FILE), json.dumps(report.to_json(), indent=1))
    print(report.summary(), file=sys.stderr, flush=True)

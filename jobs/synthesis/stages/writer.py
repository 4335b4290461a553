"""Writer stages and the output layout of a synthesis run.

    OUT/v1/part-<key>.parquet     kept candidates as MRGen-DB rows (schema + SYNTH_COLUMNS): one shard per flush
    OUT/audit/part-<key>.parquet  every candidate of the same flush's masks with its scores, fate and cost
                                  (AUDIT_SCHEMA); skipped masks get one row with their reason; a candidate stopped
                                  early (adaptive early rejection) gets one with fate stopped_early and no scores
    OUT/index.json                written by the driver at the end, from the audit parts: it lists the shards

Two stages write. ``records`` (tasks, a few masks a call) turns each mask's candidates into its kept rows and its
audit records, packed (Arrow IPC) into one row per mask, so that only what will be written waits for a flush.
Ray Data's strict streaming repartition gathers ``masks_per_flush`` of those rows into one block (held in the
object store, not the driver; the stream's tail is the last, smaller block), and ``writer`` publishes each block:
its shard first, its audit part last, both named by ``<key>``, a hash of the block's masks. An audit part is the
record that its masks are finished, so a rerun skips them (reading the parts' mask_key column); a task retried
after a crash rewrites the same two objects instead of adding copies; a crash loses only the blocks not yet
published. A shard without its audit part is an orphan: never listed in the index, removed by the commit.
"""
from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from mrgen.datasets.schema import Column, arrow_schema, encode_image
from mrgen.datasets.store import ShardInfo, ShardWriter, is_part_name, part_name, volume_key
from mrgen.jobs.synthesis.keys import group_key, modality_slug
from mrgen.jobs.synthesis.stages.base import StageUDF, column, optional_text
from mrgen.jobs.synthesis.stages.codec import decode_candidates, scores_from_json
from mrgen.models.selection import KEPT_FATES, STOPPED_EARLY
from mrgen.platform import storage

SYNTH_COLUMNS: tuple[Column, ...] = (
    Column("source_slice_id", pa.string(), "slice_id of the source mask's row"),
    Column("mask_key", pa.string(), "hash of source slice id and target modality: the unit of work"),
    Column("candidate_index", pa.int32(), "index of this candidate among the mask's candidates"),
    Column("seed", pa.int64(), "sampling seed of this candidate (reproduces it with the same bundle)"),
    Column("mean_iou", pa.float32(), "mean over organs of SAM2-vs-condition IoU; null without filter", nullable=True),
    Column("mean_conf", pa.float32(), "mean over organs of SAM2 confidence; null without filter", nullable=True),
    Column("organ_scores", pa.string(), "JSON list of {organ, iou, conf, present}"),
    Column("fate", pa.string(), "kept / kept_relaxed / kept_unfiltered"),
    Column("relaxed", pa.bool_(), "kept under thresholds relaxed by 0.10"),
    Column("bundle_hash", pa.string(), "hash of the model bundle that generated it"),
    Column("filter_model", pa.string(), "the filter model id ('none' without filter)"),
    Column("scores_meaningful", pa.bool_(), "false when the filter was an untrained SAM2 (or no filter)"),
    Column("selection_rule", pa.string(), "paper or official"),
)

AUDIT_SCHEMA = pa.schema([
    ("mask_key", pa.string()), ("source_slice_id", pa.string()), ("modality", pa.string()),
    ("candidate_index", pa.int32()), ("seed", pa.int64()), ("mean_iou", pa.float32()), ("mean_conf", pa.float32()),
    ("organ_scores", pa.string()), ("fate", pa.string()), ("relaxed", pa.bool_()), ("skip_reason", pa.string()),
    ("prompt", pa.string()), ("shard", pa.string()), ("bundle_hash", pa.string()), ("filter_model", pa.string()),
    ("scores_meaningful", pa.bool_()), ("selection_rule", pa.string()),
    # denoiser rows (batch rows through controller and UNet, summed over steps) the candidate ran, stopped ones
    # included; 0 for a skipped mask; null in audits written before it was counted
    ("denoiser_rows", pa.int64()),
    # mean IoU of the candidate's x̂₀ at the early-rejection step; null when it was not probed
    ("early_mean_iou", pa.float32()),
])
AUDIT_DIR = "audit"
SUMMARY_COLUMNS = ("mask_key", "source_slice_id", "modality", "skip_reason", "n_candidates", "n_kept", "relaxed",
                   "n_strict", "n_stopped", "denoiser_rows", "shard", "preview")
# Optional batch columns the records stage reads (JSON lists, by candidate index): denoiser_rows (generator and
# adaptive stages), early_mean_iou and stopped_early (adaptive stage; the latter lists the indices stopped early).
SLICE_SCHEMA = arrow_schema(SYNTH_COLUMNS)
PACKED = {"slice_rows": "the mask's kept rows, Arrow IPC of SLICE_SCHEMA (empty: none kept)",
          "audit_rows": "the mask's audit records, Arrow IPC of AUDIT_SCHEMA"}
# footer metadata of an audit part: its shard's file ('' when nothing was kept) and ShardInfo (JSON), so the commit
# builds the index from the parts' footers without opening the shards
PART_SHARD, PART_SHARD_INFO = b"mrgen.shard", b"mrgen.shard_info"


def _nan_to_none(x: float) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def _cost_lists(batch: dict[str, np.ndarray], i: int, n: int) -> tuple[list, list, set[int]]:
    """Row ``i``'s denoiser rows and x̂₀ mean IoU per candidate (None where no stage counted them) and the indices
    stopped early."""
    def listed(name: str, default: str) -> list:
        return json.loads(str(batch[name][i])) if name in batch else json.loads(default)

    spent = listed("denoiser_rows", "[]") or [None] * n
    early = listed("early_mean_iou", "[]") or [None] * n
    return spent, early, set(listed("stopped_early", "[]"))


def _pack(rows: list[dict[str, Any]], schema: pa.Schema) -> bytes:
    if not rows:
        return b""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as stream:
        stream.write_table(pa.Table.from_pylist(rows, schema=schema))
    return sink.getvalue().to_pybytes()


def _unpack(blobs: np.ndarray, schema: pa.Schema) -> pa.Table:
    tables = [pa.ipc.open_stream(bytes(b)).read_all() for b in blobs if len(b)]
    return pa.concat_tables(tables) if tables else schema.empty_table()


class RecordsUDF(StageUDF):
    """Each mask's kept rows (MRGen-DB rows) and audit records, packed; its summary beside them. The candidates'
    images go no further: a flush waits on the packed records only."""

    NAME = "records"
    REQUIRED = {"mask_key": "unit of work", "candidates": "float32 candidate images (raw bytes)",
                "n_candidates": "finished candidates in the row (its images)",
                "seeds": "JSON list of seeds of every candidate tried (finished or stopped early)",
                "fates": "JSON index → fate",
                "relaxed": "kept under relaxed thresholds", "skip_reason": "non-empty: skipped",
                "source_slice_id": "source slice", "modality": "target modality"}
    ONE_TO_ONE = False  # one row per mask, but only the summary and the packed records go on

    def __init__(self, bundle_hash: str, filter_model: str, scores_meaningful: bool, rule: str,
                 dataset_suffix: str = "-mrgen", preview_keys: list[str] | tuple[str, ...] = ()):
        self.bundle_hash, self.filter_model = bundle_hash, filter_model
        self.scores_meaningful, self.rule, self.suffix = scores_meaningful, rule, dataset_suffix
        self.preview_keys = set(preview_keys)

    def process(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out: dict[str, list] = {c: [] for c in (*SUMMARY_COLUMNS, *PACKED) if c != "shard"}
        for i in range(len(batch["mask_key"])):
            rows, audit_rows, preview = self._mask_rows(batch, i)
            candidates = [r for r in audit_rows if r["candidate_index"] >= 0]
            for name in ("mask_key", "source_slice_id", "modality", "skip_reason"):
                out[name].append(str(batch[name][i]))
            out["n_candidates"].append(int(batch["n_candidates"][i]))
            out["n_kept"].append(len(rows))
            out["relaxed"].append(bool(batch["relaxed"][i]) and bool(rows))
            out["n_strict"].append(int(batch["n_strict"][i]) if "n_strict" in batch else 0)
            out["n_stopped"].append(sum(r["fate"] == STOPPED_EARLY for r in candidates))
            out["denoiser_rows"].append(sum(r["denoiser_rows"] or 0 for r in candidates))
            out["preview"].append(preview)
            out["slice_rows"].append(_pack(rows, SLICE_SCHEMA))
            out["audit_rows"].append(_pack(audit_rows, AUDIT_SCHEMA))
        return {c: column(v) for c, v in out.items()}

    def _mask_rows(self, batch: dict[str, np.ndarray], i: int) -> tuple[list[dict], list[dict], bytes]:
        key, sid, modality = str(batch["mask_key"][i]), str(batch["source_slice_id"][i]), str(batch["modality"][i])
        common_audit = {"mask_key": key, "source_slice_id": sid, "modality": modality,
                        "prompt": str(batch["prompt"][i]),
                        "bundle_hash": self.bundle_hash, "filter_model": self.filter_model,
                        "scores_meaningful": self.scores_meaningful, "selection_rule": self.rule}
        reason = str(batch["skip_reason"][i])
        if reason:
            return [], [{**common_audit, "candidate_index": -1, "seed": None, "mean_iou": None, "mean_conf": None,
                         "organ_scores": "[]", "fate": "skipped", "relaxed": False, "skip_reason": reason,
                         "denoiser_rows": 0, "early_mean_iou": None}], b""
        n, h, w = int(batch["n_candidates"][i]), int(batch["height"][i]), int(batch["width"][i])
        images = decode_candidates(batch["candidates"][i], n, h, w)
        seeds = json.loads(str(batch["seeds"][i]))
        spent, early, stopped = _cost_lists(batch, i, len(seeds))
        finished = [c for c in range(len(seeds)) if c not in stopped]  # images[p] is candidate finished[p]
        if len(finished) != n:
            raise RuntimeError(f"stage '{self.NAME}': mask {key} has {n} candidate images for {len(finished)} "
                               f"finished candidates ({len(seeds)} seeds, {len(stopped)} stopped early)")
        fates = {int(k): v for k, v in json.loads(str(batch["fates"][i])).items()}
        scores = {c.index: c for c in scores_from_json(str(batch["scores"][i]))} if "scores" in batch else {}
        rule = self.rule
        relaxed = bool(batch["relaxed"][i])
        source_dataset = str(batch["source_dataset"][i])
        volume = f"{batch['volume_id'][i]}-{modality_slug(modality)}"
        dataset = f"{source_dataset}{self.suffix}"
        rows, audit_rows = [], []
        mean_iou, mean_conf = np.full(n, np.nan), np.full(n, np.nan)
        position = {c: p for p, c in enumerate(finished)}
        for c in range(len(seeds)):
            cost = {"denoiser_rows": spent[c], "early_mean_iou": early[c]}
            if c in stopped:
                audit_rows.append({**common_audit, "candidate_index": c, "seed": int(seeds[c]), "mean_iou": None,
                                   "mean_conf": None, "organ_scores": "[]", "fate": STOPPED_EARLY, "relaxed": False,
                                   "skip_reason": "", **cost})
                continue
            p = position[c]
            sc = scores.get(c)
            organ_json = json.dumps([o.__dict__ for o in sc.organs]) if sc else "[]"
            mi = sc.mean_iou(rule) if sc else np.nan
            mc = sc.mean_conf(rule) if sc else np.nan
            mean_iou[p], mean_conf[p] = mi, mc
            fate = fates.get(c, "rejected")
            audit_rows.append({**common_audit, "candidate_index": c, "seed": int(seeds[c]),
                               "mean_iou": _nan_to_none(mi),
                               "mean_conf": _nan_to_none(mc), "organ_scores": organ_json, "fate": fate,
                               "relaxed": relaxed and fate == "kept_relaxed", "skip_reason": "", **cost})
            if fate not in KEPT_FATES:
                continue
            slice_index = int(batch["slice_index"][i])
            rows.append({
                "slice_id": f"{dataset}/{volume}/{slice_index:04d}-c{c:02d}", "dataset": dataset, "volume_id": volume,
                "slice_index": slice_index, "split": "train", "modality": modality,
                "modality_attributes": str(batch["modality_attributes"][i]),
                "region": optional_text(batch["region"][i]),
                "organs": json.loads(str(batch["organs"][i])), "prompt": str(batch["prompt"][i]), "height": h,
                "width": w, "image": encode_image(images[p]), "has_mask": True, "mask": bytes(batch["mask"][i]),
                "organ_map": str(batch["organ_map"][i]),
                "pixel_spacing": json.loads(str(batch["pixel_spacing"][i])),
                "source_file": str(batch["source_file"][i]), "source_sha256": str(batch["source_sha256"][i]),
                "source_slice_id": sid, "mask_key": key, "candidate_index": c, "seed": int(seeds[c]),
                "mean_iou": _nan_to_none(mi), "mean_conf": _nan_to_none(mc), "organ_scores": organ_json, "fate": fate,
                "relaxed": fate == "kept_relaxed", "bundle_hash": self.bundle_hash, "filter_model": self.filter_model,
                "scores_meaningful": self.scores_meaningful, "selection_rule": rule})
        preview = b""
        if key in self.preview_keys:
            buf = io.BytesIO()
            np.savez_compressed(buf, mask=np.frombuffer(batch["mask"][i], np.uint8).reshape(h, w), images=images,
                                mean_iou=mean_iou, mean_conf=mean_conf,
                                fates=np.array([fates.get(c, "rejected") for c in finished]),
                                indices=np.array(finished, np.int64),
                                prompt=np.array(str(batch["prompt"][i])), key=np.array(key))
            preview = buf.getvalue()
        return rows, audit_rows, preview


class WriterUDF(StageUDF):
    """Publishes one flush: the kept rows of its masks as one shard, then their audit records as one part."""

    NAME = "writer"
    REQUIRED = {**{c: "the mask's summary (records stage)" for c in SUMMARY_COLUMNS if c != "shard"}, **PACKED}
    ONE_TO_ONE = False  # the summaries go on, the packed records do not

    def __init__(self, out: str):
        self.out = out

    def process(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        keys = sorted(str(k) for k in batch["mask_key"])
        key = group_key(keys)
        slices = _unpack(batch["slice_rows"], SLICE_SCHEMA)
        info = None
        if slices.num_rows:
            volumes = sorted({volume_key(d, v) for d, v in zip(slices["dataset"].to_pylist(),
                                                                slices["volume_id"].to_pylist())})
            info = ShardWriter(self.out, version=1, extra=SYNTH_COLUMNS).write(slices, volumes, key=key)
        shard = info.file if info else ""
        audit = _unpack(batch["audit_rows"], AUDIT_SCHEMA)
        audit = audit.set_column(AUDIT_SCHEMA.get_field_index("shard"), AUDIT_SCHEMA.field("shard"),
                                 pa.array([shard] * audit.num_rows, pa.string()))
        meta = {PART_SHARD: shard.encode()}
        if info:
            meta[PART_SHARD_INFO] = json.dumps(info.to_json()).encode()
        storage.write_parquet(storage.join(self.out, AUDIT_DIR, part_name(key)), audit.replace_schema_metadata(meta),
                              compression="zstd")
        summary = {c: batch[c] for c in SUMMARY_COLUMNS if c != "shard"}
        summary["shard"] = [shard] * len(keys)
        return {c: column(v) for c, v in summary.items()}


# ---------------------------------------------------------------- run state from the audit parts

@dataclass
class AuditPart:
    file: str                     # relative to OUT
    shard: str                    # its shard's file ('' when nothing was kept)
    shard_info: ShardInfo | None  # None: nothing kept, or a part from before the writer recorded it
    masks: pa.Array               # its mask keys, each once
    summary: Any = None           # what read_parts' ``summarize`` made of the part's columns


def part_files(out: str) -> list[str]:
    """The audit parts of ``out`` (paths relative to it)."""
    return [f"{AUDIT_DIR}/{n}" for n in storage.listdir(storage.join(out, AUDIT_DIR)) if is_part_name(n)]


def read_part(out: str, file: str, columns: Sequence[str] = ("mask_key",),
              summarize: Callable[[pa.Table], Any] | None = None) -> AuditPart:
    """One part's footer and its ``columns`` (mask_key among them), summarised by ``summarize``."""
    fs, path = storage.arrow_filesystem(storage.join(out, *file.split("/")))
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        meta = parquet.schema_arrow.metadata or {}
        wanted = list(dict.fromkeys(["mask_key", *columns]))
        table = parquet.read(columns=[c for c in wanted if c in parquet.schema_arrow.names], use_threads=False)
    for name in wanted:  # a column added after the part was written (e.g. denoiser_rows) is null in its rows
        if name not in table.column_names:
            field = AUDIT_SCHEMA.field(name)
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    info = meta.get(PART_SHARD_INFO)
    return AuditPart(file, meta.get(PART_SHARD, b"").decode(), ShardInfo(**json.loads(info)) if info else None,
                     pc.unique(table["mask_key"]), summarize(table) if summarize else None)


def read_parts(out: str, columns: Sequence[str] = ("mask_key",),
               summarize: Callable[[pa.Table], Any] | None = None) -> list[AuditPart]:
    """Every audit part (see :func:`read_part`). On object storage each part is a request, so 16 are read at once;
    on a local disk one at a time: threads do not make page-cache reads faster, and each one leaves allocator heaps
    in the driver (~2 MiB a thread, measured on a 10,000-mask run's commit)."""
    def read(file: str) -> AuditPart:
        return read_part(out, file, columns, summarize)

    files = part_files(out)
    if storage.is_local(out):
        return [read(f) for f in files]
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(read, files))


def audit_parts(out: str) -> list[dict[str, Any]]:
    """Every finished group: audit file, its masks and its shard ('' when nothing was kept)."""
    return [{"file": p.file, "masks": p.masks.to_pylist(), "shard": p.shard} for p in read_parts(out)]


def audit_dataset(out: str) -> pads.Dataset | None:
    """The audit parts as one pyarrow dataset of AUDIT_SCHEMA (a column a part lacks, written before the column
    existed, e.g. ``denoiser_rows``, is null in its rows); None when there are none."""
    files = part_files(out)
    if not files:
        return None
    fs, _ = storage.arrow_filesystem(out)
    paths = [storage.arrow_filesystem(storage.join(out, *f.split("/")))[1] for f in files]
    return pads.dataset(paths, schema=AUDIT_SCHEMA, format="parquet", filesystem=fs)


def finished_masks(out: str) -> set[str]:
    """Masks with a published audit part (their mask_key column alone is read)."""
    data = audit_dataset(out)
    if data is None:
        return set()
    return set(pc.unique(data.to_table(columns=["mask_key"]).column(0)).to_pylist())


def read_audit(out: str) -> pa.Table:
    """Every audit part of ``out`` as one table of AUDIT_SCHEMA."""
    data = audit_dataset(out)
    return AUDIT_SCHEMA.empty_table() if data is None else data.to_table()

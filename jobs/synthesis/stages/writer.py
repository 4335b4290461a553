"""Writer stage and the output layout of a synthesis run.

    OUT/v1/part-<key>.parquet     kept candidates as MRGen-DB rows (schema + SYNTH_COLUMNS)
    OUT/audit/part-<key>.parquet  every candidate of the same masks with its scores, fate and cost (AUDIT_SCHEMA);
                                  skipped masks get one row with their reason; a candidate stopped early (adaptive
                                  early rejection) gets one with fate stopped_early and no scores
    OUT/index.json                written by the driver at the end, from the audit parts

``<key>`` hashes the masks of the batch. The shard is written first and the audit part last: an audit part is
the record that its masks are finished, so a rerun skips them, and an actor or task retried after a crash
rewrites the same two objects instead of adding copies. A shard without its audit part is an orphan and is
never listed in the index.
"""
from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mrgen.datasets.schema import Column, encode_image
from mrgen.datasets.store import ShardWriter
from mrgen.jobs.synthesis.keys import group_key, modality_slug
from mrgen.jobs.synthesis.stages.base import StageUDF, column, optional_text
from mrgen.jobs.synthesis.stages.generator import decode_candidates
from mrgen.jobs.synthesis.stages.filter import scores_from_json
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
# Optional batch columns the writer reads (JSON lists, by candidate index): denoiser_rows (generator and adaptive
# stages), early_mean_iou and stopped_early (adaptive stage; the latter lists the indices stopped early).


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


class WriterUDF(StageUDF):
    NAME = "writer"
    REQUIRED = {"mask_key": "unit of work", "candidates": "float32 candidate images (raw bytes)",
                "n_candidates": "finished candidates in the row (its images)",
                "seeds": "JSON list of seeds of every candidate tried (finished or stopped early)",
                "fates": "JSON index → fate",
                "relaxed": "kept under relaxed thresholds", "skip_reason": "non-empty: skipped",
                "source_slice_id": "source slice", "modality": "target modality"}
    ONE_TO_ONE = False

    def __init__(self, out: str, bundle_hash: str, filter_model: str, scores_meaningful: bool, rule: str,
                 dataset_suffix: str = "-mrgen", preview_keys: list[str] | tuple[str, ...] = ()):
        self.out, self.bundle_hash, self.filter_model = out, bundle_hash, filter_model
        self.scores_meaningful, self.rule, self.suffix = scores_meaningful, rule, dataset_suffix
        self.preview_keys = set(preview_keys)

    def process(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        n = len(batch["mask_key"])
        keys = sorted(str(k) for k in batch["mask_key"])
        gkey = group_key(keys)
        slices, audit, summary = [], [], {c: [] for c in SUMMARY_COLUMNS}
        for i in range(n):
            rows, audit_rows, preview = self._mask_rows(batch, i)
            candidates = [r for r in audit_rows if r["candidate_index"] >= 0]
            slices.extend(rows)
            audit.extend(audit_rows)
            summary["mask_key"].append(str(batch["mask_key"][i]))
            summary["source_slice_id"].append(str(batch["source_slice_id"][i]))
            summary["modality"].append(str(batch["modality"][i]))
            summary["skip_reason"].append(str(batch["skip_reason"][i]))
            summary["n_candidates"].append(int(batch["n_candidates"][i]))
            summary["n_kept"].append(len(rows))
            summary["relaxed"].append(bool(batch["relaxed"][i]) and bool(rows))
            summary["n_strict"].append(int(batch["n_strict"][i]) if "n_strict" in batch else 0)
            summary["n_stopped"].append(sum(r["fate"] == STOPPED_EARLY for r in candidates))
            summary["denoiser_rows"].append(sum(r["denoiser_rows"] or 0 for r in candidates))
            summary["preview"].append(preview)
        shard = ""
        if slices:
            writer = ShardWriter(self.out, version=1, extra=SYNTH_COLUMNS)
            table = pa.Table.from_pylist(slices, schema=writer.schema)
            shard = writer.write(table, keys).file
        for row in audit:
            row["shard"] = shard
        audit_table = pa.Table.from_pylist(audit, schema=AUDIT_SCHEMA)
        meta = {b"mrgen.masks": json.dumps(keys).encode(), b"mrgen.shard": shard.encode()}
        audit_table = audit_table.replace_schema_metadata(meta)
        buf = io.BytesIO()
        pq.write_table(audit_table, buf, compression="zstd")
        storage.write_bytes(storage.join(self.out, AUDIT_DIR, f"part-{gkey}.parquet"), buf.getvalue())
        summary["shard"] = [shard] * n
        return {c: column(v) for c, v in summary.items()}

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


# ---------------------------------------------------------------- run state from the audit parts

def audit_parts(out: str) -> list[dict[str, Any]]:
    """Every finished group: audit file, its masks and its shard ('' when nothing was kept)."""
    parts = []
    folder = storage.join(out, AUDIT_DIR)
    for name in storage.listdir(folder):
        if not (name.startswith("part-") and name.endswith(".parquet")):
            continue
        fs, path = storage.filesystem(storage.join(folder, name))
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).schema_arrow.metadata or {}
        parts.append({"file": f"{AUDIT_DIR}/{name}", "masks": json.loads(meta.get(b"mrgen.masks", b"[]")),
                      "shard": meta.get(b"mrgen.shard", b"").decode()})
    return parts


def finished_masks(out: str) -> set[str]:
    return {k for part in audit_parts(out) for k in part["masks"]}


def read_audit(out: str) -> pa.Table:
    """Every audit part of ``out`` as one table of AUDIT_SCHEMA; a column a part lacks (written before the column
    existed, e.g. ``denoiser_rows``) is null in its rows."""
    folder = storage.join(out, AUDIT_DIR)
    tables = []
    for name in storage.listdir(folder):
        if name.startswith("part-") and name.endswith(".parquet"):
            fs, path = storage.arrow_filesystem(storage.join(folder, name))
            tables.append(conform_audit(pq.read_table(path, filesystem=fs)))
    return pa.concat_tables(tables) if tables else AUDIT_SCHEMA.empty_table()


def conform_audit(table: pa.Table) -> pa.Table:
    """``table`` with AUDIT_SCHEMA's columns in its order, missing ones null, and no metadata."""
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names
               else pa.nulls(table.num_rows, f.type) for f in AUDIT_SCHEMA]
    return pa.Table.from_arrays(columns, schema=AUDIT_SCHEMA)

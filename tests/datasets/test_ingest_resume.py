"""A rerun into the same URI skips volumes already written, also when the last run died before the index."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrgen.datasets.config import DBConfig
from mrgen.datasets.ingest.build import BuildError, build_db
from mrgen.datasets.store import INDEX_FILE, existing_shards, load_index, read_table


def write_manifest(src: Path, names: list[str]) -> Path:
    src.mkdir(exist_ok=True)
    for i, name in enumerate(names):
        if not (src / f"{name}.nii.gz").exists():
            data = np.random.default_rng(i).random((9, 7, 2 + i % 2)).astype(np.float32)
            nib.save(nib.Nifti1Image(data, np.eye(4)), str(src / f"{name}.nii.gz"))
    manifest = src / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps({"image": f"{n}.nii.gz", "dataset": "r", "modality": "T1"})
                                  for n in names))
    return manifest


def shard_mtimes(out: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (Path(out) / "v1").glob("part-*.parquet")}


CONFIG = ["resolution=16", "shard_rows=2"]


def test_rerun_skips_written_volumes_and_resumes_without_index(tmp_path, ray_session):
    out = str(tmp_path / "db")
    manifest = write_manifest(tmp_path / "src", ["a", "b", "c"])
    first = build_db(manifest, out, DBConfig.load("tiny", CONFIG))
    assert (first.built_volumes, first.already_present) == (3, 0)
    before = shard_mtimes(out)
    assert len(before) == first.shards_written >= 2  # shards close at volume boundaries once 2 rows are held

    again = build_db(manifest, out, DBConfig.load("tiny", CONFIG))
    assert (again.built_volumes, again.already_present, again.shards_written) == (0, 3, 0)
    assert shard_mtimes(out) == before  # nothing rewritten

    # a new volume in the manifest: only it is built, old shards untouched
    manifest = write_manifest(tmp_path / "src", ["a", "b", "c", "d"])
    added = build_db(manifest, out, DBConfig.load("tiny", CONFIG))
    assert (added.built_volumes, added.already_present) == (1, 3)
    after = shard_mtimes(out)
    assert {k: after[k] for k in before} == before and len(after) == len(before) + 1
    rows = load_index(out).rows

    # simulate a run that died after some shards but before the index: drop the index and one shard
    os.remove(Path(out) / INDEX_FILE)
    victim = sorted(after)[0]
    lost = {s.file.split("/")[-1]: s.volumes for s in existing_shards(out)}[victim]
    os.remove(Path(out) / "v1" / victim)
    resumed = build_db(manifest, out, DBConfig.load("tiny", CONFIG))
    assert resumed.built_volumes == len(lost) and resumed.already_present == 4 - len(lost)
    final = shard_mtimes(out)
    assert {k: final[k] for k in after if k != victim} == {k: v for k, v in after.items() if k != victim}
    assert load_index(out).rows == rows
    ids = read_table(out, columns=["slice_id"]).column("slice_id").to_pylist()
    assert len(ids) == len(set(ids)) == rows  # no duplicates, nothing missing


def test_rerun_at_another_resolution_is_refused(tmp_path, ray_session):
    out = str(tmp_path / "db")
    manifest = write_manifest(tmp_path / "src", ["a"])
    build_db(manifest, out, DBConfig.load("tiny", CONFIG))
    with pytest.raises(BuildError, match="resolution 16"):
        build_db(manifest, out, DBConfig.load("tiny", ["resolution=32"]))

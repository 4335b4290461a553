"""`mrgen bench volume` at small N (jobs/bench/volume_bench.py's source DB and run settings, 500 masks on the suite's
local Ray): shards sized by the target, not by batch; files per 1,000 masks within it; an index that lists shards,
not masks; a run with a mask limit, then the full set into the same folder with its index gone (as if the driver
died before its commit): the rerun skips the finished masks by reading the audit parts' mask ids, leaves their
parts untouched, removes an orphan shard, and no mask is lost or written twice."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from mrgen.datasets.store import load_index, read_table
from mrgen.jobs.bench.volume_bench import SOURCE_DATASET, Published, phantom_config, synth_settings
from mrgen.jobs.synthesis.config import SynthesisConfig
from mrgen.jobs.synthesis.keys import mask_key
from mrgen.jobs.synthesis.run import run_synthesis
from mrgen.jobs.synthesis.stages.writer import read_audit, read_parts

pytestmark = pytest.mark.slow

MASKS, FIRST, MODALITIES, SHARD_ROWS = 500, 200, 4, 100  # keep 1: a flush is 100 masks


def _config(work: Path, masks: int, *extra: str) -> SynthesisConfig:
    return SynthesisConfig.load("tiny", [*synth_settings(str(work), "run", masks, MODALITIES, steps=1,
                                                         shard_rows=SHARD_ROWS, generator_batch=20, nodes=1,
                                                         slots=False), *extra])


@pytest.fixture(scope="module")
def runs(ray_session, tmp_path_factory):
    from mrgen.datasets.phantom import build_phantom_db
    from mrgen.models.bundle import build_random_bundle

    work = tmp_path_factory.mktemp("volume")
    # small source shards: a rerun has some whose masks are all done
    build_phantom_db(str(work / "db"), phantom_config(MASKS, MODALITIES).model_copy(update={"shard_rows": 40}),
                     use_ray=False)
    build_random_bundle("tiny").save(str(work / "bundle"))
    out = work / "run"
    # a mask limit: the first FIRST / MODALITIES source slices, as a driver killed part-way leaves the first shards
    first = run_synthesis(_config(work, FIRST, "mask_selection=first"))
    first_parts = {p.file: (out / p.file).read_bytes() for p in read_parts(str(out))}
    first_masks = {k for p in read_parts(str(out)) for k in p.masks.to_pylist()}
    (out / "index.json").unlink()  # the driver died before its commit
    orphan = out / "v1" / "part-0rphan.parquet"  # a shard whose audit part was never written
    shutil.copy(next((out / "v1").iterdir()), orphan)
    second = run_synthesis(_config(work, MASKS))
    return {"out": out, "first": first, "second": second, "first_parts": first_parts,
            "first_masks": first_masks, "orphan": orphan,
            "db": str(work / "db")}


def test_rerun_skips_the_masks_its_audit_parts_record(runs):
    first, second = runs["first"], runs["second"]
    assert first["masks_finished"] == FIRST and first["this_run"]["masks_done"] == FIRST
    assert second["already_done"] == FIRST and second["this_run"]["masks_done"] == MASKS - FIRST
    out = runs["out"]
    assert {f: (out / f).read_bytes() for f in runs["first_parts"]} == runs["first_parts"], "finished parts rewritten"


def test_runs_read_only_the_source_shards_with_masks_to_do(runs):
    """The capped first run and the rerun open only the source shards holding masks they still have to make (a
    rerun after a killed driver, whose finished masks fill whole shards, is `mrgen bench volume`'s resume)."""
    import pyarrow.parquet as pq

    first_slices = set(read_audit(str(runs["out"])).filter(pc.is_in(
        pc.field("mask_key"), pa.array(sorted(runs["first_masks"]))))["source_slice_id"].to_pylist())
    holding = {}
    for shard in load_index(runs["db"]).shards:
        rows = pq.read_table(Path(runs["db"]) / shard.file, columns=["slice_id", "dataset", "has_mask"]).to_pylist()
        ids = {r["slice_id"] for r in rows if r["has_mask"] and r["dataset"] == SOURCE_DATASET}
        if ids:
            holding[shard.file] = ids
    assert len(holding) > 2  # several source shards, or there is nothing to skip
    first = runs["first"]["source_shards"]
    assert first["read"] == first["holding_wanted"] == sum(bool(ids & first_slices) for ids in holding.values())
    assert first["read"] < len(holding)
    # the rerun wants every mask; a slice not done (the capped run took those showing an organ) keeps its shard
    second = runs["second"]["source_shards"]
    assert second["holding_wanted"] == len(holding)
    assert second["read"] == sum(bool(ids - first_slices) for ids in holding.values())


def test_no_mask_lost_or_written_twice(runs):
    out, second = runs["out"], runs["second"]
    slices = read_table(runs["db"], columns=["slice_id"], has_mask=True, dataset="phantom-src")["slice_id"]
    labels = _config(out.parent, MASKS).target_modalities
    expected = {mask_key(s, m) for s in slices.to_pylist() for m in labels}
    assert len(expected) == MASKS
    parts = read_parts(str(out))
    keys = [k for p in parts for k in p.masks.to_pylist()]
    assert len(keys) == len(set(keys)) and set(keys) == expected
    assert second["masks_finished"] == MASKS and second["duplicate_masks"] == []
    rows = read_table(str(out), columns=["slice_id", "mask_key"])
    assert rows.num_rows == len(set(rows["slice_id"].to_pylist())) == second["rows"]
    kept = MASKS - second["totals"]["masks_skipped"]  # 1 candidate kept unfiltered per usable mask
    assert rows.num_rows == kept and set(rows["mask_key"].to_pylist()) <= expected


def test_shards_follow_the_target_and_the_index_lists_them(runs):
    out = runs["out"]
    parts = read_parts(str(out))
    sizes = sorted((len(p.masks) for p in parts), reverse=True)
    # a flush is SHARD_ROWS masks (keep 1), the tail of each run fewer: 200 = 2 x 100, 300 = 3 x 100
    assert sizes == [SHARD_ROWS] * (math.ceil(FIRST / SHARD_ROWS) + math.ceil((MASKS - FIRST) / SHARD_ROWS))
    index = load_index(str(out))
    shards = {p.shard: p.shard_info for p in parts if p.shard}
    assert {s.file for s in index.shards} == set(shards) and all(s.rows <= SHARD_ROWS for s in index.shards)
    assert {f"v1/{p.name}" for p in (out / "v1").iterdir()} == set(shards), "an unlisted shard was left"
    assert not runs["orphan"].exists()
    text = (out / "index.json").read_text()
    assert not any(k in text for p in parts[:3] for k in p.masks.to_pylist()[:5]), "the index lists masks"
    assert json.loads(text)["rows"] == runs["second"]["rows"]
    data_files = len(list((out / "v1").iterdir())) + len(list((out / "audit").iterdir()))
    assert data_files * 1000 / MASKS <= 2 * 1000 / SHARD_ROWS  # a shard and an audit part per flush


def test_rates_come_from_the_published_curve(tmp_path):
    published = Published(str(tmp_path), "test")
    published.points = [(10.0, 100), (20.0, 200), (30.0, 300), (50.0, 400), (60.0, 450)]
    assert published.rate(100, 300) == 10.0 and published.rate(300, 450) == 5.0
    assert published.time_of(250) == 30.0 and published.time_of(500) is None
    assert published.rate(400, 10**6) == 5.0  # up to the last part
    assert published.rate(350, 450) == 5.0  # from the last part at or below 350 masks
    assert published.intervals(100, 300) == [(100, 10.0), (100, 10.0)] and published.intervals(0, 100) == []
    assert published.rate(450, 450) is None  # no time between: no rate

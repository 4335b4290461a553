"""MRGen-DB at volume, at small N: the million-slice path (rescans, shards sized by a byte target) writes a valid DB
that every reader accepts; `mrgen db info` answers from the index alone; filters open only the matching shards."""
from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from mrgen.cli.main import main
from mrgen.datasets.phantom import PhantomConfig, build_phantom_db, plan_volumes, shard_plan
from mrgen.datasets.schema import validate_slice_table
from mrgen.datasets.store import (INDEX_FILE, load_index, read_slices, read_table, row_filters, select_shards,
                                  shard_groups, shard_uris)

PIXELS = 8 * 64 * 64  # one volume's pixels at slices_per_volume=8, 64²
# shards of at most two volumes: two masked volumes are 5 bytes a pixel (float32 image + uint8 mask)
CONFIG = PhantomConfig.load("tiny", ["pool_modalities=[T2 MRI]", "slices_per_volume=8", "rescans=3",
                                     f"shard_bytes={2 * PIXELS * 5}"])
KEYS = ["slice_id", "volume_id", "image", "mask", "organs", "region", "prompt", "split"]
SUBSET = {"dataset": "phantom-src", "split": "train"}


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("volume") / "db")
    build_phantom_db(uri, CONFIG, use_ray=False)
    return uri


def _volumes(table) -> dict[str, list[dict]]:
    rows = collections.defaultdict(list)
    for row in table.to_pylist():
        rows[row["volume_id"]].append(row)
    return {k: sorted(v, key=lambda r: r["slice_id"]) for k, v in rows.items()}


def test_shard_groups_by_rows_and_bytes():
    assert shard_groups([(8, 10)] * 5, max_rows=16) == [range(0, 2), range(2, 4), range(4, 5)]
    assert shard_groups([(8, 10)] * 5, max_rows=100, max_bytes=25) == [range(0, 2), range(2, 4), range(4, 5)]
    assert shard_groups([(8, 30), (8, 10), (8, 10)], max_rows=100, max_bytes=25) == [range(0, 1), range(1, 3)]
    assert shard_groups([], max_rows=4) == []


def test_rescans_are_distinct_volumes_of_the_same_bodies(db, tmp_path):
    plain = str(tmp_path / "plain")
    build_phantom_db(plain, CONFIG.model_copy(update={"rescans": 1, "shard_bytes": None}), use_ray=False)
    ours, theirs = _volumes(read_table(db, KEYS)), _volumes(read_table(plain, KEYS))
    assert len(ours) == 3 * len(theirs) and sum(map(len, ours.values())) == 3 * sum(map(len, theirs.values()))
    assert len({r["slice_id"] for rows in ours.values() for r in rows}) == load_index(db).rows
    for volume_id, rows in theirs.items():
        assert ours[volume_id] == rows, volume_id  # rescan 0 is the volume a DB without rescans holds
        again = [ours[f"{volume_id}-r{k:03d}"] for k in (1, 2)]
        for rescan in again:  # the same body and labels, a fresh acquisition
            for a, b in zip(rows, rescan):
                assert (a["mask"], a["organs"], a["region"], a["prompt"], a["split"]) == (
                    b["mask"], b["organs"], b["region"], b["prompt"], b["split"])
        images = [b"".join(r["image"] for r in v) for v in (rows, *again)]
        assert len(set(images)) == 3, volume_id


def test_every_shard_is_valid_prunable_and_sized_by_the_byte_target(db):
    index = load_index(db)
    assert index.rows == 3 * 8 * 3 * 3  # 3 datasets x 3 volumes x 8 slices x 3 rescans
    for shard, uri in zip(index.shards, shard_uris(db, index.shards)):
        table = pq.read_table(uri)
        validate_slice_table(table, where=uri)
        assert table.num_rows == shard.rows and shard.bytes == os.path.getsize(uri)
        pixels = sum(len(i) + len(m or b"") for i, m in zip(table.column("image").to_pylist(),
                                                            table.column("mask").to_pylist()))
        assert pixels <= CONFIG.shard_bytes and len(shard.volumes) == 2 or len(shard.volumes) == 1, shard.file
        for column in ("dataset", "split", "modality", "has_mask"):  # one value each: the index prunes whole shards
            assert len(shard.values[column]) == 1, (shard.file, column, shard.values[column])
    assert len(index.shards) > len(shard_plan(CONFIG.model_copy(update={"shard_bytes": None})))


def test_ray_data_streams_back_what_pyarrow_reads(db, ray_session):
    expected = {r["slice_id"]: r for r in read_table(db, KEYS).to_pylist()}
    streamed = {r["slice_id"]: r for r in read_slices(db, columns=KEYS).take_all()}
    assert streamed.keys() == expected.keys()
    for sid, row in expected.items():
        got = streamed[sid]
        assert bytes(got["image"]) == row["image"] and (got["mask"] is None) == (row["mask"] is None), sid


def test_info_answers_from_the_index_alone(db, tmp_path, capsys):
    alone = tmp_path / "index-only"
    alone.mkdir()
    shutil.copy(os.path.join(db, INDEX_FILE), alone / INDEX_FILE)  # no shard at all
    assert main(["db", "info", str(alone)]) == 0
    out = capsys.readouterr().out
    index = load_index(db)
    assert f"{index.rows} slices in {len(index.shards)} shards" in out
    lines = [line.strip().rsplit(None, 1) for line in out.splitlines()]
    for column in ("dataset", "modality", "has_mask", "split"):
        for value, count in index.counts()[column].items():
            assert [value, str(count)] in lines, (column, value, count)


def test_db_info_command_leaves_the_other_commands_unimported(db):
    """`mrgen db info` parses only the db group: no torch (seconds of start-up) behind a JSON read."""
    code = ("import sys; from mrgen.cli.main import main; rc = main(['db', 'info', sys.argv[1]]); "
            "sys.exit(rc or 10 * ('torch' in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, db], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{load_index(db).rows} slices" in done.stdout


def test_filters_open_only_the_matching_shards(db, tmp_path, ray_session):
    """The shards the filter does not select are deleted: a read that opened one would fail."""
    copy = str(tmp_path / "pruned")
    shutil.copytree(db, copy)
    index = load_index(copy)
    kept = select_shards(index, **SUBSET)
    assert 0 < len(kept) < len(index.shards)
    for uri in set(shard_uris(copy, index.shards)) - set(shard_uris(copy, kept)):
        os.remove(uri)
    expected = sorted(read_table(db, ["slice_id"], **SUBSET).column("slice_id").to_pylist())
    assert len(expected) == 2 * 8 * 3  # phantom-src's 2 training bodies, 3 acquisitions each
    assert sorted(read_table(copy, ["slice_id"], **SUBSET).column("slice_id").to_pylist()) == expected
    ds = read_slices(copy, columns=["slice_id", "dataset", "split"], **SUBSET)
    assert sorted(os.path.basename(f) for f in ds.input_files()) == sorted(os.path.basename(s.file) for s in kept)
    assert sorted(r["slice_id"] for r in ds.take_all()) == expected
    with pytest.raises(FileNotFoundError):
        read_table(copy, ["slice_id"])  # without the filter the deleted shards are needed
    # the kept shards hold only matching rows: no row filter is left to run; a region still filters rows
    assert row_filters(kept, **SUBSET) == {}
    assert row_filters(kept, **SUBSET, region="pelvic region") == {"region": "pelvic region"}
    pelvic = read_table(copy, ["region"], **SUBSET, region="pelvic region").column("region").to_pylist()
    assert 0 < len(pelvic) < len(expected) and set(pelvic) == {"pelvic region"}


def test_million_preset_plans_a_million_slices():
    config = PhantomConfig.load("million")
    specs = plan_volumes(config)
    assert len(specs) * config.slices_per_volume >= 10**6
    assert len({(s.dataset, s.volume_id) for s in specs}) == len(specs)
    per_body = collections.Counter((s.dataset, s.body, s.modality) for s in specs)
    assert set(per_body.values()) == {config.rescans}
    assert {s.split for s in specs if s.rescan} == {"train", "test"}

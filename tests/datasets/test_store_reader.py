"""MRGen-DB readers: Ray Data streaming equals the in-memory pyarrow read; the index prunes shards; s3:// works."""
from __future__ import annotations

import numpy as np
import pytest

from mrgen.datasets.phantom import PhantomConfig, build_phantom_db
from mrgen.datasets.schema import decode_batch
from mrgen.datasets.store import load_index, read_slices, read_table, select_shards

KEYS = ["slice_id", "image", "mask", "has_mask", "height", "width"]


def _by_id(rows):
    return {r["slice_id"]: r for r in rows}


def test_read_slices_is_byte_identical_to_read_table(tiny_db):
    expected = _by_id(read_table(tiny_db, columns=KEYS).to_pylist())
    streamed = _by_id(read_slices(tiny_db, columns=KEYS).take_all())
    assert streamed.keys() == expected.keys() and len(streamed) == load_index(tiny_db).rows
    for sid, row in expected.items():
        got = streamed[sid]
        assert bytes(got["image"]) == row["image"], sid
        assert (got["mask"] is None) == (row["mask"] is None), sid
        if row["mask"] is not None:
            assert bytes(got["mask"]) == row["mask"], sid


def test_filters_prune_shards_and_rows(tiny_db):
    index = load_index(tiny_db)
    target_train = select_shards(index, dataset="phantom-tgt", has_mask=False)
    assert 0 < len(target_train) < len(index.shards)
    assert all(s.values["dataset"] == {"phantom-tgt": s.rows} and s.values["has_mask"] == {"false": s.rows}
               for s in target_train)
    assert select_shards(index, dataset="no-such-dataset") == []
    assert len(select_shards(index, dataset=["phantom-src", "phantom-tgt"])) < len(index.shards)
    with pytest.raises(ValueError, match="organs"):
        select_shards(index, organs="liver")

    table = read_table(tiny_db, columns=["slice_id", "dataset", "split", "has_mask"], dataset="phantom-tgt",
                       split="test")
    assert table.num_rows == index.counts()["split"]["test"] - len([r
                                                                    for r in read_table(tiny_db,
                                                                                        columns=["split", "dataset"],
                                                                                        split="test").to_pylist()
                                                                    if r["dataset"] != "phantom-tgt"])
    assert set(table.column("dataset").to_pylist()) == {"phantom-tgt"} and all(table.column("has_mask").to_pylist())

    ds = read_slices(tiny_db, columns=["slice_id", "dataset", "has_mask", "region"], has_mask=True,
                     region="pelvic region")
    rows = ds.take_all()
    assert rows and all(r["has_mask"] and r["region"] == "pelvic region" for r in rows)
    assert {r["dataset"] for r in rows} == {"phantom-src", "phantom-tgt"}
    with pytest.raises(ValueError, match="no shard matches"):
        read_slices(tiny_db, dataset="no-such-dataset")


def test_a_read_limited_to_named_shards_opens_no_other(tiny_db, tmp_path):
    """``shards=`` (what a rerun of synthesis reads: the shards with masks still to do) narrows the index's
    selection; the other shards are never opened, here because they are gone."""
    import shutil

    copy = tmp_path / "db"
    shutil.copytree(tiny_db, copy)
    masked = select_shards(load_index(str(copy)), has_mask=True)
    assert len(masked) > 1
    keep = masked[-1]
    for shard in load_index(str(copy)).shards:
        if shard.file != keep.file:
            (copy / shard.file).unlink()
    rows = read_slices(str(copy), columns=["slice_id", "has_mask"], shards=[keep.file], has_mask=True).take_all()
    assert len(rows) == keep.values["has_mask"]["true"] and all(r["has_mask"] for r in rows)


def test_stream_decodes_into_training_batches(tiny_db):
    ds = read_slices(tiny_db, columns=KEYS, dataset="phantom-src")
    shapes = []
    for batch in ds.iter_batches(batch_size=16, batch_format="numpy"):
        decoded = decode_batch(batch)
        assert decoded["image"].dtype == np.float32 and decoded["mask"].dtype == np.uint8
        shapes.append(decoded["image"].shape)
        assert decoded["mask"].max() <= 6
    assert sum(s[0] for s in shapes) == load_index(tiny_db).counts()["dataset"]["phantom-src"]
    assert all(s[1:] == (64, 64) for s in shapes)


def test_phantom_in_s3_reads_back_byte_for_byte(s3_server, ray_session, tmp_path):
    config = PhantomConfig.load("tiny", ["pool_modalities=[T2 MRI]", "slices_per_volume=8"])
    local, remote = str(tmp_path / "db"), f"s3://{s3_server['bucket']}/phantom-{tmp_path.name}"
    build_phantom_db(local, config, use_ray=False)
    index = build_phantom_db(remote, config)  # Ray tasks write the shards to the moto server
    assert index.rows == load_index(local).rows
    expected = _by_id(read_table(local, columns=KEYS).to_pylist())
    streamed = _by_id(read_slices(remote, columns=KEYS).take_all())
    assert streamed.keys() == expected.keys()
    for sid, row in expected.items():
        assert bytes(streamed[sid]["image"]) == row["image"], sid
        assert (None if streamed[sid]["mask"] is None else bytes(streamed[sid]["mask"])) == row["mask"], sid

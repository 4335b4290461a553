"""`mrgen bench db`: registered under `mrgen bench`, and a tiny run reads back every slice from local disk and S3."""
from __future__ import annotations

import argparse

from mrgen.cli import bench as bench_cli


def test_bench_cli_lists_db_and_all():
    parser = argparse.ArgumentParser(prog="mrgen")
    bench_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "db", "--volumes", "2", "--slices", "3"])
    settings = bench_cli.bench_config(args, "db").db
    assert (settings.volumes, settings.slices, settings.size) == (2, 3, 128)
    assert parser.parse_args(["bench", "all"]).func is not None
    assert "db" in bench_cli.BENCHMARKS


def test_tiny_db_bench_run(tmp_path, ray_session, capsys):
    from mrgen.jobs.bench.db_bench import run_db_bench

    figures = run_db_bench(volumes=2, slices=4, size=32, resolution=16, batch_size=4, repeats=1, rescans=2,
                           workdir=str(tmp_path))
    assert figures["slices"] == 8
    for key in ("ingest_slices_per_s", "ray_read_local_slices_per_s", "pyarrow_read_local_slices_per_s",
                "ray_read_s3_slices_per_s", "pyarrow_read_s3_slices_per_s"):
        assert figures[key] > 0, key
    volume = figures["volume"]  # the tiny phantom in 2 acquisitions: 240 x 2 slices, phantom-src/train 2 x 16 x 2
    assert volume["slices"] == volume["all_slices"] == 480 and volume["subset_slices"] == 64
    assert 48 <= volume["early_slices"] < 480
    assert 0 < volume["subset_shards"] < volume["shards"]
    for key in ("info_s", "ray_all_slices_per_s", "pyarrow_all_slices_per_s", "ray_subset_slices_per_s",
                "every_shard_subset_slices_per_s", "private_driver_early_mib", "private_driver_all_mib",
                "rss_ray_all_mib"):
        assert volume[key] > 0, key
    out = capsys.readouterr().out
    assert "Ray/pyarrow" in out and "read s3" in out and "mrgen db info" in out and "shards opened" in out

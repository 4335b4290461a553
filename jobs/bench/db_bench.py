"""MRGen-DB throughput: ingest slices/s, then Ray Data read slices/s from local disk and from S3 (moto),
each against a bare pyarrow read (a ``pyarrow.dataset`` over the same shards, streamed + decoded) in the same run;
then a DB at volume (``--db``, e.g. the million-slice phantom; by default the tiny phantom in ``rescans``
acquisitions, the same path at small N): `mrgen db info` seconds, Ray Data vs pyarrow on a filtered subset, what the
index's pruning saves, and the reader's peak RSS on that subset vs the whole DB.

The S3 endpoint is moto's standalone server, started here on 127.0.0.1 before Ray so workers see it.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import psutil
import pyarrow.dataset as pads

from mrgen.datasets.config import DBConfig
from mrgen.datasets.ingest.build import build_db
from mrgen.datasets.phantom import PhantomConfig, build_phantom_db
from mrgen.datasets.schema import decode_batch
from mrgen.datasets.store import load_index, read_slices, row_filter_expression, row_filters, select_shards, shard_paths
from mrgen.jobs.bench.synth_bench import PeakRSS
from mrgen.platform import storage
from mrgen.platform.cluster import init_ray
from mrgen.platform.config import ConfigBase
# boto3 and moto (the test extras) where the S3 case runs

BUCKET = "mrgen-bench"


def write_phantom_niftis(folder: Path, volumes: int, slices: int, size: int, seed: int = 0) -> Path:
    """Phantom-sized abdominal-like volumes (body ellipse, two organs, noise) as .nii.gz, half with masks."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x, z = np.mgrid[-1:1:size * 1j, -1:1:size * 1j, -1:1:slices * 1j]
    rows = []
    for v in range(volumes):
        body = (x / 0.9) ** 2 + (y / 0.7) ** 2 < 1
        liver = ((x + 0.35) / 0.35) ** 2 + ((y + 0.1) / 0.3) ** 2 + (z / 0.8) ** 2 < 1
        spleen = ((x - 0.45) / 0.15) ** 2 + ((y + 0.2) / 0.15) ** 2 + ((z - 0.2) / 0.4) ** 2 < 1
        image = 400 * body + 300 * liver + 500 * spleen + rng.normal(0, 20, body.shape)
        labels = (liver * 1 + spleen * 2 * ~liver).astype(np.uint8)
        name = f"vol_{v:03d}"
        affine = np.diag([300 / size, 300 / size, 5.0, 1.0])
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(folder / f"{name}.nii.gz"))
        row = {"image": f"{name}.nii.gz", "dataset": "bench", "modality": "T1 in-phase" if v % 2 else "T2 SPIR"}
        if v % 2 == 0:
            nib.save(nib.Nifti1Image(labels, affine), str(folder / f"{name}_seg.nii.gz"))
            row.update(label=f"{name}_seg.nii.gz", labels={"1": "liver", "2": "spleen"})
        rows.append(row)
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return manifest


def stream(reader: str, uri: str, batch_size: int, prune: bool = True, **filters: Any) -> Iterator[int]:
    """Decoded batch sizes of the matching slices, every column: streamed by Ray Data (``reader="ray"``, the
    platform's reader) or by a bare ``pyarrow.dataset`` over the same shards (``"pyarrow"``, the baseline).
    ``prune=False`` (pyarrow only): every shard, the filter applied to rows, as a reader without the index would
    (Parquet's row-group statistics then skip most of what does not match)."""
    if reader == "ray":
        # prefetching as the trainer's reader does (jobs/train/data.py BatchStream)
        batches = read_slices(uri, **filters).iter_batches(batch_size=batch_size, batch_format="numpy",
                                                           prefetch_batches=2)
    else:
        index = load_index(uri)
        shards = select_shards(index, **filters) if prune else index.shards
        fs, paths = shard_paths(uri, shards)
        scan = pads.dataset(paths, filesystem=fs, format="parquet").to_batches(
            batch_size=batch_size, filter=row_filter_expression(**row_filters(shards, **filters)))
        batches = ({name: column.to_numpy(zero_copy_only=False) for name, column in zip(b.schema.names, b.columns)}
                   for b in scan if b.num_rows)
    for batch in batches:
        yield len(decode_batch(batch)["image"])


RAY, PYARROW = functools.partial(stream, "ray"), functools.partial(stream, "pyarrow")


def _best_rate(read: Callable[..., Iterator[int]], uri: str, batch_size: int, repeats: int,
               **filters: Any) -> tuple[float, int, float]:
    """Best slices/s over ``repeats`` reads, the slice count, and the time to the first batch of that read."""
    best, count, first_batch = 0.0, 0, 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        count, first = 0, None
        for n in read(uri, batch_size, **filters):
            first = first if first is not None else time.perf_counter() - start
            count += n
        rate = count / (time.perf_counter() - start)
        if rate > best:
            best, first_batch = rate, first or 0.0
    return best, count, first_batch


class _MotoS3:
    """moto's S3 server on 127.0.0.1 with the AWS variables pointing at it (restored on exit)."""

    def __enter__(self):
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise RuntimeError("the S3 part of the benchmark needs moto[server] (pip install 'moto[server]')") from exc
        import boto3

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per HTTP request
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_ENDPOINT_URL": self.endpoint,
               "AWS_DEFAULT_REGION": "us-east-1"}
        self.saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        return self

    def __exit__(self, *exc):
        self.server.stop()
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def db_bench_configs(resolution: int = 64, shard_rows: int = 128, rescans: int = 4,
                     db: str | None = None) -> dict[str, ConfigBase]:
    """What :func:`run_db_bench` builds, by name, without building anything: ``db`` (both ingest builds' DB settings)
    and, without ``db``, ``phantom`` (the DB at volume: the tiny phantom in ``rescans`` acquisitions)."""
    configs: dict[str, ConfigBase] = {
        "db": DBConfig.load_dict({"resolution": resolution, "shard_rows": shard_rows}, source="mrgen bench db")}
    if db is None:
        configs["phantom"] = PhantomConfig.load("tiny", [f"rescans={rescans}"])
    return configs


def run_db_bench(volumes: int = 8, slices: int = 64, size: int = 128, resolution: int = 64, shard_rows: int = 128,
                 batch_size: int = 64, repeats: int = 2, rescans: int = 4, subset_dataset: str = "phantom-src",
                 subset_split: str = "train", db: str | None = None, workdir: str | None = None) -> dict[str, Any]:
    """Measure and print ingest and read throughput, then the figures of ``db`` at volume (default: the tiny phantom
    in ``rescans`` acquisitions, built here); returns the figures."""
    configs = db_bench_configs(resolution, shard_rows, rescans, db)  # a bad setting fails before moto and Ray start
    config = configs["db"]
    root = Path(workdir or tempfile.mkdtemp(prefix="mrgen-db-bench-"))
    with _MotoS3() as s3:
        init_ray()
        manifest = write_phantom_niftis(root / "src", volumes, slices, size)
        # the first build pays for starting Ray workers; the second measures steady-state ingest
        cold = build_db(manifest, str(root / "db-cold"), config)
        local = str(root / "db")
        report = build_db(manifest, local, config)
        if report.skipped or cold.skipped:
            raise RuntimeError(f"benchmark inputs were skipped: {report.skipped or cold.skipped}")
        remote = f"s3://{BUCKET}/{root.name}/db"
        storage.upload_dir(local, remote)

        figures: dict[str, Any] = {"volumes": volumes, "slices": report.rows, "source_size": size,
                                   "resolution": resolution, "shards": report.shards_written,
                                   "ingest_slices_per_s": report.slices_per_second,
                                   "ingest_cold_slices_per_s": cold.slices_per_second, "s3_endpoint": s3.endpoint}
        for where, uri in (("local", local), ("s3", remote)):
            ray_rate, ray_count, ray_first = _best_rate(RAY, uri, batch_size, repeats)
            arrow_rate, arrow_count, arrow_first = _best_rate(PYARROW, uri, batch_size, repeats)
            if ray_count != report.rows or arrow_count != report.rows:
                raise RuntimeError(f"{where}: read {ray_count} (Ray) / {arrow_count} (pyarrow) slices, built "
                                   f"{report.rows}")
            figures[f"ray_read_{where}_slices_per_s"] = ray_rate
            figures[f"pyarrow_read_{where}_slices_per_s"] = arrow_rate
            figures[f"ray_first_batch_{where}_s"] = ray_first
            figures[f"pyarrow_first_batch_{where}_s"] = arrow_first
            figures[f"ray_vs_pyarrow_{where}"] = ray_rate / arrow_rate
        figures["ray_s3_vs_local"] = figures["ray_read_s3_slices_per_s"] / figures["ray_read_local_slices_per_s"]
        if db is None:
            db = str(root / "phantom")
            build_phantom_db(db, configs["phantom"])
        figures["volume"] = volume_figures(db, batch_size, repeats, dataset=subset_dataset, split=subset_split)
    print(format_figures(figures), flush=True)
    return figures


class ReaderRSS(PeakRSS):
    """:class:`PeakRSS` (this process and its Ray workers, the object store's shared pages counted in each), and the
    peaks of this process alone, the reader that consumes the stream: its RSS, and its private part (RSS less shared
    pages: the object store's pages it maps are shared, and count in its RSS however little it keeps)."""

    def __init__(self):
        super().__init__()
        self.driver = self.private = 0.0

    def sample(self) -> None:
        super().sample()
        mem = self._me.memory_info()
        self.driver = max(self.driver, mem.rss / 2**20)
        self.private = max(self.private, (mem.rss - mem.shared) / 2**20)


def _rates(readers: dict[str, Callable[..., Iterator[int]]], uri: str, batch_size: int, repeats: int,
           **filters: Any) -> dict[str, tuple[float, int, int]]:
    """Each reader's best slices/s, its slice count and the bytes this process read from files in its last pass
    (pyarrow reads here; Ray Data's reads run in its workers), the readers taking turns (a drift favours none)."""
    me, best = psutil.Process(), {name: (0.0, 0, 0) for name in readers}
    for _ in range(repeats):
        for name, read in readers.items():
            before = me.io_counters().read_chars
            rate, count, _ = _best_rate(read, uri, batch_size, 1, **filters)
            best[name] = (max(best[name][0], rate), count, me.io_counters().read_chars - before)
    return best


def _memory(uri: str, batch_size: int, early: int) -> dict[str, Any]:
    """The reader's peak memory over the first ``early`` slices of a Ray Data stream of the whole DB, and over all
    of it (one pass: a separate small read would compare process histories, not stream lengths)."""
    with ReaderRSS() as rss:
        count, marks = 0, None
        for n in RAY(uri, batch_size):
            count += n
            if marks is None and count >= early:
                rss.sample()
                marks = {"early_slices": count, "rss_driver_early_mib": rss.driver,
                         "private_driver_early_mib": rss.private, "rss_ray_early_mib": rss.peak}
    return {**(marks or {}), "all_slices": count, "rss_driver_all_mib": rss.driver,
            "private_driver_all_mib": rss.private, "rss_ray_all_mib": rss.peak}


def volume_figures(uri: str, batch_size: int, repeats: int, **subset: Any) -> dict[str, Any]:
    """`mrgen db info` seconds (a new process, as a user runs it); the reader's peak memory streaming the whole DB
    with Ray Data, at a tenth of it and at its end; Ray Data vs pyarrow slices/s on the ``subset`` (filters) and on
    the whole DB; the subset read with the index's pruning vs every shard opened."""
    start = time.perf_counter()
    info = subprocess.run([sys.executable, "-m", "mrgen.cli", "db", "info", uri], capture_output=True, text=True)
    info_s = time.perf_counter() - start
    if info.returncode:
        raise RuntimeError(f"mrgen db info {uri}: {info.stderr.strip()}")
    index = load_index(uri)
    f: dict[str, Any] = {"db": uri, "slices": index.rows, "shards": len(index.shards), "bytes": index.bytes,
                         "info_s": info_s, "subset": subset, "subset_shards": len(select_shards(index, **subset)),
                         **_memory(uri, batch_size, max(1, index.rows // 10))}  # first: no baseline has run yet
    every_shard = functools.partial(stream, "pyarrow", prune=False)
    sub = _rates({"ray": RAY, "pyarrow": PYARROW, "every_shard": every_shard}, uri, batch_size, repeats, **subset)
    whole = _rates({"ray": RAY, "pyarrow": PYARROW}, uri, batch_size, 1)
    counts = {f"subset {k}": v[1] for k, v in sub.items()} | {f"all {k}": v[1] for k, v in whole.items()}
    if len({v[1] for v in sub.values()}) > 1 or {v[1] for v in whole.values()} | {f["all_slices"]} != {index.rows}:
        raise RuntimeError(f"{uri}: slices read differ: {counts}, the index lists {index.rows}")
    f["subset_slices"] = sub["ray"][1]
    for name, (rate, _, _) in sub.items():
        f[f"{name}_subset_slices_per_s"] = rate
    for name, (rate, _, _) in whole.items():
        f[f"{name}_all_slices_per_s"] = rate
    f["pyarrow_subset_bytes_read"], f["every_shard_subset_bytes_read"] = sub["pyarrow"][2], sub["every_shard"][2]
    f["ray_vs_pyarrow_subset"] = sub["ray"][0] / sub["pyarrow"][0]
    f["ray_vs_pyarrow_all"] = whole["ray"][0] / whole["pyarrow"][0]
    f["pruned_vs_every_shard"] = sub["pyarrow"][0] / sub["every_shard"][0]
    f["private_driver_all_vs_early"] = f["private_driver_all_mib"] / f["private_driver_early_mib"]
    return f


def format_figures(f: dict[str, Any]) -> str:
    return "\n".join([
        f"MRGen-DB benchmark: {f['volumes']} NIfTI volumes, {f['slices']} slices ({f['source_size']}² → "
        f"{f['resolution']}²), {f['shards']} shards",
        f"  ingest (Ray Data build)      {f['ingest_slices_per_s']:10.1f} slices/s"
        f"   (first build, starting workers: {f['ingest_cold_slices_per_s']:.1f} slices/s)",
        f"  read local  Ray Data         {f['ray_read_local_slices_per_s']:10.1f} slices/s"
        f"   (first batch after {f['ray_first_batch_local_s']:.2f}s)",
        f"  read local  pyarrow baseline {f['pyarrow_read_local_slices_per_s']:10.1f} slices/s"
        f"   (first batch after {f['pyarrow_first_batch_local_s']:.2f}s)   Ray/pyarrow = "
        f"{f['ray_vs_pyarrow_local']:.3f}",
        f"  read s3     Ray Data         {f['ray_read_s3_slices_per_s']:10.1f} slices/s"
        f"   (first batch after {f['ray_first_batch_s3_s']:.2f}s)",
        f"  read s3     pyarrow baseline {f['pyarrow_read_s3_slices_per_s']:10.1f} slices/s"
        f"   (first batch after {f['pyarrow_first_batch_s3_s']:.2f}s)   Ray/pyarrow = {f['ray_vs_pyarrow_s3']:.3f}",
        f"  Ray Data s3/local = {f['ray_s3_vs_local']:.2f}",
        *format_volume(f["volume"]),
    ])


def format_volume(v: dict[str, Any]) -> list[str]:
    size = f", {v['bytes'] / 2**30:.2f} GiB" if v["bytes"] is not None else ""
    subset = " ".join(f"{k}={w}" for k, w in v["subset"].items())
    return [
        f"MRGen-DB at volume: {v['db']}: {v['slices']} slices in {v['shards']} shards{size}",
        f"  mrgen db info                {v['info_s']:10.2f} s (a new process)",
        f"  stream all  Ray Data         {v['ray_all_slices_per_s']:10.1f} slices/s",
        f"  stream all  pyarrow baseline {v['pyarrow_all_slices_per_s']:10.1f} slices/s   Ray/pyarrow = "
        f"{v['ray_vs_pyarrow_all']:.3f}",
        f"  subset {subset}: {v['subset_slices']} slices, {v['subset_shards']} of {v['shards']} shards opened",
        f"  stream sub  Ray Data         {v['ray_subset_slices_per_s']:10.1f} slices/s",
        f"  stream sub  pyarrow baseline {v['pyarrow_subset_slices_per_s']:10.1f} slices/s   Ray/pyarrow = "
        f"{v['ray_vs_pyarrow_subset']:.3f}",
        f"  stream sub  every shard      {v['every_shard_subset_slices_per_s']:10.1f} slices/s   pruned/every "
        f"shard = {v['pruned_vs_every_shard']:.2f}; bytes read {v['pyarrow_subset_bytes_read'] / 2**30:.2f} GiB "
        f"pruned, {v['every_shard_subset_bytes_read'] / 2**30:.2f} GiB opening every shard",
        f"  reader peak memory (Ray)     first {v['early_slices']} slices: RSS {v['rss_driver_early_mib']:.0f} MiB, "
        f"private {v['private_driver_early_mib']:.0f} MiB; all {v['all_slices']}: RSS {v['rss_driver_all_mib']:.0f}"
        f" MiB, private {v['private_driver_all_mib']:.0f} MiB (private all/first = "
        f"{v['private_driver_all_vs_early']:.2f})",
        f"  with Ray's processes         first {v['rss_ray_early_mib']:.0f} MiB, all {v['rss_ray_all_mib']:.0f} MiB"
        " (RSS summed: shared pages counted in each)",
    ]

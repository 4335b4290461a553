"""MRGen-DB throughput: ingest slices/s, then Ray Data read slices/s from local disk and from S3 (moto),
each against a plain pyarrow read (``read_table`` + decode) of the same shards in the same run.

The S3 endpoint is moto's standalone server, started here on 127.0.0.1 before Ray so workers see it.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mrgen.datasets.config import DBConfig
from mrgen.platform.config import ConfigBase

BUCKET = "mrgen-bench"


def write_phantom_niftis(folder: Path, volumes: int, slices: int, size: int, seed: int = 0) -> Path:
    """Phantom-sized abdominal-like volumes (body ellipse, two organs, noise) as .nii.gz, half with masks."""
    import nibabel as nib

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


def read_ray(uri: str, batch_size: int) -> Iterator[int]:
    """Decoded batch sizes, streamed by Ray Data."""
    from mrgen.datasets.schema import decode_batch
    from mrgen.datasets.store import read_slices

    for batch in read_slices(uri).iter_batches(batch_size=batch_size, batch_format="numpy"):
        yield len(decode_batch(batch)["image"])


def read_pyarrow(uri: str, batch_size: int) -> Iterator[int]:
    """Decoded batch sizes from one in-memory pyarrow table (the baseline)."""
    from mrgen.datasets.schema import decode_batch
    from mrgen.datasets.store import read_table

    for record_batch in read_table(uri).to_batches(max_chunksize=batch_size):
        batch = {name: record_batch.column(name).to_numpy(zero_copy_only=False)
                 for name in ("image", "mask", "height", "width")}
        yield len(decode_batch(batch)["image"])


def _best_rate(read: Callable[[str, int], Iterator[int]], uri: str, batch_size: int,
               repeats: int) -> tuple[float, int, float]:
    """Best slices/s over ``repeats`` reads, the slice count, and the time to the first batch of that read."""
    best, count, first_batch = 0.0, 0, 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        count, first = 0, None
        for n in read(uri, batch_size):
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


def db_bench_configs(resolution: int = 64, shard_rows: int = 128) -> dict[str, ConfigBase]:
    """What :func:`run_db_bench` builds, by name, without building anything: ``db`` (both builds' DB settings)."""
    return {"db": DBConfig.load_dict({"resolution": resolution, "shard_rows": shard_rows}, source="mrgen bench db")}


def run_db_bench(volumes: int = 8, slices: int = 64, size: int = 128, resolution: int = 64, shard_rows: int = 128,
                 batch_size: int = 64, repeats: int = 2, workdir: str | None = None) -> dict[str, Any]:
    """Measure and print ingest and read throughput; returns the figures."""
    from mrgen.datasets.ingest.build import build_db
    from mrgen.platform import storage
    from mrgen.platform.cluster import init_ray

    config = db_bench_configs(resolution, shard_rows)["db"]  # a bad setting fails before moto and Ray start
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
            ray_rate, ray_count, ray_first = _best_rate(read_ray, uri, batch_size, repeats)
            arrow_rate, arrow_count, arrow_first = _best_rate(read_pyarrow, uri, batch_size, repeats)
            if ray_count != report.rows or arrow_count != report.rows:
                raise RuntimeError(f"{where}: read {ray_count} (Ray) / {arrow_count} (pyarrow) slices, built "
                                   f"{report.rows}")
            figures[f"ray_read_{where}_slices_per_s"] = ray_rate
            figures[f"pyarrow_read_{where}_slices_per_s"] = arrow_rate
            figures[f"ray_first_batch_{where}_s"] = ray_first
            figures[f"pyarrow_first_batch_{where}_s"] = arrow_first
            figures[f"ray_vs_pyarrow_{where}"] = ray_rate / arrow_rate
        figures["ray_s3_vs_local"] = figures["ray_read_s3_slices_per_s"] / figures["ray_read_local_slices_per_s"]
    print(format_figures(figures), flush=True)
    return figures


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
    ])

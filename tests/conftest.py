"""Shared real components for the suite: one local Ray cluster, one moto S3 server, one tiny phantom DB."""
from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MRGEN_RAY_LOG_TO_DRIVER", "0")

import torch  # noqa: E402

torch.set_num_threads(1)

BUCKET = "mrgen-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3 server on 127.0.0.1; AWS_* variables point at it (set before Ray starts)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield {"endpoint": endpoint, "bucket": BUCKET, "env": env}
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray for the whole run (2 CPUs); S3 variables are in place first so workers inherit them."""
    from mrgen.platform.cluster import RayConfig, init_ray

    init_ray(RayConfig(num_cpus=2, object_store_memory_mb=512, no_progress_timeout_s=300))
    import ray

    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_db(tmp_path_factory, ray_session) -> str:
    """A small phantom MRGen-DB (64x64), built once per session; treat it as read-only."""
    from mrgen.datasets.phantom import PhantomConfig, build_phantom_db

    out = str(tmp_path_factory.mktemp("tiny_db") / "db")
    build_phantom_db(out, PhantomConfig.load("tiny"))
    return out

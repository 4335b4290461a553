"""Ray Train + DeepSpeed on a two-node Ray cluster on this machine, one worker per node (jobs/bench/elastic_train.py):
the worker node is killed mid-run; FailureConfig restarts the group on a replacement node, which resumes from the
latest checkpoint in object storage (the suite's moto S3) and ends at the planned step."""
from __future__ import annotations

import uuid

import pytest

from mrgen.jobs.bench.elastic import LocalCluster
from mrgen.jobs.bench.elastic_train import TRAIN_HEAD_CPUS, training_node_dies

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def test_training_node_dies_and_resumes_from_s3(tiny_db, s3_server, session_ray_paused):
    out = f"s3://{s3_server['bucket']}/elastic-train-{uuid.uuid4().hex[:8]}"
    with LocalCluster(head_cpus=TRAIN_HEAD_CPUS) as cluster:
        figures = training_node_dies(cluster, tiny_db, out, steps=60, every=10)
    print(figures)
    assert figures["steps"] == figures["planned_steps"] == 60, figures
    (restart,) = figures["restarts_from"]  # one restart, from a checkpoint written before the kill
    assert restart % 10 == 0 and 10 <= restart < 60 and figures["checkpoints_in_storage_at_kill"] >= 2, figures
    assert figures["reported_steps"] == list(range(5, 65, 5)), figures  # nothing lost, nothing counted twice
    assert figures["checkpoint"].startswith(f"{s3_server['bucket']}/"), figures

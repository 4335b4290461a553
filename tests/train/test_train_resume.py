"""Fault tolerance and resumption on 1 CPU worker, checkpoints on the suite's moto S3 server: an injected worker
failure restarts the worker group from the latest checkpoint by itself, and `mrgen train --resume` continues
the finished run (step, optimizer, LR schedule, data position) to more steps."""
from __future__ import annotations

import json
import uuid

import pytest

from mrgen.datasets.store import db_digest
from mrgen.jobs.train.config import TrainConfig
from mrgen.jobs.train.progress import read_progress
from mrgen.jobs.train.run import run_training
from mrgen.models.bundle import ModelBundle, build_random_bundle
from mrgen.platform import storage

pytestmark = pytest.mark.timeout(1500)


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory) -> str:
    """A random tiny bundle standing in for a trained stage 2 (the controller stage starts from it)."""
    uri = str(tmp_path_factory.mktemp("train_init") / "bundle")
    bundle = build_random_bundle("tiny", seed=0)
    bundle.controlnet = None
    bundle.manifest["evaluation"] = {"train": {"mask_following": {"following": 0.9}}}  # scores this bundle only
    bundle.save(uri)
    return uri


def _summary(capsys) -> list[dict]:
    """The JSON line `mrgen train --json` prints last."""
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_failed_worker_restarts_from_s3_checkpoint_then_cli_resume(tiny_db, s3_server, random_bundle, capsys):
    from mrgen.cli.main import main as cli

    out = f"s3://{s3_server['bucket']}/train-{uuid.uuid4().hex[:8]}"
    settings = ["checkpoint_every=10", "log_every=5", "controlnet.warmup_steps=2", "sample_every=0", "sample_steps=2",
                "sample_count=2"]
    config = TrainConfig.load("tiny", ["num_workers=1", "controlnet.max_steps=30", "fail_at_step=25",
                                       "max_failures=1", *settings])
    result = run_training(config, tiny_db, out, "controlnet", init=random_bundle)

    assert result.steps == 30
    assert result.restarts == [20], "the worker group should have restarted once, from the step-20 checkpoint"
    assert [h["step"] for h in result.history] == [5, 10, 15, 20, 25, 30]
    assert result.checkpoint_path.startswith(f"{s3_server['bucket']}/")
    names = storage.listdir(storage.join(out, "controlnet"))
    assert sum(n.startswith("checkpoint_") and not n.endswith(".json") for n in names) == 2  # latest 2 kept
    assert "history.json" in names
    progress = read_progress(storage.join(out, "controlnet"))  # what `mrgen train`'s progress bar draws (S3 here)
    assert progress["run_id"] == result.train_state["run_id"] and progress["step"] == progress["total"] == 30
    hashes = result.train_state["frozen_hashes"]
    assert set(hashes["start"]) == {"vae", "text_encoder", "unet"} and hashes["start"] == hashes["end"]
    bundle = ModelBundle.load(storage.join(out, "bundle"))
    assert bundle.controlnet is not None and bundle.manifest["stages"]["controlnet"] == result.train_state["run_id"]
    assert "evaluation" not in bundle.manifest  # the init bundle's scores do not describe the new controller
    assert bundle.manifest["training"]["stages"]["controlnet"]["db_digest"] == db_digest(tiny_db)

    with pytest.raises(FileExistsError, match="--resume"):
        run_training(config, tiny_db, out, "controlnet", init=random_bundle)
    capsys.readouterr()

    args = ["train", "controlnet", "--db", tiny_db, "--out", out, "--init", random_bundle, "--workers", "1",
            "--steps", "40", "--resume", "--json"] + [a for s in settings for a in ("--set", s)]
    assert cli(args) == 0
    summary = _summary(capsys)
    assert summary[0]["steps"] == 40 and summary[0]["restarts"] == [20, 30]
    history = json.loads(storage.read_text(storage.join(out, "controlnet", "history.json")))
    assert [h["step"] for h in history] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert history[-1]["lr"] < history[3]["lr"]  # the cosine schedule went on from where it was

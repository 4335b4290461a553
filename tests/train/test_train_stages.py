"""THE end-to-end training test: the three stages chained on the tiny phantom DB, 2 CPU workers each, through
Ray Train + DeepSpeed ZeRO-2 (one run per stage; every assertion below reads those three runs)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mrgen.jobs.train.config import TrainConfig
from mrgen.jobs.train.run import run_training
from mrgen.jobs.train.stages import state_hash
from mrgen.models.bundle import ModelBundle

STEPS = 20
# THE end-to-end test of training: three Ray Train runs (start-up dominates); generous on a loaded machine.
pytestmark = pytest.mark.timeout(1800)


def falls(history: list[dict]) -> tuple[float, float]:
    losses = [h["loss"] for h in history]
    return sum(losses[:2]) / 2, sum(losses[-2:]) / 2


@pytest.fixture(scope="module")
def chain(tiny_db, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("train_chain") / "out")
    config = TrainConfig.load("tiny", [
        "num_workers=2", f"vae.max_steps={STEPS}", f"unet.max_steps={STEPS}", f"controlnet.max_steps={STEPS}",
        "vae.warmup_steps=2", "unet.warmup_steps=2", "controlnet.warmup_steps=2",
        "checkpoint_every=10", "log_every=5", "sample_every=10", "sample_count=2", "sample_steps=2",
        "mask_condition=onehot", "controller_timesteps=cubic"])  # the intensity path: the demo's own training
    results = {stage: run_training(config, tiny_db, out, stage) for stage in ("vae", "unet", "controlnet")}
    return out, results


@pytest.mark.parametrize("stage", ["vae", "unet", "controlnet"])
def test_each_stage_trains_on_two_workers_and_its_loss_falls(chain, stage):
    out, results = chain
    result = results[stage]
    assert result.steps == STEPS and [h["step"] for h in result.history] == list(range(5, STEPS + 1, 5))
    first, last = falls(result.history)
    losses = [round(h["loss"], 4) for h in result.history]
    if stage == "controlnet":
        # The controller starts as a no-op (zero convolutions) on top of the frozen UNet, so its loss starts at
        # the UNet's level and 20 steps barely move it: assert it trains without diverging (its weights moving
        # is asserted in test_stage3_leaves_frozen_parts_bitwise_unchanged).
        assert last < first + 0.03, f"controlnet loss diverged: {losses}"
    else:
        assert last < first, f"{stage}: loss did not fall: {losses}"
    checkpoint = Path(result.checkpoint_path)
    # both DeepSpeed ranks wrote their ZeRO-2 optimizer shard and their data position into the checkpoint
    assert sorted(p.name for p in (checkpoint / "ranks").iterdir()) == ["rank_0.json", "rank_1.json"]
    shards = list((checkpoint / "deepspeed" / "state").glob("*optim_states.pt"))
    assert len(shards) == 2
    assert (checkpoint / "model" / stage / "config.json").is_file()
    run = Path(out) / stage
    assert len([p for p in run.glob("checkpoint_*") if p.is_dir()]) == 2  # checkpoints at 10, 20; latest 2 kept
    assert (run / "samples" / "step_000010.png").stat().st_size > 0
    assert (run / "samples" / "step_000020.png").stat().st_size > 0
    prom = (run / "metrics.prom").read_text()
    assert f'mrgen_train_loss{{stage="{stage}"}}' in prom and "mrgen_train_data_wait_fraction" in prom
    assert all(0 <= h["data_wait_fraction"] <= 1 and h["samples_per_s"] > 0 for h in result.history)


def test_bundles_grow_stage_by_stage_and_load(chain):
    out, results = chain
    vae_only = json.loads((Path(out) / "vae" / "bundle" / "mrgen_manifest.json").read_text())
    assert set(vae_only["parts"]) == {"vae", "text_encoder", "scheduler"}
    assert vae_only["latent_scaling"] != 1.0 and vae_only["run_id"] == results["vae"].train_state["run_id"]
    bundle = ModelBundle.load(str(Path(out) / "bundle"))
    assert bundle.controlnet is not None and bundle.unet is not None
    assert set(bundle.manifest["stages"]) == {"vae", "unet", "controlnet"}
    assert bundle.latent_scaling == pytest.approx(vae_only["latent_scaling"])


def test_prompt_drop_frequency_in_the_unet_loop(chain):
    _, results = chain
    drop = results["unet"].train_state["prompt_drop"]
    # rank 0 saw 20 steps x 8 prompts; p = 0.1 → 16 expected, about ± 3 standard deviations (σ ≈ 3.8)
    assert drop["seen"] == STEPS * 8
    assert 5 <= drop["dropped"] <= 28, drop


def test_stage3_leaves_frozen_parts_bitwise_unchanged(chain):
    out, results = chain
    hashes = results["controlnet"].train_state["frozen_hashes"]
    assert set(hashes["start"]) == {"vae", "text_encoder", "unet"}
    assert hashes["start"] == hashes["end"]
    # and the frozen UNet the workers used is exactly stage 2's trained UNet
    stage2 = ModelBundle.load(str(Path(out) / "unet" / "bundle"), parts=("unet",))
    assert hashes["start"]["unet"] == state_hash(stage2.unet)
    # while the controller itself did change: its zero-initialised output convolutions are no longer zero
    final = ModelBundle.load(str(Path(out) / "bundle"))
    assert any(torch.count_nonzero(block.weight) for block in final.controlnet.controlnet_down_blocks)
    # one condition channel per organ of the DB's vocabulary, recorded in the manifest by name
    vocabulary = final.manifest["organ_vocabulary"]
    assert final.manifest["mask_encoding"] == "onehot" and sorted(vocabulary.values()) == list(
        range(1, len(vocabulary) + 1))
    assert final.controlnet.config.conditioning_channels == len(vocabulary) > 1


def test_eval_ae_reports_psnr_ssim_mse(chain, tiny_db, capsys):
    from mrgen.cli.main import main as cli

    out, _ = chain
    assert cli(["eval", "ae", "--model", str(Path(out) / "bundle"), "--db", tiny_db, "--split", "test"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert "PSNR" in lines[0] and result["slices"] > 0 and result["psnr"] > 5 and 0 < result["ssim"] <= 1
    assert result["mse"] == pytest.approx(result["mse"]) and result["mse"] < 0.3


def test_eval_mask_reports_losses_and_writes_the_following_sheet(chain, tiny_db, tmp_path, capsys):
    from PIL import Image

    from mrgen.cli.main import main as cli

    out, _ = chain
    sheet = tmp_path / "following.png"
    assert cli(["eval", "mask", "--model", str(Path(out) / "bundle"), "--db", tiny_db, "--split", "train",
                "--limit", "8", "--sheet", str(sheet), "--following-slices", "4", "--sheet-slices", "2",
                "--steps", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert "UNet alone" in lines[0] and result["gain"] == 1 - result["mse_true"] / result["mse_shuffled"]
    samples = result["samples"]
    assert samples["slices"] == 4 and samples["steps"] == 2 and samples["sheet"] == str(sheet)
    assert samples["following"] == 1 - samples["error_own"] / samples["error_other"]
    assert 3 * 160 <= Image.open(sheet).size[0] < 4 * 160  # real | own mask | another slice's mask

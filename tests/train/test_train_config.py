"""Training config, schedule, data decoding and metrics helpers: fast, no Ray."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mrgen.jobs.train.config import TrainConfig
from mrgen.jobs.train.data import decode
from mrgen.models.metrics.reconstruction import psnr, ssim
from mrgen.jobs.train.loop import Examples, cosine_lambda, deepspeed_config
from mrgen.platform.config import ConfigError


def test_presets_load_and_paper_matches_section_4_1():
    tiny = TrainConfig.load("tiny")
    assert tiny.resolved_precision() == "fp32" and tiny.zero_stage == 2 and tiny.prompt_drop_p == 0.1
    paper = TrainConfig.load("paper")
    assert (paper.vae.lr, paper.unet.lr, paper.controlnet.lr) == (5e-5, 1e-5, 1e-5)
    assert paper.vae.batch_size * paper.num_workers == 256 and paper.controlnet.batch_size * paper.num_workers == 128
    assert paper.resolved_precision() == "bf16" and paper.kl_weight == 1e-4 and paper.augment_p == 0.2


@pytest.mark.parametrize("override, key", [
    ("keep_checkpoints=1", "keep_checkpoints"),
    ("precision=bf16", "precision"),
    ("vae.warmup_steps=5000", "warmup_steps"),
    ("unet.filters={has_mask: true}", "filters"),
    ("resolution=128", "resolution"),
    ("zero_stage=3", "zero_stage"),
    ("nonsense=1", "nonsense"),
])
def test_bad_combinations_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        TrainConfig.load("tiny", [override])


def test_deepspeed_config_from_train_config():
    config = TrainConfig.load("tiny", ["grad_accum=3", "unet.batch_size=4"])
    ds = deepspeed_config(config, "unet", world_size=2)
    assert ds["train_batch_size"] == 4 * 3 * 2 and ds["gradient_accumulation_steps"] == 3
    assert ds["zero_optimization"]["stage"] == 2 and not ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["optimizer"]["params"]["lr"] == config.unet.lr


def test_cosine_schedule_warms_up_then_decays_to_floor():
    f = cosine_lambda(warmup=4, total=20, floor=0.1)
    values = [f(s) for s in range(21)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(values[4:], values[5:]))
    assert values[20] == pytest.approx(0.1)


def test_decode_and_examples_keep_masked_rows_for_the_controller():
    h = w = 4
    image = np.linspace(0, 1, h * w, dtype="<f4").reshape(h, w)
    mask = np.arange(h * w, dtype=np.uint8).reshape(h, w) % 3
    batch = {"height": np.array([h, h]), "width": np.array([w, w]),
             "image": np.array([image.tobytes(), image.tobytes()], dtype=object),
             "mask": np.array([None, mask.tobytes()], dtype=object), "has_mask": np.array([False, True]),
             "prompt": np.array(["T1 MRI; a", "T2 MRI; b"], dtype=object)}
    out = decode(batch)
    assert out["image"].shape == (2, h, w) and np.array_equal(out["image"][1], image)
    assert not out["mask"][0].any() and np.array_equal(out["mask"][1], mask)
    keep = Examples("controlnet", 2)
    keep.offer(out)
    assert len(keep.rows) == 1 and keep.rows[0]["prompt"] == "T2 MRI; b"


def test_ssim_and_psnr_reference_values():
    torch.manual_seed(0)
    a = torch.rand(2, 1, 32, 32)
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-5)
    little, more = ((a + s * torch.randn_like(a)).clamp(0, 1) for s in (0.05, 0.2))
    assert (ssim(more, a) < ssim(little, a)).all() and (ssim(little, a) < 1).all()
    # constant images: only the luminance term is left, (2·μa·μb + C1) / (μa² + μb² + C1)
    c1 = 0.01**2
    expected = (2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1)
    assert ssim(torch.full((1, 1, 16, 16), 0.5), torch.full((1, 1, 16, 16),
                                                            0.25)).item() == pytest.approx(expected, rel=1e-4)
    assert psnr(torch.tensor([0.01])).item() == pytest.approx(20.0)


def test_cubic_controller_timesteps_draw_mostly_high_noise():
    import torch

    from mrgen.jobs.train.stages import stratified_timesteps

    uniform = stratified_timesteps(4000, 1000, torch.device("cpu")).float()
    cubic = stratified_timesteps(4000, 1000, torch.device("cpu"), "cubic").float()
    assert abs(uniform.mean().item() - 500) < 5 and abs(cubic.mean().item() - 750) < 5  # E[1 - u^3] = 3/4
    assert abs((cubic >= 500).float().mean().item() - 0.5 ** (1 / 3)) < 0.01
    assert cubic.min() >= 0 and cubic.max() <= 999
    assert torch.bincount(uniform.long(), minlength=1000).tolist() == [4] * 1000  # stratified: 4 per timestep


def test_warm_start_fine_tunes_the_init_bundles_part_instead_of_a_fresh_one():
    from mrgen.jobs.train.stages import build_task
    from mrgen.models.bundle import build_random_bundle

    bundle = build_random_bundle("tiny", seed=0)  # its controller's zero convolutions are random, a fresh one's zero
    mcfg = TrainConfig.load("tiny").build_model_config()
    common = dict(kl_weight=0.0, augment_p=0.0, prompt_drop_p=0.0, seed=0)
    fresh = build_task("controlnet", mcfg, bundle, **common).trainable
    warm = build_task("controlnet", mcfg, bundle, warm_start=True, **common).trainable
    assert warm is bundle.controlnet and warm.training and all(p.requires_grad for p in warm.parameters())
    out = warm.controlnet_mid_block.weight
    assert out.abs().sum() > 0 and not fresh.controlnet_mid_block.weight.any()
    assert build_task("unet", mcfg, bundle, warm_start=True, **common).trainable is bundle.unet


def test_a_bad_warm_start_or_db_is_refused_before_any_stage_trains(tmp_path):
    """Checked on the driver, so `train all` does not train the autoencoder first and fail at the UNet's start; so is
    the DB, before Ray starts."""
    import dataclasses

    from mrgen.jobs.train.run import run_all, run_training
    from mrgen.models.bundle import build_random_bundle

    config = TrainConfig.load("tiny").with_overrides({"warm_start": True})
    init = str(tmp_path / "no-controller")
    dataclasses.replace(build_random_bundle("tiny", seed=0), controlnet=None).save(init)
    with pytest.raises(ValueError, match="no-controller has none"):
        run_training(config, str(tmp_path / "db"), str(tmp_path / "out"), "controlnet", init=init)
    with pytest.raises(ValueError, match="not all"):
        run_all(config, str(tmp_path / "db"), str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="not an MRGen-DB"):
        run_all(TrainConfig.load("tiny"), str(tmp_path / "db"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()

"""Counted FLOPs (models/flops.py) against what the architectures imply: attention products counted exactly as
derived from the configs, everything else quadratic in the image side, shape-only (meta) counts equal to real ones,
and the paper-scale generator within 1 % of a published count of the same networks."""
from __future__ import annotations

import pytest
import torch

from mrgen.models.bundle import build_random_bundle
from mrgen.models.configs import model_config
from mrgen.models.flops import (PAPER_SCORER, TOKENS, count_flops, decode_flops, denoiser_counts, denoiser_flops,
                                paper_scale_flops, scorer_flops)
from mrgen.models.scorers import ScorerSettings, build_scorer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return build_random_bundle("tiny")


def attention_flops(unet: dict, latent: int, tokens: int, controller: bool = False) -> int:
    """The attention products of a diffusers UNet (or its controller) derived from its config: per transformer
    block at N tokens of width C, self-attention's QKᵀ and AV cost 2·(2·N²·C), cross-attention's 2·(2·N·T·C).
    A level with cross-attention has ``layers`` blocks going down and ``layers + 1`` going up (the controller has
    the way down only); the mid block holds one, at the last level."""
    def block(level: int) -> int:
        n, c = (latent // 2 ** level) ** 2, unet["block_out_channels"][level]
        return 4 * n * n * c + 4 * n * tokens * c

    layers, levels = unet["layers_per_block"], len(unet["block_out_channels"])
    per_level = layers if controller else 2 * layers + 1
    total = sum(per_level * block(i) for i, kind in enumerate(unet["down_block_types"]) if "CrossAttn" in kind)
    return total + block(levels - 1)


def test_doubling_the_side_scales_convolutions_4x_and_self_attention_16x(tiny):
    cfg = model_config("tiny")
    tokens = tiny.text_encoder.context_length
    counts = {size: denoiser_counts(tiny, size) for size in (64, 128, 256)}
    rest = {}
    for size, parts in counts.items():
        latent = size // cfg.downsample_factor
        for part, controller in (("unet", False), ("controller", True)):
            # the only products between activations are attention's, and they are exactly what the config implies
            assert parts[part]["aten.bmm"] == attention_flops(cfg.unet, latent, tokens, controller), (size, part)
        rest[size] = sum(n for ops in parts.values() for op, n in ops.items() if op != "aten.bmm")
    # convolutions and linear layers on image tokens grow with the area; the text's K/V projections and the time
    # embedding do not: a·side² + b exactly, so the second difference is 4× the first
    assert rest[256] - rest[128] == 4 * (rest[128] - rest[64])
    assert 3.5 < rest[128] / rest[64] < 4.0  # b > 0 but small
    total = {size: denoiser_flops(tiny, size) for size in (64, 128)}
    assert total[64] == rest[64] + sum(p["aten.bmm"] for p in counts[64].values())
    # self-attention (16×) pulls the whole above 4×; at the tiny size it is a visible share
    assert 4.0 < total[128] / total[64] < 16.0


def test_decode_is_convolutions_plus_one_self_attention(tiny):
    # the decoder's mid block attends once over the latent's N tokens at the last width C (4·N²·C); everything
    # else is a convolution, exactly 4× per doubling of the side
    cfg = model_config("tiny")

    def convolutions(size: int) -> float:
        n = (size // cfg.downsample_factor) ** 2
        return decode_flops(tiny, size) - 4 * n * n * cfg.vae["block_out_channels"][-1]

    assert convolutions(128) == 4 * convolutions(64) > 0
    with pytest.raises(ValueError, match="multiple"):
        decode_flops(tiny, 66)


def test_shape_only_counts_equal_real_ones(tiny):
    assert denoiser_flops(tiny, meta=True) == denoiser_flops(tiny, meta=False) > 0
    assert decode_flops(tiny, meta=True) == decode_flops(tiny, meta=False) > 0
    assert next(tiny.unet.parameters()).device.type == "cpu"  # the bundle counted is left alone
    sam2 = build_scorer("sam2", ScorerSettings(config_name="tiny", image_size=256, random=True))
    assert scorer_flops(sam2, 3, meta=True) == scorer_flops(sam2, 3, meta=False)


@pytest.mark.parametrize("kind, settings", [("medsam", {}), ("sam2", {"config_name": "tiny", "image_size": 256,
                                                                      "random": True, "prompt": "box"})])
def test_a_candidate_costs_one_embedding_and_a_decode_per_organ(kind, settings):
    scorer = build_scorer(kind, settings, device="meta")
    one, three = scorer_flops(scorer, 1), scorer_flops(scorer, 3)
    for f in (one, three):
        assert f["per_candidate"] == pytest.approx(f["embed"] + f["organs"] * f["decode_per_organ"], rel=1e-12)
        assert f["per_candidate"] == f["embed"] + f["decode"]
    assert one["embed"] == three["embed"] > 10 * one["decode"]  # the image encoder dominates
    assert three["per_candidate"] > one["per_candidate"]
    # all organs in one decoder call against one embedding: linear in the prompts up to the shared positional
    # encoding of the embedding grid
    assert three["decode"] == pytest.approx(3 * one["decode"], rel=0.01)
    with pytest.raises(ValueError, match="organs"):
        scorer_flops(scorer, 0)


def test_paper_scale_matches_published_counts():
    flops = paper_scale_flops(organs=4)
    cfg = model_config("paper")
    assert flops["resolution"] == cfg.resolution == 512
    latent = cfg.latent_size  # 64
    # SD-1.x's UNet at 512² (64² latents, the same widths, heads, layers and 768-wide text as the paper preset):
    # 338.7 G multiply-adds of its convolutions and linear layers (thop, BK-SDM's count_macs_params.py:
    # 338,749,194,240), i.e. 677.5 GFLOP; thop does not count attention's products, derived here (~126 GFLOP).
    # The preset's 16 latent channels (SD: 4) add 0.6 GFLOP at conv_in and conv_out.
    convs_and_linears = flops["unet"] - attention_flops(cfg.unet, latent, TOKENS)
    assert convs_and_linears == pytest.approx(2 * 338_749_194_240, rel=0.01)
    # the controller is the UNet's way down and middle (plus the mask embedding): about a third of the UNet
    assert 0.25 < flops["controller"] / flops["unet"] < 0.5
    assert flops["denoiser_row"] == flops["unet"] + flops["controller"]
    # SD's decoder: 1,240.1 G multiply-adds (same source) + its mid block's self-attention over 64² tokens of 512
    assert flops["decode"] == pytest.approx(2 * 1_240_079_532_032 + 4 * (latent * latent) ** 2 * 512, rel=0.01)
    # SAM2.1-Large (Hiera-L: width 144 doubling per stage, stages 2/6/36/4, 3 global-attention blocks in stage 3,
    # patch stride 4 at 1024²): its linear layers (24·C²·N per block, 34·C²·N for a stage's first, which works
    # on the 4N tokens of the stage before) and global attention (4·N²·C) are most of the embedding; windowed
    # attention, the patch embedding and the feature pyramid add a few percent
    hiera = 0
    for stage, depth in enumerate((2, 6, 36, 4)):
        c, n = 144 * 2 ** stage, (PAPER_SCORER.image_size // 4 // 2 ** stage) ** 2
        hiera += (24 * depth + (10 if stage else 0)) * c * c * n + (3 * 4 * n * n * c if stage == 2 else 0)
    assert 1.0 < flops["filter_embed"] / hiera < 1.1
    assert flops["filter_per_candidate"] == pytest.approx(flops["filter_embed"]
                                                          + 4 * flops["filter_decode_per_organ"], rel=1e-12)
    assert paper_scale_flops(organs=4) == flops  # cached, and a copy
    paper_scale_flops(organs=4)["unet"] = 0
    assert paper_scale_flops(organs=4) == flops


def test_count_flops_counts_products_only():
    a, b = torch.zeros(8, 16, device="meta"), torch.zeros(16, 4, device="meta")
    assert count_flops(lambda: (a @ b).relu() + 1) == {"aten.mm": 2 * 8 * 16 * 4}

"""The paper config is too heavy to build in CI (6.8 GB): it is built on the meta device (no memory)."""
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from mrgen.models.configs import model_config
from mrgen.models.mask_controller import MaskController


def _params(module):
    return sum(p.numel() for p in module.parameters())


def test_paper_config_builds_with_the_release_sizes():
    cfg = model_config("paper")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg.unet)
        vae = AutoencoderKL(**cfg.vae)
        controlnet = MaskController.from_unet(unet, cfg.controlnet, load_weights=False)
    assert next(unet.parameters()).is_meta
    assert _params(unet) == pytest.approx(860e6, rel=0.01)
    assert _params(controlnet) == pytest.approx(361e6, rel=0.01)
    assert _params(vae) == pytest.approx(84e6, rel=0.01)
    assert cfg.resolution == 512 and cfg.downsample_factor == 8 and cfg.latent_size == 64
    assert controlnet.config.conditioning_channels == 1
    assert cfg.unet["cross_attention_dim"] == cfg.text_encoder["width"] == 768


def test_tiny_config_sizes_and_checks():
    cfg = model_config("tiny")
    assert cfg.resolution == 64 and cfg.downsample_factor == 4 and cfg.latent_size == 16
    assert cfg.unet["sample_size"] == 16
    assert cfg.to_dict()["unet"]["cross_attention_dim"] == 64
    with pytest.raises(ValueError, match="downsamples"):
        type(cfg)(name="bad", resolution=64, vae=cfg.vae, unet=cfg.unet, text_encoder=cfg.text_encoder,
                  controlnet={"conditioning_embedding_out_channels": [8, 16, 32, 64]})
    with pytest.raises(ValueError, match="unknown model config"):
        model_config("huge")


def test_overrides_replace_part_kwargs_and_are_checked():
    cfg = model_config("tiny", {"vae": {"latent_channels": 8}, "unet": {"in_channels": 8, "out_channels": 8}})
    assert cfg.vae["latent_channels"] == cfg.unet["in_channels"] == 8
    assert model_config("tiny").vae["latent_channels"] == 16  # the preset itself is untouched
    with pytest.raises(ValueError, match="latent_channels 8 != unet.in_channels 16"):
        model_config("tiny", {"vae": {"latent_channels": 8}})
    with pytest.raises(ValueError, match="not a part"):
        model_config("tiny", {"decoder": {"x": 1}})

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel

from mrgen.models.configs import model_config
from mrgen.models.condition import mask_to_condition
from mrgen.models.mask_controller import MaskController
from mrgen.models.unet import build_unet

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return build_unet(model_config("tiny").unet)


@pytest.fixture(scope="module")
def controller(unet):
    return MaskController.from_unet(unet, model_config("tiny").controlnet)


def test_from_unet_copies_encoder_weights(unet, controller):
    unet_state = unet.state_dict()
    copied = [k for k in controller.state_dict()
              if k.split(".")[0] in ("conv_in", "time_embedding", "down_blocks", "mid_block")]
    assert len(copied) > 50
    for key in copied:
        assert torch.equal(controller.state_dict()[key], unet_state[key]), key
    # the zero convolutions start at zero: a fresh controller does not change the UNet's output
    assert all(torch.count_nonzero(p) == 0 for p in controller.controlnet_down_blocks.parameters())


def _hidden(embedding, cond):
    x = torch.nn.functional.silu(embedding.conv_in(cond))
    for block in embedding.blocks:
        x = torch.nn.functional.silu(block(x))
    return x


def test_mask_signal_survives_the_condition_embedding(unet, controller):
    """A mask must change the embedding's last hidden layer by a useful fraction of its size (diffusers'
    default init leaves ~1e-3 of it, and a trained controller then ignored its masks)."""
    mask = np.zeros((2, 64, 64), np.uint8)
    mask[:, 16:40, 12:44] = 1
    mask[:, 44:52, 20:30] = 3
    with torch.no_grad():
        organ = _hidden(controller.controlnet_cond_embedding, mask_to_condition(mask))
        empty = _hidden(controller.controlnet_cond_embedding, mask_to_condition(np.zeros_like(mask)))
        default = MaskController.model_class.from_unet(unet, conditioning_channels=1,
                                                        conditioning_embedding_out_channels=(16, 32, 64, 64))
        d_organ = _hidden(default.controlnet_cond_embedding, mask_to_condition(mask))
        d_empty = _hidden(default.controlnet_cond_embedding, mask_to_condition(np.zeros_like(mask)))
    ratio = float((organ - empty).abs().mean() / mask_to_condition(mask).abs().mean())
    default_ratio = float((d_organ - d_empty).abs().mean() / mask_to_condition(mask).abs().mean())
    assert ratio > 0.02, ratio  # 0.06 measured
    assert default_ratio < ratio / 20, (default_ratio, ratio)  # 1.5e-4 measured: what the re-init is for
    assert torch.count_nonzero(controller.controlnet_cond_embedding.conv_out.weight) == 0


def test_condition_embedding_downsamples_by_the_autoencoder_factor(unet, controller):
    cond = mask_to_condition(np.ones((2, 64, 64), np.uint8))
    with torch.no_grad():
        emb = controller.controlnet_cond_embedding(cond)
        latents, t = torch.randn(2, 16, 16, 16), torch.tensor([10, 500])
        text = torch.randn(2, 77, 64)
        down, mid = controller(latents, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
        out = unet(latents, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                   mid_block_additional_residual=mid).sample
    assert emb.shape == (2, 32, 16, 16)  # the UNet's first width, at the latent size (×4)
    assert out.shape == latents.shape


def test_save_pretrained_round_trip(controller, tmp_path):
    controller.save_pretrained(tmp_path / "controlnet")
    config = (tmp_path / "controlnet" / "config.json").read_text()
    assert '"_class_name": "ControlNetModel"' in config and '"conditioning_channels": 1' in config
    assert (tmp_path / "controlnet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = MaskController.from_pretrained(tmp_path / "controlnet")
    assert isinstance(loaded, ControlNetModel)
    for (k, v), w in zip(controller.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(v, w), k


def test_mask_to_condition_gives_each_organ_its_own_intensity():
    mask = np.zeros((2, 8, 8), np.uint8)
    for organ in range(1, 7):
        mask[0, organ, :] = organ
    cond = mask_to_condition(mask)
    assert cond.shape == (2, 1, 8, 8) and cond.dtype == torch.float32
    values = {round(float(cond[0, 0, organ, 0]), 6) for organ in range(0, 7)}
    assert len(values) == 7 and min(values) == 0.0
    assert torch.count_nonzero(cond[1]) == 0  # empty mask = empty condition
    assert torch.equal(mask_to_condition(torch.from_numpy(mask)), cond)
    assert float(cond[0, 0, 1, 0]) == 0.5  # organ/background contrast is strong even for id 1
    assert float(mask_to_condition(np.full((1, 1, 1), 255, np.uint8)).max()) < 1.0
    distinct = mask_to_condition(np.arange(256, dtype=np.uint8).reshape(1, 16, 16)).unique()
    assert len(distinct) == 256


def test_linear_mask_encoding():
    mask = np.array([[[0, 1, 6]]], np.uint8)
    assert torch.allclose(mask_to_condition(mask, num_ids=6, encoding="linear")[0, 0, 0], torch.tensor([0, 1 / 6, 1]))
    with pytest.raises(ValueError, match="encoding"):
        mask_to_condition(mask, encoding="rgb")


def test_mask_to_condition_rejects_bad_masks():
    with pytest.raises(ValueError, match="integer"):
        mask_to_condition(np.zeros((1, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"\[0, 6\]"):
        mask_to_condition(np.full((1, 4, 4), 7, np.uint8), num_ids=6)
    with pytest.raises(ValueError, match="shape"):
        mask_to_condition(np.zeros((4, 4), np.uint8))

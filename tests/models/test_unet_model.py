import pytest
import torch

from mrgen.models.configs import model_config
from mrgen.models.scheduler import build_scheduler
from mrgen.models.unet import build_unet, drop_prompts

torch.set_num_threads(1)


def test_tiny_unet_predicts_noise_shape():
    unet = build_unet(model_config("tiny").unet)
    with torch.no_grad():
        out = unet(torch.randn(2, 16, 8, 8), torch.tensor([1, 999]), encoder_hidden_states=torch.randn(2, 77, 64))
    assert out.sample.shape == (2, 16, 8, 8)


def test_prompt_drop_frequency_is_ten_percent():
    g = torch.Generator().manual_seed(0)
    prompts = [f"prompt {i}" for i in range(5000)]
    dropped = drop_prompts(prompts, generator=g)
    empty = sum(p == "" for p in dropped)
    # binomial(5000, 0.1): mean 500, sd 21.2; ±5 sd
    assert 394 < empty < 606
    assert all(d in ("", p) for d, p in zip(dropped, prompts))
    assert drop_prompts(prompts[:10], p=0.0) == prompts[:10]
    assert drop_prompts(prompts[:10], p=1.0) == [""] * 10
    with pytest.raises(ValueError, match="probability"):
        drop_prompts(prompts, p=1.5)


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "dpm", "unipc"])
def test_schedulers_share_the_training_schedule(kind):
    scheduler = build_scheduler(kind)
    c = scheduler.config
    assert (c.num_train_timesteps, c.beta_start, c.beta_end, c.beta_schedule, c.prediction_type) == (
        1000, 0.00085, 0.012, "scaled_linear", "epsilon")
    ddpm = build_scheduler("ddpm")
    assert torch.allclose(scheduler.alphas_cumprod, ddpm.alphas_cumprod)
    if kind == "dpm":
        assert c.algorithm_type == "dpmsolver++"
    if kind == "unipc":  # diffusers' setting for guided sampling
        assert (c.predict_x0, c.solver_order, c.solver_type) == (True, 2, "bh2")
    if kind == "ddim":
        assert c.set_alpha_to_one is False and c.steps_offset == 1
    with pytest.raises(ValueError, match="sampler"):
        build_scheduler("euler")

import pytest
import torch

from mrgen.models.autoencoder import (KL_WEIGHT, augment, build_autoencoder, decode_latents, encode_latents,
                                      from_model_range, measure_latent_scaling, to_model_range, vae_loss)
from mrgen.models.configs import model_config

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return build_autoencoder(model_config("tiny").vae)


def test_tiny_shapes_one_channel_latent_16_times_4(vae):
    images = torch.rand(2, 64, 64)
    with torch.no_grad():
        z = encode_latents(vae, images, latent_scaling=1.0)
        out = decode_latents(vae, z, latent_scaling=1.0)
    assert z.shape == (2, 16, 16, 16)
    assert out.shape == (2, 1, 64, 64) and out.min() >= 0 and out.max() <= 1


def test_model_range_round_trip():
    images = torch.rand(3, 8, 8)
    assert torch.allclose(from_model_range(to_model_range(images))[:, 0], images, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        to_model_range(torch.rand(2, 3, 8, 8))


def test_vae_loss_is_mse_plus_weighted_kl_and_trains(vae):
    images = torch.rand(2, 1, 64, 64)
    loss, parts = vae_loss(vae, images, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.allclose(loss.detach(), parts["mse"] + KL_WEIGHT * parts["kl"])
    assert parts["kl"] > 0
    loss.backward()
    grads = [p.grad for p in vae.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    vae.zero_grad(set_to_none=True)


def _variants(img):
    return [img.flip(-1), img.flip(-2), *(torch.rot90(img, k, dims=(-2, -1)) for k in (1, 2, 3))]


def test_augment_uses_flips_and_rotations_only():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(50, 1, 6, 6)
    assert torch.equal(augment(images, p=0.0, generator=g), images)
    out = augment(images, p=1.0, generator=g)
    seen = set()
    for img, aug in zip(images, out):
        matches = [i for i, v in enumerate(_variants(img)) if torch.equal(v, aug)]
        assert matches, "an augmented image is not a flip or 90/180/270 rotation of its input"
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3, 4}


def test_augment_probability_is_about_twenty_percent():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2000, 1, 4, 4)
    changed = (augment(images, generator=g) != images).flatten(1).any(1).sum().item()
    # binomial(2000, 0.2): mean 400, sd 17.9; ±5 sd
    assert 310 < changed < 490


def test_measured_latent_scaling_gives_unit_std(vae):
    images = torch.rand(8, 64, 64)
    scaling = measure_latent_scaling(vae, images, batch_size=8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = encode_latents(vae, images, scaling, generator=torch.Generator().manual_seed(0))
    assert z.std().item() == pytest.approx(1.0, rel=1e-3)

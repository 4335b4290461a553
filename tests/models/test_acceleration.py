"""models/acceleration.py: ``accelerate`` sets up copies of the generator's networks (the bundle given keeps its own),
or the bundle's own with ``inplace``; the pipeline samples with the result; settings it cannot honour are refused
before anything is copied."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mrgen.models.acceleration import accelerate
from mrgen.models.bundle import build_random_bundle
from mrgen.models.pipeline import MRGenPipeline

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return build_random_bundle("tiny")


def _conv_weight(module: torch.nn.Module) -> torch.Tensor:
    return next(m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d))


def test_copies_in_dtype_and_channels_last_and_samples(tiny):
    fast = accelerate(tiny, dtype="bfloat16", channels_last=True)
    for name in ("vae", "unet", "controlnet"):
        assert getattr(fast, name) is not getattr(tiny, name) and getattr(fast, name).dtype == torch.bfloat16
        assert getattr(tiny, name).dtype == torch.float32  # the bundle given is untouched
    assert fast.text_encoder is tiny.text_encoder and fast.manifest == tiny.manifest
    for module in (fast.unet, fast.controlnet):
        assert _conv_weight(module).is_contiguous(memory_format=torch.channels_last)
    assert _conv_weight(tiny.unet).is_contiguous()
    assert _conv_weight(fast.vae).is_contiguous()  # channels_last is the denoiser's only
    mask = np.zeros((1, tiny.resolution, tiny.resolution), np.uint8)
    mask[0, 16:40, 16:40] = 1
    images = MRGenPipeline(fast).generate(["T2 SPIR MRI, abdomen"], mask, 2, steps=2, organ_maps={1: "liver"})
    assert images.shape == (2, tiny.resolution, tiny.resolution) and np.isfinite(images).all()


def test_nothing_to_change_keeps_the_modules_and_inplace_changes_them():
    bundle = build_random_bundle("tiny")
    same = accelerate(bundle)
    assert same is not bundle and same.unet is bundle.unet and same.vae is bundle.vae
    unet = bundle.unet
    assert accelerate(bundle, compile_mode="default", inplace=True) is bundle
    assert bundle.unet is unet and bundle.unet._compiled_call_impl is not None  # compiled lazily: nothing ran
    assert bundle.vae._compiled_call_impl is None  # only UNet and controller are compiled
    with pytest.raises(ValueError, match="compiled already"):
        accelerate(bundle, compile_mode="default")


@pytest.mark.parametrize("kwargs, match", [
    ({"compile_mode": "reduce-overhead"}, "needs a CUDA device"),
    ({"compile_mode": "fastest"}, "compile_mode must be one of"),
    ({"dtype": "float8"}, "dtype must be one of"),
])
def test_refuses_what_it_cannot_do(tiny, kwargs, match):
    with pytest.raises(ValueError, match=match):
        accelerate(tiny, device="cpu", **kwargs)

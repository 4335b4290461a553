"""Counted FLOPs of the generator (one denoiser row, one decode) and of the filter (one candidate's scoring).

The count is ``torch.utils.flop_counter.FlopCounterMode``'s: 2 FLOPs per multiply-add of every convolution, matmul
and attention product (``aten.convolution``, ``mm``, ``addmm``, ``bmm``, ...), nothing for elementwise ops, norms,
softmax or resizes. Attention runs on SDPA's math backend while counting, whose two products are counted on every
device (fused kernels are not counted on the CPU's).

``meta=True`` (the default) counts shape-only copies: each model is rebuilt from its own config on PyTorch's meta
device, where every op propagates shapes and computes nothing. A count then costs well under a second whatever the
model's size and wherever its weights are, never touches the model counted, and equals a real forward's count
exactly (``tests/models/test_flops.py``). ``meta=False`` runs the given models on their own device.

:func:`paper_scale_flops` is the paper-scale cost (the ``paper`` preset's generator at 512², SAM2.1-Large at 1024²)
counted that way, without paper-size weights: ~2-3 s on a 2-core CPU the first time (SAM2's Hiera computes
its drop-path rates with ``.item()`` while being built, so SAM2 is built on the CPU, ~1-2 s, and then moved to the
meta device), then cached.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mrgen.models.autoencoder import build_autoencoder, decode_latents
from mrgen.models.bundle import ModelBundle
from mrgen.models.manifest import new_manifest
from mrgen.models.configs import model_config
from mrgen.models.mask_controller import MaskController
from mrgen.models.medsam_scorer import SIZE as MEDSAM_SIZE
from mrgen.models.medsam_scorer import MedSamScorer
from mrgen.models.sam2_scorer import Sam2Scorer, to_sam_image
from mrgen.models.scorer_base import ScorerSettings, organ_boxes
from mrgen.models.unet import build_unet

META = torch.device("meta")
TOKENS = 77  # prompt tokens when a bundle has no text encoder: the release's BiomedCLIP input (and the paper preset's)
TIMESTEP = 500  # any timestep: the count does not depend on it
# the paper preset's filter (jobs/synthesis/config.py, serving/config.py): SAM2.1-Large at 1024², mask prompts
PAPER_SCORER = ScorerSettings(config_name="large", image_size=1024, random=True)


def count_flops(fn: Callable[[], Any]) -> dict[str, int]:
    """FLOPs of calling ``fn()`` by aten op (``"aten.convolution"``, ``"aten.bmm"``, ...), in inference mode with
    SDPA on its math backend."""
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}


def _on_meta(module: torch.nn.Module) -> bool:
    return next(module.parameters()).device.type == "meta"


def _shape_only(module: torch.nn.Module | None, meta: bool) -> torch.nn.Module | None:
    """A diffusers model itself, or (``meta``) the same model rebuilt from its config on the meta device."""
    if module is None or not meta or _on_meta(module):
        return module
    with META:
        return type(module).from_config(module.config)


def _side(bundle: ModelBundle, size: int | None) -> tuple[int, int]:
    """(image side, autoencoder factor); the side must be a multiple of the factor."""
    if bundle.vae is None:
        raise ValueError("FLOPs of a bundle need its vae (the latent side follows from the autoencoder's factor)")
    factor = 2 ** (len(bundle.vae.config.block_out_channels) - 1)
    size = int(size or bundle.resolution)
    if size <= 0 or size % factor:
        raise ValueError(f"image side {size} must be a positive multiple of the autoencoder's factor {factor}")
    return size, factor


def _text_shape(bundle: ModelBundle) -> tuple[int, int]:
    """(tokens, width) of the states the UNet cross-attends to: the bundle's own text encoding of ``""``."""
    if bundle.text_encoder is not None:
        return tuple(bundle.text_encoder.encode([""]).shape[1:])
    return TOKENS, int(bundle.unet.config.cross_attention_dim)


def denoiser_counts(bundle: ModelBundle, size: int | None = None, meta: bool = True) -> dict[str, dict[str, int]]:
    """FLOPs by op of one denoiser row at batch 1 and image side ``size`` (default the bundle's resolution):
    ``{"controller": {...}, "unet": {...}}``, the controller's forward (empty without one) and the UNet's forward
    with its residuals."""
    size, factor = _side(bundle, size)
    unet, controller = _shape_only(bundle.unet, meta), _shape_only(bundle.controlnet, meta)
    device, dtype = (META, torch.float32) if meta else (unet.device, unet.dtype)
    x = torch.zeros(1, int(unet.config.in_channels), size // factor, size // factor, device=device, dtype=dtype)
    text = torch.zeros(1, *_text_shape(bundle), device=device, dtype=dtype)
    t = torch.tensor([TIMESTEP], device=device)
    residuals: dict[str, Any] = {}

    def control() -> None:
        cond = torch.zeros(1, int(controller.config.conditioning_channels), size, size, device=device, dtype=dtype)
        down, mid = controller(x, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
        residuals.update(down_block_additional_residuals=down, mid_block_additional_residual=mid)

    counts = {"controller": count_flops(control) if controller is not None else {}}
    counts["unet"] = count_flops(lambda: unet(x, t, encoder_hidden_states=text, **residuals))
    return counts


def denoiser_flops(bundle: ModelBundle, size: int | None = None, meta: bool = True) -> float:
    """FLOPs of one denoiser row: the controller + UNet forward at batch 1 and image side ``size`` (default the
    bundle's resolution). A sampling step costs this per candidate, twice with classifier-free guidance."""
    return float(sum(sum(ops.values()) for ops in denoiser_counts(bundle, size, meta).values()))


def decode_flops(bundle: ModelBundle, size: int | None = None, meta: bool = True) -> float:
    """FLOPs of one autoencoder decode of a latent for image side ``size`` (default the bundle's resolution)."""
    size, factor = _side(bundle, size)
    vae = _shape_only(bundle.vae, meta)
    device, dtype = (META, torch.float32) if meta else (vae.device, vae.dtype)
    latent = torch.zeros(1, int(vae.config.latent_channels), size // factor, size // factor, device=device,
                         dtype=dtype)
    return float(sum(count_flops(lambda: decode_latents(vae, latent, bundle.latent_scaling)).values()))


def _organ_mask(side: int, organs: int) -> np.ndarray:
    """A ``side``² mask holding ``organs`` side-by-side rectangles, ids 1..organs."""
    if not 1 <= organs <= side:
        raise ValueError(f"organs must be between 1 and the image side {side}, got {organs}")
    mask = np.zeros((side, side), np.int32)
    for k, cols in enumerate(np.array_split(np.arange(side), organs)):
        mask[side // 4: 3 * side // 4, cols[0]: cols[-1] + 1] = k + 1
    return mask


def _shape_only_scorer(scorer: Sam2Scorer | MedSamScorer) -> Sam2Scorer | MedSamScorer:
    """The scorer rebuilt on the meta device from its settings (SAM2 untrained: weights change no count)."""
    if _on_meta(scorer.model):
        return scorer
    settings = scorer.settings
    if isinstance(scorer, Sam2Scorer):
        settings = settings.model_copy(update={"checkpoint": None, "random": True})
    return type(scorer)(settings, device="meta")


def scorer_flops(scorer: Sam2Scorer | MedSamScorer, organs: int = 1, meta: bool = True) -> dict[str, float]:
    """FLOPs of scoring one candidate with ``organs`` organs: one image embedding (``embed``) and one decoder call
    prompting every organ (``decode``, its share per organ ``decode_per_organ``), as the scorer's ``score`` runs
    them; ``per_candidate`` = embed + decode. Prompts are the scorer's own (LiteMedSAM: boxes; SAM2: its settings'
    ``prompt``, mask by default). Images enter at the scorer's input side (its encoder resizes any other side).

    Counted through the scorer's own embedding and decoding steps (``score`` reads its IoUs back as Python floats,
    which the meta device cannot)."""
    scorer = _shape_only_scorer(scorer) if meta else scorer
    sam2 = isinstance(scorer, Sam2Scorer)
    side = (scorer.settings.image_size or 1024) if sam2 else MEDSAM_SIZE
    mask, image = _organ_mask(side, organs), np.zeros((side, side), np.float32)
    ids = list(range(1, organs + 1))
    if sam2:
        _, masks, boxes = scorer._organ_prompts(mask, ids)
        embed = count_flops(lambda: scorer.predictor.set_image_batch([to_sam_image(image)]))
        decode = count_flops(lambda: scorer._decode(0, masks, boxes, (side, side)))
    else:
        boxes = torch.from_numpy(organ_boxes(mask, ids)).to(scorer.device)  # already at LiteMedSAM's side
        embedding: list[torch.Tensor] = []
        embed = count_flops(lambda: embedding.append(scorer._embed([image])[0]))
        decode = count_flops(lambda: scorer._decode(embedding[0], boxes, (side, side)))
    e, d = float(sum(embed.values())), float(sum(decode.values()))
    return {"organs": organs, "embed": e, "decode": d, "decode_per_organ": d / organs, "per_candidate": e + d}


def _meta_generator(name: str) -> ModelBundle:
    """The ``name`` preset's autoencoder, UNet and controller on the meta device (no text encoder, no weights)."""
    cfg = model_config(name)
    with META:
        unet = build_unet(cfg.unet)
        controller = MaskController.from_unet(unet, cfg.controlnet, load_weights=False)
        vae = build_autoencoder(cfg.vae)
    return ModelBundle(vae=vae, unet=unet, controlnet=controller, text_encoder=None,
                       manifest=new_manifest(cfg.resolution, latent_scaling=1.0, model_config=name))


@lru_cache(maxsize=1)
def _paper_generator() -> dict[str, float]:
    bundle = _meta_generator("paper")
    counts = denoiser_counts(bundle)
    parts = {part: float(sum(ops.values())) for part, ops in counts.items()}
    return {"resolution": bundle.resolution, "unet": parts["unet"], "controller": parts["controller"],
            "denoiser_row": parts["unet"] + parts["controller"], "decode": decode_flops(bundle)}


@lru_cache(maxsize=1)
def _paper_scorer() -> Sam2Scorer:
    return Sam2Scorer(PAPER_SCORER, device="meta")


@lru_cache(maxsize=8)
def _paper_scale(organs: int) -> dict[str, float]:
    sam2 = scorer_flops(_paper_scorer(), organs)
    return {**_paper_generator(), "filter_size": PAPER_SCORER.image_size, "organs": organs,
            "filter_embed": sam2["embed"], "filter_decode_per_organ": sam2["decode_per_organ"],
            "filter_per_candidate": sam2["per_candidate"]}


def paper_scale_flops(organs: int = 4) -> dict[str, float]:
    """FLOPs at paper scale, counted on the meta device (constants of the configs, cached): ``unet``,
    ``controller`` and their sum ``denoiser_row`` (one row of a sampling step: the ``paper`` preset at 512²,
    77 prompt tokens of width 768), ``decode`` (one 512² decode) and the filter's ``filter_embed``,
    ``filter_decode_per_organ`` and ``filter_per_candidate`` (SAM2.1-Large at 1024², the paper preset's mask
    prompts, ``organs`` organs in one decoder call). ~3 s the first time (SAM2 is built on the CPU), then free."""
    return dict(_paper_scale(int(organs)))

"""PNG sample grids written during training: stage 1 reconstructions, stage 2 one sample per prompt,
stage 3 masks beside generated images."""
from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from mrgen.models.autoencoder import reconstruct
from mrgen.models.pipeline import MRGenPipeline


def grid_png(columns: list[list[np.ndarray]], titles: list[str] | None = None, pad: int = 2) -> bytes:
    """Images as columns side by side (each column a list of [H,W] float [0,1] arrays) → PNG bytes."""
    h, w = columns[0][0].shape
    rows = max(len(c) for c in columns)
    top = 12 if titles else 0
    sheet = Image.new("L", (len(columns) * (w + pad) + pad, top + rows * (h + pad) + pad), color=0)
    for ci, column in enumerate(columns):
        for ri, img in enumerate(column):
            tile = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), mode="L")
            sheet.paste(tile, (pad + ci * (w + pad), top + pad + ri * (h + pad)))
    if titles:
        draw = ImageDraw.Draw(sheet)
        for ci, title in enumerate(titles):
            draw.text((pad + ci * (w + pad), 0), title[: max(1, w // 6)], fill=255)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def mask_preview(mask: np.ndarray) -> np.ndarray:
    """Organ ids → distinct grey levels for display."""
    m = mask.astype(np.float32)
    return m / max(1.0, float(m.max()))


@torch.no_grad()
def sample_grid(stage: str, task, model: torch.nn.Module, bundle, examples: dict[str, Any], steps: int,
                seed: int) -> bytes:
    """The stage's grid from the current weights; ``examples`` = a few decoded rows kept from the first batch."""
    images = examples["image"]
    if stage == "vae":
        vae = model
        was_training = vae.training
        vae.eval()
        recon = reconstruct(vae, torch.from_numpy(images)).numpy()[:, 0]
        vae.train(was_training)
        return grid_png([list(images), list(recon)], ["input", "recon"])
    model_was_training = model.training
    model.eval()
    try:
        if stage == "unet":
            prompts = list(dict.fromkeys(examples["prompt"]))[: len(images)]
            current = dataclasses.replace(bundle, unet=model)
            out = MRGenPipeline(current).generate(prompts, None, num_candidates=1, steps=steps,
                                                  seeds=[seed + i for i in range(len(prompts))])
            return grid_png([list(out)], None)
        masks = examples["mask"]
        current = dataclasses.replace(bundle, controlnet=model)
        out = MRGenPipeline(current).generate(list(examples["prompt"]), masks, num_candidates=1, steps=steps,
                                              seeds=[seed + i for i in range(len(masks))],
                                              organ_maps=examples.get("organ_map"))
        return grid_png([[mask_preview(m) for m in masks], list(out), list(images)], ["mask", "generated", "real"])
    finally:
        model.train(model_was_training)

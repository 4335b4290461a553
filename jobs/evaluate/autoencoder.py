"""Autoencoder reconstruction quality on a held-out split: PSNR / SSIM / MSE (paper Table 4).

Images are compared in the MRGen-DB range [0, 1]; the reconstruction decodes the posterior mode.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from mrgen.jobs.train.data import decode, read_slices
from mrgen.models.autoencoder import reconstruct
from mrgen.models.bundle import ModelBundle
from mrgen.models.metrics.reconstruction import psnr, ssim
from mrgen.platform.progress import Progress


def evaluate_autoencoder(bundle_uri: str, db_uri: str, split: str = "test", batch_size: int = 16,
                         limit: int | None = None, **filters: Any) -> dict[str, Any]:
    """Mean PSNR (dB), SSIM and MSE over the ``split`` slices of ``db_uri`` (per-image metrics, then averaged)."""
    vae = ModelBundle.load(bundle_uri, parts=("vae",)).vae.eval()
    ds = read_slices(db_uri, ["height", "width", "image"], split=split, **filters)
    if limit:
        ds = ds.limit(limit)
    totals = {"psnr": 0.0, "ssim": 0.0, "mse": 0.0}
    n = 0
    progress = Progress(f"eval ae {split}")
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        images = torch.from_numpy(decode(batch)["image"]).unsqueeze(1)
        recon = reconstruct(vae, images)
        mse = ((recon - images) ** 2).flatten(1).mean(1)
        totals["mse"] += float(mse.sum())
        totals["psnr"] += float(psnr(mse).sum())
        totals["ssim"] += float(ssim(recon, images).sum())
        n += len(images)
        progress.update(len(images))
    if n == 0:
        raise ValueError(f"{db_uri}: no slices in split {split!r} {filters or ''}")
    result = {k: v / n for k, v in totals.items()}
    result.update(slices=n, split=split, bundle=bundle_uri, db=db_uri)
    if not math.isfinite(result["psnr"]):
        raise ValueError(f"PSNR is {result['psnr']}: reconstructions hold NaN or inf")
    return result

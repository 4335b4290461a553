"""Autoencoder reconstruction quality on a held-out split: PSNR / SSIM / MSE (paper Table 4).

Images are compared in the MRGen-DB range [0, 1]; the reconstruction decodes the posterior mode.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from mrgen.platform.progress import Progress


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()[None, None]


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM of [B,1,H,W] images (Gaussian 11x11, σ 1.5, K1 0.01, K2 0.03; Wang et al. 2004)."""
    w = _gaussian_window().to(a)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = F.conv2d(a, w), F.conv2d(b, w)
    var_a = F.conv2d(a * a, w) - mu_a**2
    var_b = F.conv2d(b * b, w) - mu_b**2
    cov = F.conv2d(a * b, w) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def psnr(mse: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def evaluate_autoencoder(bundle_uri: str, db_uri: str, split: str = "test", batch_size: int = 16,
                         limit: int | None = None, **filters: Any) -> dict[str, Any]:
    """Mean PSNR (dB), SSIM and MSE over the ``split`` slices of ``db_uri`` (per-image metrics, then averaged)."""
    from mrgen.jobs.train.data import decode, read_slices
    from mrgen.models.autoencoder import reconstruct
    from mrgen.models.bundle import ModelBundle

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

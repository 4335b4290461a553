"""The Fréchet distance of two sets of image features (FID: paper §4.1 / Table 2); the features come from
``mrgen.jobs.evaluate.fid``'s extractors."""
from __future__ import annotations

import numpy as np
from scipy import linalg


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """‖μ1−μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½); an ε·I offset stabilises a singular product (pytorch-fid)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature sizes differ: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in the matrix square root")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    out = linalg.sqrtm(matrix)
    return out[0] if isinstance(out, tuple) else out  # older scipy returned (sqrtm, error) with disp=False


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors [N, D], got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two sets of feature vectors ``[N, D]`` and ``[M, D]``: :func:`frechet_distance` of their means and
    covariances, with Tr((Σa Σb)^½) taken from the features rather than from a D×D matrix square root.

    With Σa = AᵀA and Σb = BᵀB (A, B the centred features over √(N-1), √(M-1)), the eigenvalues of Σa Σb are the
    squared singular values of A Bᵀ, so the trace is the sum of those singular values: an N×M SVD (A and B reduced to
    their R factors when taller than wide, at most D×D) instead of ``sqrtm`` of a 2048² product (64-96 s a call on
    a busy 2-core machine here, 0.1-2 s this way), and no ε offset for the singular product of small sets."""
    mu_a, sigma_a = feature_stats(a)
    mu_b, sigma_b = feature_stats(b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature sizes differ: {mu_a.shape} vs {mu_b.shape}")
    factors = []
    for x, mu in ((a, mu_a), (b, mu_b)):
        x = (np.asarray(x, np.float64) - mu) / np.sqrt(len(x) - 1)
        factors.append(np.linalg.qr(x, mode="r") if len(x) > x.shape[1] else x)
    trace_sqrt = np.linalg.svd(factors[0] @ factors[1].T, compute_uv=False).sum()
    diff = mu_a - mu_b
    return float(diff.dot(diff) + np.trace(sigma_a) + np.trace(sigma_b) - 2 * trace_sqrt)

"""Kernel Inception Distance of two sets of image features (KID, Bińkowski et al. 2018, "Demystifying MMD GANs").

KID is the squared maximum mean discrepancy between the two feature distributions under the cubic polynomial
kernel k(x, y) = (x·y / d + 1)³, estimated without bias: unlike FID, its expected value does not depend on how
many images were drawn, so it compares sets of a few hundred images where FID's bias dominates. The estimate is
averaged over random subsets drawn from both sets, and its spread over them is reported beside it (as torch-fidelity
does; clean-fid reports only the mean).

Subset size: at most 1000 (the reference implementations' default), and at most half the smaller set. Half, not all:
two equal sets of n images give n-subsets that are permutations of the whole sets, so every subset gives the same
value and the spread would be exactly 0. The mean over random half-subsets is still the full-set estimate (an
average of unbiased estimates; over every subset it is exactly the full U-statistic); the spread is that of an
estimate from half as many images, so it errs on the wide side.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUBSETS = 100  # torch-fidelity's and clean-fid's default
SUBSET_SIZE = 1000
FULL_KERNEL_ROWS = 3000  # up to this many rows a set, the kernels are computed once and each subset indexes them


@dataclass(frozen=True)
class KID:
    """The mean of the unbiased MMD² over ``subsets`` random subsets of ``subset_size`` images from each set, and
    its standard deviation over them."""

    mean: float
    std: float
    subsets: int
    subset_size: int


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel (x·y / d + 1)³ between the rows of ``x`` [M, D] and ``y`` [N, D] (scikit-learn's
    ``polynomial_kernel`` at its defaults)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased estimate of MMD² between the distributions of the rows of ``x`` and ``y`` (at least 2 each)."""
    return _mmd2(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y))


def _mmd2(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """MMD² from the kernel matrices; the within-set means leave out each row's kernel with itself."""
    m, n = len(kxx), len(kyy)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def kid_from_features(a: np.ndarray, b: np.ndarray, subsets: int = SUBSETS, subset_size: int = SUBSET_SIZE,
                      seed: int = 0) -> KID:
    """KID between feature sets ``[N, D]`` and ``[M, D]``: the unbiased MMD² over ``subsets`` random subsets (the same
    ``seed``, the same subsets) of min(``subset_size``, N // 2, M // 2) rows of each."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two feature sets [N, D] of one width, got shapes {a.shape} and {b.shape}")
    size = min(subset_size, len(a) // 2, len(b) // 2)
    if size < 2:
        raise ValueError(f"KID needs at least 4 feature vectors in each set, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    picks = [(rng.choice(len(a), size, replace=False), rng.choice(len(b), size, replace=False))
             for _ in range(subsets)]
    if max(len(a), len(b)) <= FULL_KERNEL_ROWS:  # three matrix products, not three a subset: the same values
        kaa, kbb, kab = polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b)
        values = np.array([_mmd2(kaa[np.ix_(i, i)], kbb[np.ix_(j, j)], kab[np.ix_(i, j)]) for i, j in picks])
    else:
        values = np.array([mmd2_unbiased(a[i], b[j]) for i, j in picks])
    return KID(float(values.mean()), float(values.std()), subsets, size)

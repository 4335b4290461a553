"""MR signal of the phantom: per-tissue relaxation values, pulse-sequence equations, bias field and noise.

Every voxel holds a water and a fat component (proton densities ``pw``, ``pf``). A spin echo gives each
component ``S = PD·(1−e^{−TR/T1})·e^{−TE/T2}``; STIR adds an inversion ``(1 − 2e^{−TI/T1} + e^{−TR/T1})``
with TI nulling fat. Fat-suppressed sequences keep 5 % of the fat signal. The dual-echo gradient echo adds the
components in phase ``|W + F|`` or opposed ``|W − F|``, so voxels holding both (fatty liver, partial-volume
voxels at fat-water boundaries) darken out of phase. Partial volume is an in-plane blur of W and F before they
are combined. A smooth multiplicative bias field and Rician noise follow.

Values are typical 1.5 T figures (T1/T2 in ms, PD relative, ADC in 10^-3 mm²/s).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from mrgen.datasets.modality import canonical_modality
from mrgen.datasets.phantom_anatomy import LIVER, TISSUE_NAMES, VISCERA

FAT_T1, FAT_T2 = 260.0, 80.0
FAT_SUPPRESSION = 0.05

# name: (PD, water T1, water T2, fat fraction, ADC, contrast enhancement 1/s per unit)
TISSUES: dict[str, tuple[float, float, float, float, float, float]] = {
    "air": (0.0, 1000, 50, 0.0, 0.0, 0.0),
    "fat": (1.0, 1000, 40, 0.9, 0.1, 0.2),
    "muscle": (0.75, 1000, 40, 0.02, 1.4, 1.0),
    "viscera": (0.85, 1100, 70, 0.3, 1.6, 1.5),
    "liver": (0.75, 580, 45, 0.0, 1.1, 2.0),
    "spleen": (0.8, 1060, 80, 0.0, 0.8, 3.0),
    "kidney": (0.85, 850, 75, 0.0, 2.0, 5.0),
    "bladder": (1.0, 3000, 1500, 0.0, 2.9, 0.0),
    "prostate": (0.85, 1300, 95, 0.0, 1.3, 2.0),
    "vessel": (0.3, 1440, 250, 0.0, 4.0, 8.0),
    "csf": (1.0, 4000, 2000, 0.0, 3.0, 0.0),
    "marrow": (0.8, 900, 50, 0.4, 0.5, 1.0),
    "lung": (0.08, 1300, 40, 0.0, 1.0, 0.5),
    "heart": (0.8, 1000, 50, 0.0, 1.5, 3.0),
    "bile": (1.0, 2500, 800, 0.0, 2.8, 0.0),
    "stomach": (0.9, 2500, 600, 0.0, 2.5, 0.5),
    "rectum": (0.6, 1000, 60, 0.2, 1.2, 1.0),
}
assert tuple(TISSUES) == TISSUE_NAMES


@dataclass(frozen=True)
class Sequence:
    """A pulse sequence: times in ms; ``phase`` is +1 in-phase / -1 opposed; ``diffusion_b`` in s/mm²."""

    kind: str  # "se" (spin echo / gradient echo approximation), "stir", "adc"
    tr: float = 500.0
    te: float = 10.0
    ti: float = 0.0
    fat_scale: float = 1.0
    phase: int = 1
    diffusion_b: float = 0.0
    contrast: bool = False


SEQUENCES: dict[str, Sequence] = {
    "T1": Sequence("se", tr=500, te=12),
    "T1 in-phase": Sequence("se", tr=180, te=4.6),
    "T1 out-of-phase": Sequence("se", tr=180, te=2.3, phase=-1),
    "T1 fat-sat": Sequence("se", tr=500, te=12, fat_scale=FAT_SUPPRESSION),
    "T1 C+": Sequence("se", tr=500, te=12, fat_scale=FAT_SUPPRESSION, contrast=True),
    "T2": Sequence("se", tr=4000, te=90),
    "T2 SPIR": Sequence("se", tr=2000, te=80, fat_scale=FAT_SUPPRESSION),
    "T2 HASTE": Sequence("se", tr=10000, te=100),
    "STIR": Sequence("stir", tr=4000, te=60, ti=FAT_T1 * np.log(2)),
    "PD": Sequence("se", tr=3000, te=15),
    "DWI": Sequence("se", tr=4000, te=70, fat_scale=FAT_SUPPRESSION, diffusion_b=800),
    "ADC": Sequence("adc"),
}


def sequence_for(label: str) -> Sequence:
    name = canonical_modality(label)
    if name not in SEQUENCES:
        raise ValueError(f"the phantom cannot render modality {label!r} (resolved to {name!r}); "
                         f"renderable: {', '.join(SEQUENCES)}")
    return SEQUENCES[name]


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear interpolation from n_in control points spanning the axis to n_out samples."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.clip(np.floor(pos).astype(int), 0, max(n_in - 2, 0))
    frac = pos - lo
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1 - frac
    if n_in > 1:
        m[np.arange(n_out), lo + 1] += frac
    return m


def smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], cells: tuple[int, int, int]) -> np.ndarray:
    """A smooth random field of zero mean and unit std, by separable interpolation of a coarse grid."""
    coarse = rng.standard_normal(cells).astype(np.float32)
    mz, my, mx = (_interp_matrix(n, c) for n, c in zip(shape, cells))
    out = np.einsum("zi,yj,xk,ijk->zyx", mz, my, mx, coarse, optimize=True)
    return (out - out.mean()) / (out.std() + 1e-8)


def tissue_maps(tissue: np.ndarray, liver_fat: float, jitter: np.ndarray,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-voxel pw, pf, T1, T2, ADC and enhancement from the tissue indices (with per-volume variation)."""
    table = np.array(list(TISSUES.values()), np.float32)
    table[:, 0] *= jitter[:, 0]
    table[:, 1] *= jitter[:, 1]
    table[:, 2] *= jitter[:, 2]
    pd, t1, t2, ff, adc, enh = (table[:, i][tissue] for i in range(6))
    z, h, w = tissue.shape
    # Bowel loops within mesenteric fat; a fat fraction for the liver (steatosis varies per volume).
    bowel = smooth_field(rng, tissue.shape, (max(z // 3, 2), 10, 10)) + 0.6 * smooth_field(rng, tissue.shape,
                                                                                           (max(z // 2, 2), 24, 24))
    ff = np.where(tissue == VISCERA, np.clip(0.35 + 0.3 * bowel, 0.02, 0.9), ff)
    ff = np.where(tissue == LIVER, liver_fat, ff)
    texture = 1 + 0.04 * smooth_field(rng, tissue.shape, (max(z // 2, 2), 16, 16))
    pd = pd * texture
    return {"pw": pd * (1 - ff), "pf": pd * ff, "t1": t1, "t2": t2, "adc": adc, "enh": enh}


def _relaxation(seq: Sequence, t1: np.ndarray | float, t2: np.ndarray | float) -> np.ndarray:
    if seq.kind == "stir":
        return (1 - 2 * np.exp(-seq.ti / t1) + np.exp(-seq.tr / t1)) * np.exp(-seq.te / t2)
    return (1 - np.exp(-seq.tr / t1)) * np.exp(-seq.te / t2)


def signal(maps: dict[str, np.ndarray], seq: Sequence, partial_volume: float = 0.6) -> np.ndarray:
    """Noise-free magnitude image [Z,H,W] of the sequence."""
    if seq.kind == "adc":
        total = maps["pw"] + maps["pf"]
        water_share = np.where(total > 0.05, maps["pw"] / np.maximum(total, 1e-6), 0)
        water = maps["adc"] * water_share
        fat = np.zeros_like(water)
    else:
        t1 = maps["t1"]
        if seq.contrast:
            t1 = 1.0 / (1.0 / t1 + maps["enh"] / 1000.0)
        water = maps["pw"] * _relaxation(seq, t1, maps["t2"])
        if seq.diffusion_b:
            water = water * np.exp(-seq.diffusion_b * maps["adc"] * 1e-3)
        fat = maps["pf"] * _relaxation(seq, FAT_T1, FAT_T2) * seq.fat_scale
    if partial_volume:
        water = gaussian_filter(water, (0, partial_volume, partial_volume))
        fat = gaussian_filter(fat, (0, partial_volume, partial_volume))
    return np.abs(water + seq.phase * fat).astype(np.float32)


def acquire(clean: np.ndarray, rng: np.random.Generator, noise: float, bias: float) -> np.ndarray:
    """Apply a smooth multiplicative bias field, then Rician noise of std ``noise`` x the 99th percentile."""
    field = 1 + bias * np.tanh(smooth_field(rng, clean.shape, (2, 3, 3)) / 2)
    img = clean * field
    sigma = noise * float(np.percentile(img, 99)) if noise > 0 else 0.0
    if sigma > 0:
        real = img + sigma * rng.standard_normal(img.shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(img.shape, dtype=np.float32)
        img = np.sqrt(real * real + imag * imag)
    return img.astype(np.float32)


def render(maps: dict[str, np.ndarray], label: str, rng: np.random.Generator, noise: float, bias: float) -> np.ndarray:
    return acquire(signal(maps, sequence_for(label)), rng, noise, bias)

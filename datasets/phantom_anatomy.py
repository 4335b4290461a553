"""Seeded 3-D abdominal anatomy for the phantom: tissue and organ-label volumes.

Geometry lives in normalised coordinates: ``x`` across columns from -1 (image left = patient right) to 1,
``y`` down the rows from -1 (anterior) to 1 (posterior), and the anatomical height ``zeta`` from 0 (below the
prostate) to 1 (lung bases). Each structure is a union of *lobes*: ellipsoids whose axial cross-section
shrinks towards both ends (so organs end in small masks), drifts and twists with height, and has a radius
modulated by low-order harmonics, all randomised per volume.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Tissue indices into phantom_mr.TISSUES.
AIR, FAT, MUSCLE, VISCERA, LIVER, SPLEEN, KIDNEY, BLADDER, PROSTATE, VESSEL, CSF, MARROW, LUNG, HEART, BILE, \
    STOMACH, RECTUM = range(17)
TISSUE_NAMES = ("air", "fat", "muscle", "viscera", "liver", "spleen", "kidney", "bladder", "prostate", "vessel",
                "csf", "marrow", "lung", "heart", "bile", "stomach", "rectum")

ORGAN_IDS = {1: "liver", 2: "spleen", 3: "right kidney", 4: "left kidney", 5: "bladder", 6: "prostate"}

# Region of a slice from its anatomical height (the phantom's ground truth); upper bounds, bottom to top.
REGION_BOUNDS = ((0.26, "pelvic region"), (0.52, "lower abdominal region"), (0.86, "upper abdominal region"),
                 (np.inf, "lower thoracic region"))


def region_of(zeta: float) -> str:
    for upper, name in REGION_BOUNDS:
        if zeta < upper:
            return name
    raise AssertionError("unreachable")


@dataclass
class Lobe:
    """An ellipsoid lobe: centre (cx, cy, cz), semi-axes (ax, ay, az), in-plane rotation and shape noise."""

    cx: float
    cy: float
    cz: float
    ax: float
    ay: float
    az: float
    rot: float = 0.0
    drift: tuple[float, float] = (0.0, 0.0)  # centre shift per unit of t = (zeta - cz) / az
    harmonics: tuple[tuple[float, float, float], ...] = ()  # (order, amplitude, phase); amplitude grows with t
    twist: float = 0.0  # phase change per unit t
    power: float = 1.0  # cross-section radius = (1 - t^2) ** (power / 2)
    power_below: float | None = None  # a different taper below the centre (a pointed lower tip)
    notch: tuple[float, float] | None = None  # (angle, depth) of a kidney-like hilum indentation

    def inside(self, X: np.ndarray, Y: np.ndarray,
               zeta: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice], np.ndarray]:
        """Slice indices where the lobe appears, the in-plane box it fits in, and its mask there [k, h, w]."""
        t = (zeta - self.cz) / self.az
        rows = np.nonzero(np.abs(t) < 1)[0]
        reach = max(self.ax, self.ay) * (1 + 1.5 * sum(abs(a) for _, a, _ in self.harmonics)) + np.hypot(*self.drift)
        xs, ys = X[0], Y[:, 0]
        cols_in = np.nonzero(np.abs(xs - self.cx) <= reach)[0]
        rows_in = np.nonzero(np.abs(ys - self.cy) <= reach)[0]
        if rows.size == 0 or cols_in.size == 0 or rows_in.size == 0:
            return rows[:0], (slice(0, 0), slice(0, 0)), np.zeros((0, 0, 0), bool)
        box = (slice(rows_in[0], rows_in[-1] + 1), slice(cols_in[0], cols_in[-1] + 1))
        t = t[rows][:, None, None].astype(np.float32)
        power = self.power if self.power_below is None else np.where(t < 0, self.power_below, self.power)
        scale = (1 - t ** 2) ** (power / 2)
        dx = X[box][None] - (self.cx + self.drift[0] * t)
        dy = Y[box][None] - (self.cy + self.drift[1] * t)
        c, s = np.cos(self.rot), np.sin(self.rot)
        u = (dx * c + dy * s) / self.ax
        v = (-dx * s + dy * c) / self.ay
        rho = np.sqrt(u * u + v * v)
        # cos/sin of the polar angle and its multiples without trigonometry on whole arrays
        cos1 = u / np.maximum(rho, 1e-6)
        sin1 = v / np.maximum(rho, 1e-6)
        multiples = {1: (cos1, sin1)}
        for order in range(2, 5):
            cp, sp = multiples[order - 1]
            multiples[order] = (cp * cos1 - sp * sin1, sp * cos1 + cp * sin1)
        radius = np.ones_like(rho)
        for order, amp, phase in self.harmonics:
            ph = phase + self.twist * t
            ck, sk = multiples[order]
            radius += amp * (1 + 0.5 * t) * (ck * np.cos(ph) - sk * np.sin(ph))
        if self.notch is not None:
            angle, depth = self.notch
            cos_delta = cos1 * np.cos(angle) + sin1 * np.sin(angle)
            radius -= depth * np.exp((cos_delta - 1) / 0.12)
        return rows, box, rho < scale * radius


@dataclass
class Structure:
    tissue: int
    lobes: list[Lobe]
    organ_id: int = 0  # label in the mask; 0 = not annotated
    clears_label: bool = False  # painted over organs, removing their label (vessels, spine, gallbladder)
    in_cavity: bool = True  # confined to the abdominal cavity inside the body wall


@dataclass
class Anatomy:
    """A sampled body: structures in painting order plus per-volume body-wall and tissue parameters."""

    structures: list[Structure]
    body: dict[str, float]
    liver_fat: float
    tissue_jitter: np.ndarray  # [n_tissues, 3] multipliers of (PD, T1, T2)
    zeta0: float
    zeta_span: float
    extras: dict[str, float] = field(default_factory=dict)

    def zeta(self, slices: int) -> np.ndarray:
        return self.zeta0 + self.zeta_span * (np.arange(slices) + 0.5) / slices


def _lobe(rng: np.random.Generator, cx, cy, cz, ax, ay, az, rot=0.0, size=1.0, shape=0.08, **kw) -> Lobe:
    """A lobe with per-volume jitter of position, size, rotation and outline."""
    harmonics = tuple((order, rng.uniform(0, shape), rng.uniform(0, 2 * np.pi)) for order in (2, 3, 4))
    return Lobe(cx=cx + rng.normal(0, 0.025), cy=cy + rng.normal(0, 0.025), cz=cz + rng.normal(0, 0.015),
                ax=ax * size * rng.uniform(0.92, 1.08), ay=ay * size * rng.uniform(0.92, 1.08),
                az=az * rng.uniform(0.9, 1.1), rot=rot + rng.normal(0, 0.12),
                drift=(rng.normal(0, 0.05), rng.normal(0, 0.05)), harmonics=harmonics,
                twist=rng.normal(0, 0.6), power=rng.uniform(0.8, 1.2), **kw)


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """One randomised body. Sizes are fractions of the half field of view."""
    body = {"wx": rng.uniform(0.72, 0.84), "wy": rng.uniform(0.52, 0.62), "fat": rng.uniform(0.06, 0.15),
            "muscle": rng.uniform(0.05, 0.08), "cx": rng.normal(0, 0.02), "cy": rng.normal(0, 0.02),
            "a2": rng.uniform(0, 0.05), "p2": rng.uniform(0, np.pi)}
    spine_y = body["cy"] + body["wy"] * 0.62
    organ_size = rng.uniform(0.88, 1.12, size=6)
    S = []
    # Muscles and thoracic structures under the organs.
    for side in (-1, 1):
        S.append(Structure(MUSCLE, [_lobe(rng, side * 0.14, spine_y + 0.12, 0.55, 0.09, 0.08, 0.65, shape=0.03)],
                           in_cavity=False))
        S.append(Structure(MUSCLE, [_lobe(rng, side * 0.15, spine_y - 0.06, 0.3, 0.07, 0.06, 0.28, shape=0.03)]))
        S.append(Structure(LUNG, [_lobe(rng, side * 0.4, 0.12, 1.12, 0.3, 0.33, 0.3)]))
    S.append(Structure(HEART, [_lobe(rng, 0.08, -0.22, 1.14, 0.28, 0.24, 0.2)]))
    S.append(Structure(STOMACH, [_lobe(rng, 0.28, -0.18, 0.8, 0.17, 0.14, 0.1, rot=0.5, size=rng.uniform(0.7, 1.2))]))
    S.append(Structure(RECTUM, [_lobe(rng, 0.0, spine_y - 0.1, 0.16, 0.07, 0.06, 0.14, shape=0.05)]))
    # Annotated organs, in label order (later ones win where they touch).
    S.append(Structure(LIVER, [
        _lobe(rng, -0.33, -0.03, 0.76, 0.4, 0.4, 0.22, size=organ_size[0], power_below=rng.uniform(2.2, 3.0)),
        _lobe(rng, 0.1, -0.28, 0.83, 0.3, 0.16, 0.1, rot=-0.2, size=organ_size[0]),
    ], organ_id=1))
    S.append(Structure(SPLEEN, [_lobe(rng, 0.53, 0.2, 0.76, 0.12, 0.22, 0.14, rot=0.5,
                                      size=organ_size[1])], organ_id=2))
    S.append(Structure(KIDNEY, [_lobe(rng, -0.33, spine_y - 0.05, 0.54, 0.12, 0.16, 0.14, rot=-0.45, size=organ_size[2],
                                      notch=(0.0, 0.3))], organ_id=3))
    S.append(Structure(KIDNEY, [_lobe(rng, 0.33, spine_y - 0.05, 0.58, 0.12, 0.16, 0.14, rot=0.45, size=organ_size[3],
                                      notch=(np.pi, 0.3))], organ_id=4))
    S.append(Structure(BLADDER, [_lobe(rng, 0.0, -0.18, 0.17, 0.19, 0.15, 0.09, size=rng.uniform(0.7, 1.2),
                                       shape=0.05)], organ_id=5))
    S.append(Structure(PROSTATE, [_lobe(rng, 0.0, 0.0, 0.06, 0.09, 0.07, 0.065, size=organ_size[5],
                                        shape=0.04)], organ_id=6))
    # Structures that cut into organ labels.
    S.append(Structure(BILE, [_lobe(rng, -0.15, -0.22, 0.68, 0.05, 0.07, 0.06, size=rng.uniform(0.6, 1.3))],
                       clears_label=True))
    S.append(Structure(MARROW, [_lobe(rng, 0.0, spine_y, 0.55, 0.09, 0.08, 0.7, shape=0.02)], clears_label=True,
                       in_cavity=False))
    S.append(Structure(CSF, [_lobe(rng, 0.0, spine_y + 0.12, 0.55, 0.035, 0.03, 0.75, shape=0.0)], clears_label=True,
                       in_cavity=False))
    S.append(Structure(VESSEL, [_lobe(rng, 0.06, spine_y - 0.15, 0.72, 0.04, 0.04, 0.42, shape=0.0)],
                       clears_label=True))
    S.append(Structure(VESSEL, [_lobe(rng, -0.08, spine_y - 0.14, 0.7, 0.05, 0.045, 0.32, shape=0.02)],
                       clears_label=True))
    return Anatomy(structures=S, body=body, liver_fat=float(rng.uniform(0.0, 0.12)),
                   tissue_jitter=rng.uniform(0.95, 1.05, size=(len(TISSUE_NAMES), 3)),
                   zeta0=float(rng.uniform(-0.03, 0.03)), zeta_span=float(rng.uniform(0.96, 1.04)))


def grid(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution * 2 - 1
    Y, X = np.meshgrid(c, c, indexing="ij")
    return X, Y


def rasterise(anatomy: Anatomy, slices: int, resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tissue indices uint8 [Z,H,W], organ labels uint8 [Z,H,W] and the slices' anatomical heights [Z]."""
    X, Y = grid(resolution)
    zeta = anatomy.zeta(slices)
    b = anatomy.body
    # Body outline: a flattened ellipse that widens a little towards the chest.
    wx = b["wx"] * (0.94 + 0.1 * zeta)[:, None, None]
    wy = b["wy"] * (0.94 + 0.08 * zeta)[:, None, None]
    u, v = (X[None] - b["cx"]) / wx, (Y[None] - b["cy"]) / wy
    r = np.maximum(np.sqrt(u * u + v * v), 1e-6)
    cos2, sin2 = (u * u - v * v) / r ** 2, 2 * u * v / r ** 2
    rho = r / (1 + b["a2"] * (cos2 * np.cos(b["p2"]) - sin2 * np.sin(b["p2"])))
    fat_depth = b["fat"] * (1 - 0.4 * v / r)  # thickest anteriorly (v < 0)
    tissue = np.full((slices, resolution, resolution), AIR, np.uint8)
    tissue[rho < 1] = FAT
    tissue[rho < 1 - fat_depth] = MUSCLE
    cavity = rho < 1 - fat_depth - b["muscle"]
    tissue[cavity] = VISCERA
    labels = np.zeros_like(tissue)
    for structure in anatomy.structures:
        for lobe in structure.lobes:
            rows, box, inside = lobe.inside(X, Y, zeta)
            if rows.size == 0:
                continue
            if structure.in_cavity:
                inside &= cavity[rows][:, box[0], box[1]]
            else:
                inside &= (rho[rows] < 1 - fat_depth[rows] * 0.5)[:, box[0], box[1]]
            tissue_box = tissue[rows][:, box[0], box[1]]
            label_box = labels[rows][:, box[0], box[1]]
            tissue_box[inside] = structure.tissue
            if structure.organ_id:
                label_box[inside] = structure.organ_id
            elif structure.clears_label:
                label_box[inside] = 0
            tissue[rows, box[0], box[1]] = tissue_box
            labels[rows, box[0], box[1]] = label_box
    return tissue, labels, zeta

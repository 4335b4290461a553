"""Preprocessing of appendix C.1, per volume.

* A volume with a mask: intensities clipped to the configured percentiles (0.5 / 99.5), then rescaled to [0, 1].
* A volume without a mask: min-max rescaled to [0, 1].
* Every slice resampled to square pixels with its physical aspect kept, its longer side spanning ``resolution``
  pixels (:func:`in_plane_size`), then zero-padded to ``resolution`` x ``resolution`` (centred, the odd pixel at
  the end): images bilinear with antialiasing (area-like when shrinking), masks nearest-neighbour. So a round organ
  stays round whatever the source's pixel spacing (0.7 x 1.4 mm, say) or field of view. A square field of view is
  one plain resize, with no padding. ``pixel_spacing`` is the written slice's mm per pixel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


class PreprocessError(ValueError):
    """The volume's content cannot be used; the message is the reason."""


@dataclass
class PreparedVolume:
    images: np.ndarray  # float32 [Z, R, R] in [0, 1]
    masks: np.ndarray | None  # uint8 [Z, R, R]
    pixel_spacing: tuple[float, float]  # row, column (mm) after resizing
    source_spacing: tuple[float, float, float] | None = None  # row, column, slice (mm) of the source volume

    def organs(self, index: int, organ_map: dict[int, str]) -> list[str]:
        """Names of the organs present in slice ``index``, in organ-id order."""
        if self.masks is None:
            return []
        return [organ_map[int(v)] for v in np.unique(self.masks[index]) if v]


def check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or 0 in image.shape:
        raise PreprocessError(f"empty volume: shape {image.shape} has no slices")
    finite = np.isfinite(image)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        raise PreprocessError(f"{int((~finite).sum())} NaN/Inf voxels (first at slice {bad[0]}, row {bad[1]}, column "
                              f"{bad[2]})")
    low, high = float(image.min()), float(image.max())
    if low == high:
        raise PreprocessError("empty volume: all voxels are 0" if high == 0
                              else f"empty volume: every voxel equals {high:g}")


def normalize(image: np.ndarray, with_mask: bool, clip_percentiles: tuple[float, float]) -> np.ndarray:
    image = image.astype(np.float32, copy=False)
    if with_mask:
        low, high = np.percentile(image, clip_percentiles)
        if high <= low:  # e.g. mostly-constant volumes: fall back to the full range
            low, high = float(image.min()), float(image.max())
        image = np.clip(image, low, high)
    else:
        low, high = float(image.min()), float(image.max())
    return ((image - low) / (high - low)).astype(np.float32)


def in_plane_size(shape: tuple[int, int], spacing: tuple[float, float], resolution: int) -> tuple[int, int]:
    """Rows and columns of a slice of ``shape`` and ``spacing`` (row, column mm) resampled to square pixels, the
    longer physical side spanning ``resolution`` pixels."""
    extent = (shape[0] * spacing[0], shape[1] * spacing[1])
    return tuple(min(resolution, max(1, round(resolution * e / max(extent)))) for e in extent)


def pad_to_square(x: np.ndarray) -> np.ndarray:
    """Zero-pad the last two axes to a square, centred (the odd pixel at the end)."""
    height, width = x.shape[-2:]
    if height == width:
        return x
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    return np.pad(x, [(0, 0)] * (x.ndim - 2) + [(top, side - height - top), (left, side - width - left)])


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if images.shape[1:] == tuple(size):
        return np.ascontiguousarray(images, dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    y = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return y[:, 0].clamp_(0.0, 1.0).numpy()


def resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if masks.shape[1:] == tuple(size):
        return np.ascontiguousarray(masks, dtype=np.uint8)
    x = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8))[:, None]
    y = F.interpolate(x.float(), size=tuple(size), mode="nearest-exact")
    return y[:, 0].to(torch.uint8).numpy()


def preprocess_volume(image: np.ndarray, mask: np.ndarray | None, spacing: tuple[float, float, float],
                      resolution: int, clip_percentiles: tuple[float, float] = (0.5, 99.5)) -> PreparedVolume:
    """Normalise ``image`` [Z, H, W] and bring its slices (and ``mask``'s, same shape, organ ids ≤ 255) to
    ``resolution`` x ``resolution`` at square pixels; ``spacing`` is (row, column, slice) in mm."""
    check_image(image)
    if mask is not None and mask.shape != image.shape:
        raise PreprocessError(f"image/label shape mismatch: image {image.shape}, label {mask.shape} (slices, rows, "
                              "columns)")
    if not all(np.isfinite(s) and s > 0 for s in spacing[:2]):
        raise PreprocessError(f"in-plane spacing {tuple(float(s) for s in spacing[:2])} mm (rows, columns): "
                              "expected positive numbers")
    height, width = image.shape[1:]
    size = in_plane_size((height, width), spacing[:2], resolution)
    images = pad_to_square(resize_images(normalize(image, mask is not None, clip_percentiles), size))
    masks = pad_to_square(resize_masks(mask, size)) if mask is not None else None
    pixel_spacing = (spacing[0] * height / size[0], spacing[1] * width / size[1])
    return PreparedVolume(images, masks, pixel_spacing, tuple(float(s) for s in spacing))

"""Preprocessing of appendix C.1, per volume.

* A volume with a mask: intensities clipped to the configured percentiles (0.5 / 99.5), then rescaled to [0, 1].
* A volume without a mask: min-max rescaled to [0, 1].
* Every slice resized to ``resolution`` x ``resolution``: images bilinear with antialiasing (area-like when
  shrinking), masks nearest-neighbour. Pixel spacing is scaled accordingly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def resize_images(images: np.ndarray, resolution: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    if images.shape[1:] == (resolution, resolution):
        return np.ascontiguousarray(images, dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    y = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    return y[:, 0].clamp_(0.0, 1.0).numpy()


def resize_masks(masks: np.ndarray, resolution: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    if masks.shape[1:] == (resolution, resolution):
        return np.ascontiguousarray(masks, dtype=np.uint8)
    x = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8))[:, None]
    y = F.interpolate(x.float(), size=(resolution, resolution), mode="nearest-exact")
    return y[:, 0].to(torch.uint8).numpy()


def preprocess_volume(image: np.ndarray, mask: np.ndarray | None, spacing: tuple[float, float, float],
                      resolution: int, clip_percentiles: tuple[float, float] = (0.5, 99.5)) -> PreparedVolume:
    """Normalise and resize ``image`` [Z, H, W] (and ``mask`` of the same shape, organ ids ≤ 255)."""
    check_image(image)
    if mask is not None and mask.shape != image.shape:
        raise PreprocessError(f"image/label shape mismatch: image {image.shape}, label {mask.shape} (slices, rows, "
                              "columns)")
    images = resize_images(normalize(image, mask is not None, clip_percentiles), resolution)
    masks = resize_masks(mask, resolution) if mask is not None else None
    height, width = image.shape[1:]
    pixel_spacing = (spacing[0] * height / resolution, spacing[1] * width / resolution)
    return PreparedVolume(images, masks, pixel_spacing, tuple(float(s) for s in spacing))

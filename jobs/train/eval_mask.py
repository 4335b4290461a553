"""`mrgen eval mask`: how much a bundle's mask controller relies on its masks (``models.mask_dependence``)."""
from __future__ import annotations

from typing import Any

import numpy as np


def spread_masked_slices(db_uri: str, split: str, limit: int, min_area: float, **filters: Any) -> dict[str, Any]:
    """Decoded masked slices of ``split`` whose organs cover at least ``min_area`` of the image: ``limit`` of them,
    evenly spread over the split in slice-id order (every volume, not the first one or two)."""
    from mrgen.datasets.schema import decode_batch
    from mrgen.datasets.store import read_table

    table = read_table(db_uri, ["slice_id", "height", "width", "image", "prompt", "has_mask", "mask"],
                       split=split, has_mask=True, **filters).sort_by("slice_id")
    if table.num_rows < 2:
        raise ValueError(f"{db_uri}: {table.num_rows} masked slices in split {split!r} {filters or ''}; need >= 2")
    batch = decode_batch(table.to_pydict())
    keep = np.flatnonzero((batch["mask"] > 0).mean(axis=(1, 2)) >= min_area)
    if len(keep) < 2:
        raise ValueError(f"{db_uri}: fewer than 2 masked slices in split {split!r} cover {min_area:.0%} of the image")
    keep = keep[np.unique(np.linspace(0, len(keep) - 1, min(limit, len(keep))).round().astype(int))]
    return {"slice_id": [batch["slice_id"][i] for i in keep], "prompt": [batch["prompt"][i] for i in keep],
            "image": batch["image"][keep], "mask": batch["mask"][keep]}


def evaluate_mask_dependence(bundle_uri: str, db_uri: str, split: str = "test", limit: int = 64,
                             min_area: float = 0.02, seed: int = 0, **filters: Any) -> dict[str, Any]:
    """:func:`mask_dependence` on :func:`spread_masked_slices`."""
    from mrgen.models.bundle import ModelBundle
    from mrgen.models.mask_dependence import mask_dependence

    slices = spread_masked_slices(db_uri, split, limit, min_area, **filters)
    bundle = ModelBundle.load(bundle_uri, parts=("vae", "unet", "controlnet", "text_encoder", "scheduler"))
    result = mask_dependence(bundle, slices["image"], slices["mask"], slices["prompt"], seed=seed)
    result.update(split=split, bundle=bundle_uri, db=db_uri)
    return result

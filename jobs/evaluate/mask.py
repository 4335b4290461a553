"""`mrgen eval mask`: how much a bundle's mask controller relies on its masks — in its denoising loss
(``models.metrics.mask_dependence``) and in its samples (``models.metrics.mask_following``, with a contact
sheet). The experiment's check of its generator (both, on several splits) is written as ``CONTROLLER_CHECK``."""
from __future__ import annotations

import json
from typing import Any, TypedDict

import numpy as np

from mrgen.datasets.schema import decode_batch, decode_organ_map
from mrgen.datasets.store import read_table, spread
from mrgen.models.sampling import SAMPLING_PRESETS, SamplingSettings
from mrgen.platform import storage

FOLLOWING_SAMPLING = SAMPLING_PRESETS["default"]  # the demo's generator's sampling
CONTROLLER_CHECK = "mask_dependence.json"  # the experiment's OUT/generator/mask_dependence.json


class ControllerCheck(TypedDict):
    """``CONTROLLER_CHECK``: :func:`evaluate_mask_dependence` per split of source masks, and
    :func:`evaluate_mask_following` on the source masks synthesis uses and on the target modality's held-out ones."""

    loss: dict[str, dict[str, Any]]
    samples: dict[str, Any] | None
    samples_target: dict[str, Any] | None


def write_controller_check(check: ControllerCheck, uri: str) -> None:
    storage.write_text(uri, json.dumps(check, indent=1))


def load_controller_check(uri: str) -> ControllerCheck:
    """What :func:`write_controller_check` wrote at ``uri``."""
    return storage.read_json(uri)


def spread_masked_slices(db_uri: str, split: str, limit: int, min_area: float, **filters: Any) -> dict[str, Any]:
    """Decoded masked slices of ``split`` whose organs cover at least ``min_area`` of the image: ``limit`` of them,
    evenly spread over the split in slice-id order (every volume, not the first one or two)."""
    table = read_table(db_uri, ["slice_id", "height", "width", "image", "prompt", "has_mask", "mask", "organ_map"],
                       split=split, has_mask=True, **filters).sort_by("slice_id")
    if table.num_rows < 2:
        raise ValueError(f"{db_uri}: {table.num_rows} masked slices in split {split!r} {filters or ''}; need >= 2")
    batch = decode_batch(table.to_pydict())
    keep = np.flatnonzero((batch["mask"] > 0).mean(axis=(1, 2)) >= min_area)
    if len(keep) < 2:
        raise ValueError(f"{db_uri}: fewer than 2 masked slices in split {split!r} cover {min_area:.0%} of the image")
    keep = keep[spread(len(keep), limit)]
    return {"slice_id": [batch["slice_id"][i] for i in keep], "prompt": [batch["prompt"][i] for i in keep],
            "image": batch["image"][keep], "mask": batch["mask"][keep],
            "organ_map": [decode_organ_map(batch["organ_map"][i]) for i in keep]}


def _bundle(bundle):
    # torch and diffusers (the bundle, the metrics) and scipy (the sheet) are imported where they are used: the
    # CLI imports this module at its start-up (`mrgen eval`'s settings)
    from mrgen.models.bundle import ModelBundle

    if isinstance(bundle, ModelBundle):
        return bundle
    return ModelBundle.load(bundle, parts=("vae", "unet", "controlnet", "text_encoder", "scheduler"))


def evaluate_mask_dependence(bundle, db_uri: str, split: str = "test", limit: int = 64,
                             min_area: float = 0.02, seed: int = 0, **filters: Any) -> dict[str, Any]:
    """:func:`mask_dependence` on :func:`spread_masked_slices`; ``bundle``: a URI or a loaded ``ModelBundle``."""
    from mrgen.models.metrics.mask_dependence import mask_dependence

    slices = spread_masked_slices(db_uri, split, limit, min_area, **filters)
    bundle = _bundle(bundle)
    result = mask_dependence(bundle, slices["image"], slices["mask"], slices["prompt"], seed=seed,
                             organ_maps=slices["organ_map"])
    result.update(split=split, bundle=bundle.uri, db=db_uri)
    return result


def evaluate_mask_following(bundle, db_uri: str, sheet_uri: str | None, split: str = "train", limit: int = 24,
                            sheet_slices: int = 6, min_area: float = 0.05,
                            sampling: SamplingSettings = FOLLOWING_SAMPLING, scorer=None,
                            **filters: Any) -> dict[str, Any]:
    """:func:`mask_following` on ``limit`` :func:`spread_masked_slices`, and a contact sheet of ``sheet_slices``
    of them at ``sheet_uri``: per slice the real slice, the sample with its mask and the same-seed sample with
    another slice's mask, organ outlines on all three; ``sampling``: how the samples are drawn; ``scorer`` (a
    ``models.scorers`` scorer): also the segmenter's IoU following."""
    from mrgen.datasets.contact_sheet import contact_sheet
    from mrgen.models.metrics.mask_following import mask_following

    slices = spread_masked_slices(db_uri, split, limit, min_area, **filters)
    bundle = _bundle(bundle)
    run = mask_following(bundle, slices["image"], slices["mask"], slices["prompt"], sampling,
                         organ_maps=slices["organ_map"], scorer=scorer)
    scores = run["scores"]
    if sheet_uri:
        items = []
        for k in spread(len(run["own"]), sheet_slices):
            mask, other = slices["mask"][k], run["other_masks"][k]
            items += [{"image": slices["image"][k], "mask": mask, "outline": True,
                       "caption": f"real {slices['slice_id'][k]}"},
                      {"image": run["own"][k], "mask": mask, "outline": True, "caption": f"its mask, seed {k}"},
                      {"image": run["other"][k], "mask": other, "outline": True,
                       "caption": f"another slice's mask, seed {k}"}]
        contact_sheet(items, sheet_uri, columns=3, cell=160, caption_lines=2,
                      title=f"{split} masks, {sampling.sampler} {sampling.steps} steps, cfg {sampling.guidance}: "
                            f"following "
                            f"{scores['following']:+.2f}, autoencoder ceiling {scores['autoencoder_ceiling']:+.2f}; "
                            f"separation {scores['separation_following']:+.2f} of {scores['separation_ceiling']:+.2f}")
    return {**scores, "split": split, "bundle": bundle.uri, "db": db_uri, "sheet": sheet_uri}

"""`mrgen sample`: a bundle and one mask → ``OUT/candidate_000.png`` … (8-bit grey) and ``OUT/candidates.json``.

Candidate ``i`` has seed ``seed + i`` and is one image of ``MRGenPipeline.generate`` (the one sampling loop), whose
noise is drawn as diffusers pipelines draw it: with an official release folder, ``--prompt`` and seed ``S``,
candidate 0 is the image the release's pipeline gives for ``generator=torch.Generator().manual_seed(S)``.
The prompt follows the bundle's conventions (``PromptRecipe``): ours, or the release's ``", "``-joined template
with the attributes of ``--attributes`` and the organ map's labels (in id order) as the dataset label list.
"""
from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from mrgen.datasets.modality import UnknownModalityError, read_attributes_file
from mrgen.datasets.prompt import PromptRecipe
from mrgen.jobs.sample.config import SampleConfig
from mrgen.models.bundle import ModelBundle
from mrgen.models.manifest import BundleError, resolve_model_uri
from mrgen.models.condition import UnknownOrganError
from mrgen.models.pipeline import MRGenPipeline
from mrgen.platform import storage

RECORD = "candidates.json"


class SampleInputError(ValueError):
    """Bad input found before sampling; the message names the flag or file."""


def read_mask(path: str) -> np.ndarray:
    """A PNG of organ ids → uint8 [H, W]."""
    if not storage.exists(path):
        raise SampleInputError(f"--mask {path}: no such file")
    try:
        image = Image.open(io.BytesIO(storage.read_bytes(path)))
        array = np.asarray(image)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise SampleInputError(f"--mask {path}: not a readable image ({exc})") from None
    if array.ndim != 2 or image.mode not in ("L", "P", "I;16", "I", "1"):
        raise SampleInputError(f"--mask {path}: mode {image.mode!r}; a mask is one channel of organ ids")
    if array.size and int(array.max()) > 255:
        raise SampleInputError(f"--mask {path}: organ id {int(array.max())} > 255")
    return array.astype(np.uint8)


def parse_organ_map(organ_map: dict[str, str], mask: np.ndarray) -> dict[int, str]:
    try:
        parsed = {int(k): str(v) for k, v in organ_map.items()}
    except ValueError:
        raise SampleInputError(f"--organ-map: keys must be integer organ ids, got {sorted(organ_map)}") from None
    missing = [int(i) for i in np.unique(mask) if i and int(i) not in parsed]
    if missing:
        raise SampleInputError(f"--organ-map: the mask holds organ ids {missing} it does not name "
                               f"(given: {dict(sorted(parsed.items()))})")
    return dict(sorted(parsed.items()))


def build_prompt_for(config: SampleConfig, manifest: dict[str, Any], organ_map: dict[int, str],
                     mask: np.ndarray) -> str:
    """``--prompt`` verbatim, else the bundle's template with its attributes, region, organs and labels."""
    if config.prompt is not None:
        return config.prompt
    try:
        table = read_attributes_file(config.attributes) if config.attributes else {}
        recipe = PromptRecipe.for_bundle(manifest, table)
        attributes = recipe.attributes(config.modality)
    except UnknownModalityError as exc:
        raise SampleInputError(f"--modality: {exc}") from None
    except ValueError as exc:
        raise SampleInputError(f"--attributes: {exc}") from None
    present = [organ_map[int(i)] for i in np.unique(mask) if i]
    return recipe.render(config.modality, attributes, config.region, present, list(organ_map.values()))


def to_png(image: np.ndarray) -> bytes:
    """float [H, W] in [0, 1] → 8-bit grey PNG (round(x·255), as diffusers' ``numpy_to_pil``)."""
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(np.asarray(image, np.float32) * 255.0), 0, 255).astype(np.uint8)).save(
        buffer, format="PNG")
    return buffer.getvalue()


def run_sample(config: SampleConfig) -> dict[str, Any]:
    mask = read_mask(config.mask)
    organ_map = parse_organ_map(config.organ_map, mask)
    try:
        bundle = ModelBundle.load(resolve_model_uri(config.model), device=config.device,
                                  organ_weights=config.organ_weights or None)
        pipeline = MRGenPipeline(bundle)
    except (BundleError, ValueError) as exc:
        raise SampleInputError(f"--model {config.model}: {exc}") from None
    prompt = build_prompt_for(config, bundle.manifest, organ_map, mask)
    seeds = [config.seed + i for i in range(config.n)]
    try:
        images = pipeline.generate([prompt], mask[None], config.n, config.sampling, seeds=seeds,
                                   organ_maps=[organ_map])
    except UnknownOrganError as exc:
        raise SampleInputError(f"--organ-map: {exc}") from None
    except ValueError as exc:
        raise SampleInputError(f"--mask {config.mask}: {exc}") from None
    files = []
    for i, image in enumerate(images):
        files.append(f"candidate_{i:03d}.png")
        storage.write_bytes(storage.join(config.out, files[-1]), to_png(image))
    record = {"bundle_id": bundle.bundle_id, "model": config.model, "prompt": prompt, "seeds": seeds,
              "files": files, "modality": config.modality, "region": config.region,
              "organ_map": {str(k): v for k, v in organ_map.items()}, "organ_weights": config.organ_weights,
              **config.sampling.kwargs(),
              "layout": bundle.manifest.get("layout", "mrgen")}
    storage.write_text(storage.join(config.out, RECORD), json.dumps(record, indent=1))
    return record

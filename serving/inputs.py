"""Turning an HTTP request into a `GenerationJob`, or a `BadRequest` naming the field and what is wrong.

Everything the generator could choke on is checked here, in the ingress, so that bad input is a 4xx and never
reaches (or breaks) a generator replica.
"""
from __future__ import annotations

import base64
import binascii
import io
import secrets
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from mrgen.datasets.modality import UnknownModalityError
from mrgen.datasets.prompt import PromptRecipe
from mrgen.datasets.schema import REGIONS
from mrgen.models.condition import MaskCondition
from mrgen.serving.config import ServeConfig
from mrgen.serving.schemas import GenerateRequest, GenerationJob

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class BadRequest(ValueError):
    """Invalid input; `status` is the HTTP status, the message names the field."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.status = status


@dataclass
class ParsedRequest:
    job: GenerationJob
    attributes: str
    organs: list[str]
    keep: int | None


def decode_mask_png(text: str, max_side: int, size_multiple: int, field: str = "mask") -> np.ndarray:
    """Base64 PNG → uint8 [H, W] organ ids. Rejects non-PNG data, colour images and bad sizes."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(field, f"not valid base64 ({exc})") from None
    if not data.startswith(_PNG_MAGIC):
        raise BadRequest(field, "not a PNG image (missing PNG signature)")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size  # header only: a huge image is rejected before its pixels are decoded
    except Image.DecompressionBombError as exc:  # PIL refuses headers of > 2x MAX_IMAGE_PIXELS before we can look
        raise BadRequest(field, f"image too large ({exc}); the largest allowed side is {max_side}",
                         status=413) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadRequest(field, f"not a readable PNG ({exc})") from None
    try:
        if max(width, height) > max_side:
            raise BadRequest(field, f"{width}x{height} exceeds the largest allowed side {max_side}", status=413)
        if width != height or width < size_multiple or width % size_multiple:
            raise BadRequest(field, f"{width}x{height}: the mask must be square with a side that is a multiple "
                                    f"of {size_multiple}")
        if image.mode not in ("L", "P", "I;16", "I", "1"):
            raise BadRequest(field, f"PNG mode {image.mode!r}: a mask must be single-channel (8-bit ids, not RGB)")
        array = np.asarray(image)
    except BadRequest:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadRequest(field, f"not a readable PNG ({exc})") from None
    if array.ndim != 2:
        raise BadRequest(field, f"decoded to shape {array.shape}; expected a single-channel image")
    if array.size and int(array.max()) > 255:
        raise BadRequest(field, f"organ id {int(array.max())} > 255")
    return array.astype(np.uint8)


def parse_organ_map(organ_map: dict[str, str], field: str = "organ_map") -> dict[int, str]:
    parsed: dict[int, str] = {}
    for key, name in organ_map.items():
        try:
            organ_id = int(key)
        except ValueError:
            raise BadRequest(f"{field}.{key}", "keys must be integer organ ids such as \"1\"") from None
        if not 1 <= organ_id <= 255:
            raise BadRequest(f"{field}.{key}", "organ ids must lie in 1..255 (0 is background)")
        if not name or not name.strip() or len(name) > 64:
            raise BadRequest(f"{field}.{key}", "organ names must be 1-64 characters")
        parsed[organ_id] = name.strip()
    return parsed


def parse_request(request: GenerateRequest, config: ServeConfig, size_multiple: int = 8,
                  condition: dict | None = None, prompt_template: str = "mrgen") -> ParsedRequest:
    """Check `request` against the service's limits and build the generator's job (a request with ``keep`` and no
    ``n`` gets the filter's budget, ``serve.filter.candidates``); ``condition``: the bundle's
    ``MaskCondition`` manifest fields (an organ outside its vocabulary is refused); ``prompt_template``: the
    bundle's (``official``: the release's prompt, attributes looked up exactly, any region text)."""
    recipe = PromptRecipe(prompt_template, config.modality_attributes)
    limits = config.limits
    n = request.n
    if request.keep is not None and "n" not in request.model_fields_set:  # the filter's budget
        n = min(max(request.keep, config.filter.candidates), limits.max_n)
    if n > limits.max_n:
        raise BadRequest("n", f"{n} > the service's limit {limits.max_n}")
    if request.keep is not None and request.keep > n:
        raise BadRequest("keep", f"{request.keep} > n ({n}): cannot keep more candidates than are generated")
    sampling = request.over(config.sampling)
    for name, limit in (("steps", limits.max_steps), ("guidance", limits.max_guidance),
                        ("conditioning_scale", limits.max_conditioning_scale)):
        if getattr(sampling, name) > limit:
            raise BadRequest(name, f"{getattr(sampling, name)} > the service's limit {limit}")
    if request.region is not None and request.region not in REGIONS and recipe.template != "official":
        raise BadRequest("region", f"{request.region!r} is not one of {list(REGIONS)}")
    try:
        attributes = recipe.attributes(request.modality)
    except UnknownModalityError as exc:
        raise BadRequest("modality", str(exc)) from None

    mask = decode_mask_png(request.mask, limits.max_image_size, size_multiple)
    organ_map = parse_organ_map(request.organ_map)
    present = [int(i) for i in np.unique(mask) if i != 0]
    missing = [i for i in present if i not in organ_map]
    if missing:
        raise BadRequest("mask", f"organ ids {missing} are not in organ_map (known ids: {sorted(organ_map)})")
    vocabulary = MaskCondition.from_manifest(condition or {})
    unknown = vocabulary.unknown([organ_map[i] for i in present])
    if unknown:
        raise BadRequest("organ_map", f"organ(s) {unknown} are not in the generator's vocabulary "
                                      f"{sorted(vocabulary.organs)}: it was never trained on them")
    organs = request.organs if request.organs is not None else [organ_map[i] for i in present]
    if any(not o or not o.strip() or len(o) > 64 for o in organs):
        raise BadRequest("organs", "organ names must be 1-64 characters")

    # The label as given, as MRGen-DB and synthesis build prompts: the model saw the dataset's own labels
    # (the release's prompt names the dataset's label list: the organ map's names in id order).
    labels = [organ_map[i] for i in sorted(organ_map)]
    prompt = recipe.render(request.modality.strip(), attributes, request.region, organs, labels)
    seed = request.seed if request.seed is not None else secrets.randbelow(2**31 - 64)
    job = GenerationJob(prompt=prompt, mask=mask, seeds=[seed + i for i in range(n)], sampling=sampling,
                        organ_map={i: organ_map[i] for i in present}, organs=list(organs),
                        early_reject=config.filter.early_rejection(sampling.steps) if request.keep else None)
    return ParsedRequest(job=job, attributes=attributes, organs=list(organs), keep=request.keep)


def encode_png(image: np.ndarray) -> str:
    """float [H, W] in [0, 1] → base64 8-bit grayscale PNG."""
    pixels = np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def mask_to_png_b64(mask: np.ndarray) -> str:
    """uint8 [H, W] organ ids → base64 PNG (for clients and tests)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")

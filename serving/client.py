"""Python client of the generation API (httpx), and the `mrgen generate` command's library side (its config
section ``generate``)."""
from __future__ import annotations

import base64
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from pydantic import Field

from mrgen.models.sampling import SamplingOverrides
from mrgen.platform import storage
from mrgen.platform.config import ConfigBase, same_at_every_scale
from mrgen.serving.inputs import mask_to_png_b64

DEFAULT_TIMEOUT_S = 300.0


@same_at_every_scale
class GenerateConfig(ConfigBase, SamplingOverrides):
    """What `mrgen generate` asks the service for (bounds as the request schema's, the sampling settings' with them);
    None leaves the choice to the service's config. The values do not depend on scale: the presets ``tiny`` and
    ``paper`` are the defaults."""

    section = "generate"
    n: int | None = Field(None, ge=1, le=20, description="number of candidates; with --keep the most generated (None: "
                                                         "1, or with --keep the service's filter budget)")
    keep: int | None = Field(None, ge=1, le=20, description="filter the candidates (the service's scorer) and keep at "
                                                            "most this many that pass")
    region: str | None = Field(None, max_length=64, description="body region for the prompt")
    seed: int | None = Field(None, ge=0, lt=2**31, description="seed of the first candidate; candidate i uses "
                                                               "seed + i (None: the service picks)")
    timeout: float = Field(DEFAULT_TIMEOUT_S, gt=0, description="seconds to wait for the answer")

    def request_options(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`GeneratorClient.generate`."""
        return self.model_dump(exclude={"timeout"})


class GenerationError(RuntimeError):
    """The service refused or failed a request; `status` and `detail` are the server's."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass
class GeneratedImage:
    image: np.ndarray  # uint8 [H, W]
    png: bytes
    seed: int
    score: float | None = None
    organ_scores: dict | None = None
    fate: str | None = None


@dataclass
class Generation:
    images: list[GeneratedImage]
    bundle_id: str
    prompt: str
    raw: dict

    @property
    def generated(self) -> int:
        """Candidates the service sampled (with keep: in the waves it ran)."""
        return self.raw["generated"]

    @property
    def stopped_early(self) -> int:
        """Candidates the filter stopped mid-sampling (no image)."""
        return self.raw.get("stopped_early", 0)

    @property
    def kept(self) -> int | None:
        """Candidates the filter kept (None: no keep asked)."""
        return self.raw.get("kept")


class GeneratorClient:
    def __init__(self, url: str, token: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "GeneratorClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def generate(self, mask: str | os.PathLike | np.ndarray, modality: str,
                 organ_map: dict[int | str, str] | None = None, n: int | None = None, *,
                 region: str | None = None, organs: list[str] | None = None, keep: int | None = None,
                 seed: int | None = None, **sampling: Any) -> Generation:
        """`mask`: a PNG file of organ ids or a uint8 [H, W] array; ``n`` None: the service's default (1, or with
        ``keep`` its filter budget); ``sampling``: settings of ``SamplingSettings`` (``steps=20``, ``guidance=4``
        ...; None or not given: the service's). Raises `GenerationError` on a non-200, ValueError on a sampling
        setting the request schema refuses."""
        body = request_body(mask, modality, organ_map, n, region=region, organs=organs, keep=keep, seed=seed,
                            **SamplingOverrides(**sampling).model_dump(mode="json"))
        response = self.http.post("/v1/generate", json=body)
        data = _json_or_raise(response)
        images = []
        for c in data["candidates"]:
            png = base64.b64decode(c["image"])
            images.append(GeneratedImage(image=np.asarray(Image.open(io.BytesIO(png))), png=png, seed=c["seed"],
                                         score=c.get("score"), organ_scores=c.get("organ_scores"), fate=c.get("fate")))
        return Generation(images=images, bundle_id=data["bundle_id"], prompt=data["prompt"], raw=data)

    def modalities(self) -> list[dict]:
        return _json_or_raise(self.http.get("/v1/modalities"))["modalities"]

    def ready(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False


def request_body(mask: str | os.PathLike | np.ndarray, modality: str, organ_map: dict | None = None,
                 n: int | None = 1, **options: Any) -> dict[str, Any]:
    """The JSON body of POST /v1/generate; options that are None (``n`` included) are left to the service."""
    if isinstance(mask, np.ndarray):
        mask_b64 = mask_to_png_b64(mask)
    else:
        mask_b64 = base64.b64encode(Path(mask).read_bytes()).decode("ascii")
    body = {"modality": modality, "mask": mask_b64, "organ_map": {str(k): v for k, v in (organ_map or {}).items()}}
    body.update({k: v for k, v in {"n": n, **options}.items() if v is not None})
    return body


def _json_or_raise(response: httpx.Response) -> dict:
    if response.status_code != 200:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise GenerationError(response.status_code, str(detail))
    return response.json()


def write_generation(generation: Generation, out_dir: str | os.PathLike) -> list[Path]:
    """PNG per candidate (`candidate_<i>_seed<seed>.png`) and `generation.json` (seeds, scores, bundle id)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, item in enumerate(generation.images):
        path = out / f"candidate_{i:02d}_seed{item.seed}.png"
        storage.write_bytes(str(path), item.png)
        paths.append(path)
    summary = {"bundle_id": generation.bundle_id, "prompt": generation.prompt,
               "candidates": [{"file": p.name, "seed": item.seed, "score": item.score,
                               "organ_scores": item.organ_scores, "fate": item.fate}
                              for p, item in zip(paths, generation.images)],
               "generated": generation.generated, "stopped_early": generation.stopped_early, "kept": generation.kept,
               "filter": generation.raw.get("filter")}
    storage.write_bytes(str(out / "generation.json"), json.dumps(summary, indent=2).encode())
    return paths


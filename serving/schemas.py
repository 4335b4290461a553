"""HTTP request/response models of the generation API and the job handed from ingress to generator.

Bounds that depend on the deployment (n, steps, image size) are checked against `LimitSettings` in
`serving/inputs.py`; the static ones live here so that OpenAPI shows them (the sampling settings' come with them
from `SamplingSettings`).
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mrgen.models.sampling import SamplingOverrides, SamplingSettings


def _plain_text(value: str) -> str:
    """Text that reaches a prompt: no control characters (a NUL or an escape sequence would be copied into the
    prompt, the response and the logs)."""
    bad = sorted({f"U+{ord(c):04X}" for c in value if unicodedata.category(c) in ("Cc", "Cf", "Cs")})
    if bad:
        raise ValueError(f"control characters are not allowed ({', '.join(bad[:3])})")
    return value


Text = Annotated[str, AfterValidator(_plain_text)]


class GenerateRequest(SamplingOverrides):
    """POST /v1/generate: the mask and what to make of it; a sampling setting not given is the service's
    (``serve.sampling``)."""

    model_config = ConfigDict(extra="forbid")

    modality: Text = Field(..., min_length=1, max_length=200,
                           description="target modality: a label from GET /v1/modalities or free text")
    mask: str = Field(..., min_length=1, description="PNG, base64; pixel values are organ ids (0 = background)")
    organ_map: dict[Text, Text] = Field(default_factory=dict, max_length=255,
                                        description='organ id → name, e.g. {"1": "liver"}; every id in the mask must '
                                                    'appear')
    region: Text | None = Field(None, max_length=64, description="body region (one of the schema's REGIONS)")
    organs: list[Text] | None = Field(None, max_length=64,
                                      description="organ names for the prompt; default: the organs present in the mask")
    n: int = Field(1, ge=1, le=20, description="number of candidates; with keep, the most generated (not given: the "
                                               "service's serve.filter.candidates, at least keep)")
    keep: int | None = Field(None, ge=1, le=20,
                             description="score candidates with the service's filter (SAM2 or LiteMedSAM) and return "
                                         "at most this many that pass; candidates are generated in waves until this "
                                         "many pass strictly or n are used")
    seed: int | None = Field(None, ge=0, lt=2**31, description="seed of the first candidate; candidate i uses seed+i")
    timeout_s: float | None = Field(None, gt=0, description="give up (504) after this many seconds; at most the "
                                                            "service's request_timeout_s")


class Candidate(BaseModel):
    image: str = Field(..., description="PNG (8-bit grayscale), base64")
    seed: int
    score: float | None = Field(None, description="the filter's mean organ IoU (when keep was requested)")
    organ_scores: dict[str, dict[str, float]] | None = Field(
        None, description='per organ {"iou": .., "conf": ..} from the filter (when keep was requested)')
    fate: str | None = Field(None, description="selection outcome, e.g. kept or kept_relaxed (when keep was requested)")


class GenerateResponse(BaseModel):
    bundle_id: str = Field(..., description="hash of the model bundle that generated the images")
    prompt: str
    modality_attributes: str
    organs: list[str]
    candidates: list[Candidate]
    generated: int = Field(..., description="candidates sampled (before filtering; with keep, the waves that ran), "
                                            "those stopped early included")
    stopped_early: int = Field(0, description="candidates the filter stopped mid-sampling (requests with keep, "
                                              "serve.filter.early_reject_at): no image")
    kept: int | None = Field(None, description="candidates the filter kept, the ones returned (when keep was "
                                               "requested)")
    filter: str | None = Field(None, description="filter model id when keep was requested")
    batch_size: int = Field(..., description="requests sampled together with this one")
    seconds: float


@dataclass(frozen=True)
class EarlyReject:
    """Early rejection of a job's candidates: at ``at`` of the steps each x̂₀ is scored by the filter and those whose
    mean IoU is below ``below`` stop there (serve.filter.early_reject_at / early_reject_below)."""

    at: float
    below: float


@dataclass
class GenerationJob:
    """A validated request as the generator sees it. Jobs with equal `batch_key` share one sampling call."""

    prompt: str
    mask: np.ndarray  # uint8 [H, W]
    seeds: list[int]
    sampling: SamplingSettings
    organ_map: dict[int, str] = field(default_factory=dict)  # id → name: the generator conditions on names
    organs: list[str] = field(default_factory=list)  # the organs the filter scores (the prompt's)
    early_reject: EarlyReject | None = None          # judged mid-sampling by the filter (requests with keep)

    @property
    def batch_key(self) -> tuple:
        # one pipeline call has one probe step: jobs judged at another fraction (or not at all) get their own
        return self.sampling, self.mask.shape, self.early_reject.at if self.early_reject else None


@dataclass
class GenerationResult:
    images: np.ndarray  # float32 [n, H, W] in [0, 1]: the finished candidates
    seeds: list[int]    # theirs
    batch_size: int
    bundle_id: str
    stopped: int = 0    # candidates stopped early (their seeds used up, no image)

    @property
    def generated(self) -> int:
        """Candidates sampled, those stopped early included."""
        return len(self.seeds) + self.stopped

"""Configuration of `mrgen sample` (section ``sample``): the flags, validated."""
from __future__ import annotations

from pydantic import Field

from mrgen.models.sampling import PAPER_SAMPLING, SamplingSettings
from mrgen.platform.config import ConfigBase


class SampleConfig(ConfigBase):
    section = "sample"
    model: str = Field(description="model bundle URI (ours, `embedded`, or the official release's checkpoint folder)")
    mask: str = Field(description="PNG of organ ids (0 = background), at a size the bundle generates")
    organ_map: dict[str, str] = Field(default_factory=dict, description='organ id → name, e.g. {"1": "liver"}; '
                                                                        "every id in the mask must be named")
    modality: str = Field(min_length=1, description="target modality label (official bundles: a key of --attributes)")
    out: str = Field(description="output folder: candidate_000.png … and candidates.json")
    region: str | None = Field(None, description="body region for the prompt")
    prompt: str | None = Field(None, description="the whole prompt, verbatim (replaces the bundle's template)")
    attributes: str | None = Field(None, description="modality_attributes.json (label → text; the release's format)")
    organ_weights: dict[str, float] = Field(default_factory=dict, description="official bundles: organ name → w "
                                                                              "of the condition 2·w − 1 (default 1)")
    n: int = Field(1, ge=1, le=100, description="candidates")
    seed: int = Field(0, ge=0, description="candidate i has seed seed + i")
    sampling: SamplingSettings = Field(PAPER_SAMPLING, description="how the candidates are sampled (default: the "
                                                                   "release's DDIM 50, guidance 7)")
    device: str = Field("cpu", description="torch device (cpu, cuda)")

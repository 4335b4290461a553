"""Configuration of `mrgen filter calibrate` (section ``calibrate``): the scorer calibrated, in the ``filter`` section
`mrgen synthesize` and `mrgen serve` take, and the real slices it scores. The values do not depend on scale: the
presets ``tiny`` and ``paper`` are the fields' defaults."""
from __future__ import annotations

from pydantic import Field, model_validator

from mrgen.models.scorers import FilterSettings
from mrgen.platform.config import ConfigBase, same_at_every_scale


@same_at_every_scale
class CalibrateConfig(ConfigBase):
    """The scorer to calibrate (``filter.kind``, ``filter.scorer``; ``filter.rule`` decides which organs the slice
    means count) and the slices of the DB it scores."""

    section = "calibrate"
    filter: FilterSettings = Field(FilterSettings(kind="medsam"), description="the scorer calibrated (default "
                                                                              "LiteMedSAM, the shipped weights)")
    dataset: list[str] = Field(default_factory=list, description="only slices of these datasets (empty: all)")
    split: str = Field("train", description="split of the slices scored")
    quantile: float = Field(0.25, gt=0, lt=1, description="each threshold at this quantile of its distribution")
    limit: int | None = Field(200, ge=1, description="at most this many slices, evenly spread (None: all)")

    @model_validator(mode="after")
    def _a_scorer(self) -> CalibrateConfig:
        if not self.filter.enabled:
            raise ValueError(f"filter.kind {self.filter.kind!r}: calibrate a scorer (sam2 or medsam)")
        return self

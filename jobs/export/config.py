"""Configuration of `mrgen export nnunet` (section ``export``): what is exported besides the command's inputs.

The values do not depend on scale: the presets ``tiny`` and ``paper`` are the fields' defaults.
"""
from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from mrgen.platform.config import ConfigBase, same_at_every_scale


@same_at_every_scale
class ExportConfig(ConfigBase):
    """nnU-Net v2 raw dataset export of MRGen-DB slices."""

    section = "export"
    split: str = Field("test", min_length=1, description="split of --real exported as imagesTs/labelsTs")
    labels: list[str] | None = Field(None, min_length=1, description="organ names in label order, 1, 2, ... "
                                                                     "(None: from the slices' organ maps); names or "
                                                                     "comma-separated names")
    verify: bool = Field(False, description="run nnU-Net's verify_dataset_integrity on the exported dataset")

    @field_validator("labels", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        return [name for item in value for name in item.split(",")] if isinstance(value, list) else value

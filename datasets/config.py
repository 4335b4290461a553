"""Configuration of MRGen-DB builds (`mrgen db ...`), section ``db``."""
from __future__ import annotations

from pydantic import Field, field_validator

from mrgen.platform.config import ConfigBase, preset


class DBConfig(ConfigBase):
    section = "db"
    resolution: int = Field(64, ge=16, le=2048, description="slices are resized to resolution x resolution")
    shard_rows: int = Field(512, ge=1, description="target rows per Parquet shard (shards hold whole volumes)")
    clip_percentiles: tuple[float, float] = Field((0.5, 99.5),
                                                  description="intensity clip for volumes with masks (C.1)")
    modality_attributes: dict[str, str] = Field(default_factory=dict,
                                                description="extra modality label → attribute text, extending the "
                                                            "built-in table")
    strict: bool = Field(False, description="stop at the first bad input instead of reporting and skipping it")
    region_model: str | None = Field(None,
                                     description="open_clip model for annotate-regions: 'local-dir:/path' or "
                                                 "'hf-hub:...'")
    region_threshold: float = Field(0.40, ge=0, le=1,
                                    description="below this confidence a slice's region stays unlabeled")
    region_actors: int = Field(1, ge=1, description="actor pool size for annotate-regions")
    cpus_per_task: float = Field(1.0, gt=0, description="CPUs per volume-reading task")

    @field_validator("clip_percentiles")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] < v[1] <= 100:
            raise ValueError(f"need 0 <= low < high <= 100, got {v}")
        return v


@preset(DBConfig, "tiny")
def _tiny() -> dict:
    return {"resolution": 64, "shard_rows": 512}


@preset(DBConfig, "paper")
def _paper() -> dict:
    return {"resolution": 512, "shard_rows": 256,
            "region_model": "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"}

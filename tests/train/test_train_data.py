"""The stage datasets Ray Train streams (the controller's masked / unmasked mixture, the cached variant), and the
training record a bundle's manifest keeps of each stage."""
from __future__ import annotations

import hashlib
from collections import Counter

from mrgen.jobs.train.config import TrainConfig
from mrgen.jobs.train.data import build_dataset


def _rows(ds) -> Counter:
    return Counter((hashlib.sha1(r["image"]).hexdigest(), bool(r["has_mask"])) for r in ds.iter_rows())


def test_cached_stage_data_holds_the_streamed_rows(tiny_db):
    config = TrainConfig.load("tiny", ["cache_data=false", "data_repeat=2", "unmasked_fraction=0.5"])
    streamed = build_dataset(tiny_db, config, "controlnet")
    cached = build_dataset(tiny_db, config.with_overrides({"cache_data": True}), "controlnet")
    assert type(streamed).__name__ == "Dataset" and type(cached).__name__ == "MaterializedDataset"
    rows = _rows(streamed)
    assert rows == _rows(cached)
    # two passes, each every masked train slice once plus a sample of unmasked ones near half the pass
    masked = sum(n for (_, has_mask), n in rows.items() if has_mask)
    unmasked = sum(rows.values()) - masked
    assert masked % 2 == 0 and all(n % 2 == 0 for (_, has_mask), n in rows.items() if has_mask)
    assert 0.3 < unmasked / (masked + unmasked) < 0.7


def test_a_warm_started_stage_keeps_the_record_of_the_run_it_fine_tuned(tiny_db):
    from mrgen.jobs.train.run import training_record

    earlier = {"command": "mrgen train controlnet --db D --out A", "steps": 10, "run_id": "controlnet-a"}
    previous = {"stages": {"controlnet": earlier, "unet": {"run_id": "unet-a"}}}
    state = {"step": 5, "run_id": "controlnet-b", "history": [{"loss": 0.5}]}
    config = TrainConfig.load("tiny")
    fresh = training_record(previous, config, "controlnet", tiny_db, state, 1.0)["stages"]
    warm = training_record(previous, config.with_overrides({"warm_start": True}), "controlnet", tiny_db, state,
                           1.0)["stages"]
    assert "warm_start_from" not in fresh["controlnet"] and fresh["unet"] == {"run_id": "unet-a"}
    assert warm["controlnet"]["warm_start_from"] == earlier and warm["controlnet"]["run_id"] == "controlnet-b"
    again = training_record({"stages": warm}, config.with_overrides({"warm_start": True}), "controlnet", tiny_db,
                            {**state, "run_id": "controlnet-c"}, 1.0)["stages"]["controlnet"]
    assert again["warm_start_from"]["warm_start_from"] == earlier

"""Bad input to `mrgen synthesize`: clear errors before anything runs, or skips with reasons; nothing written is
lost."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mrgen.datasets.schema import arrow_schema, encode_image, encode_mask
from mrgen.datasets.store import ShardWriter, read_table
from mrgen.jobs.synthesis.config import SynthesisConfig
from mrgen.jobs.synthesis.run import SynthesisInputError, run_synthesis


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> str:
    from mrgen.models.bundle import build_random_bundle

    path = str(tmp_path_factory.mktemp("bad_input_bundle") / "bundle")
    build_random_bundle("tiny").save(path)
    return path


@pytest.fixture(scope="module")
def odd_db(tiny_db, tmp_path_factory) -> str:
    """Three masked slices: a good one, one at 32x32, one whose mask holds an id its organ map lacks."""
    rows = read_table(tiny_db, has_mask=True, dataset="phantom-src").to_pylist()
    good = max(rows, key=lambda r: np.frombuffer(r["mask"], np.uint8).astype(bool).sum())
    small = dict(good, slice_id="odd/small/0000", dataset="odd", volume_id="small", height=32, width=32)
    small["image"] = encode_image(np.frombuffer(good["image"], "<f4").reshape(64, 64)[::2, ::2])
    small["mask"] = encode_mask(np.frombuffer(good["mask"], np.uint8).reshape(64, 64)[::2, ::2])
    bad_ids = dict(good, slice_id="odd/badid/0000", dataset="odd", volume_id="badid")
    mask = np.frombuffer(good["mask"], np.uint8).reshape(64, 64).copy()
    mask[:4, :4] = 9
    bad_ids["mask"] = encode_mask(mask)
    good = dict(good, slice_id="odd/good/0000", dataset="odd", volume_id="good")
    out = str(tmp_path_factory.mktemp("odd_db") / "db")
    writer = ShardWriter(out)
    writer.write(pa.Table.from_pylist([good, small, bad_ids], schema=arrow_schema()),
                 ["odd/good", "odd/small", "odd/badid"])
    writer.commit()
    return out


def _config(bundle: str, db: str, out: str, *extra: str) -> SynthesisConfig:
    return SynthesisConfig.load("tiny", [f"model={bundle}", f"source={db}", f"out={out}",
                                         "target_modalities=['T2 SPIR MRI']", "candidates=2", "keep=1", "steps=2",
                                         "filter=none", *extra])


def test_errors_before_anything_runs(bundle, odd_db, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SynthesisInputError, match="unknown modality label 'T9 SPARKLE'"):
        run_synthesis(_config(bundle, odd_db, str(out), "target_modalities=['T9 SPARKLE']"))
    partial = tmp_path / "partial-bundle"
    shutil.copytree(bundle, partial)
    shutil.rmtree(partial / "controlnet")
    with pytest.raises(SynthesisInputError, match="controlnet/config.json"):
        run_synthesis(_config(str(partial), odd_db, str(out)))
    with pytest.raises(SynthesisInputError, match="--sam2-random"):
        run_synthesis(_config(bundle, odd_db, str(out), "filter=sam2"))
    with pytest.raises(SynthesisInputError, match="not an MRGen-DB"):
        run_synthesis(_config(bundle, str(tmp_path / "nothing"), str(out)))
    assert not out.exists()


def test_bad_masks_are_skipped_with_reasons_and_nothing_is_lost(bundle, odd_db, tmp_path):
    out = str(tmp_path / "out")
    report = run_synthesis(_config(bundle, odd_db, out))
    reasons = sorted(report["totals"]["skipped"].values())
    assert len(reasons) == 2
    assert "mask holds organ ids [9] missing from its organ_map" in reasons[0]
    assert "mask is 32x32 but the model generates 64x64" in reasons[1]
    table = read_table(out)
    assert table["source_slice_id"].to_pylist() == ["odd/good/0000"]
    assert table["fate"].to_pylist() == ["kept_unfiltered"] and table["filter_model"].to_pylist() == ["none"]
    index_before = Path(out, "index.json").read_text()
    with pytest.raises(SynthesisInputError):
        run_synthesis(_config(bundle, odd_db, out, "target_modalities=['T9 SPARKLE']"))
    with pytest.raises(SynthesisInputError, match=r"other settings \(seed\)"):
        run_synthesis(_config(bundle, odd_db, out, "seed=7"))  # resuming with other settings would mix runs
    assert Path(out, "index.json").read_text() == index_before
    assert read_table(out).num_rows == 1

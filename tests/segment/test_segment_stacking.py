"""Exported test slices are grouped by volume and stacked in slice order, whatever order they are listed in."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mrgen.jobs.segment.predict import stacked_volumes


def _write_case(folder, case: str, value: int, label: int) -> None:
    Image.fromarray(np.full((8, 8), value, np.uint8), mode="L").save(folder / "imagesTs" / f"{case}_0000.png")
    Image.fromarray(np.full((8, 8), label, np.uint8), mode="L").save(folder / "labelsTs" / f"{case}.png")


@pytest.fixture
def exported(tmp_path):
    (tmp_path / "imagesTs").mkdir()
    (tmp_path / "labelsTs").mkdir()
    # volume a: slices 0..3 with image value 10 * index; volume b: slices 5, 7 (gaps allowed)
    for z in range(4):
        _write_case(tmp_path, f"a_{z:04d}", 10 * z, z % 2)
    for z in (5, 7):
        _write_case(tmp_path, f"b_{z:04d}", 200 + z, 3)
    return tmp_path


def test_slices_are_stacked_by_index_per_volume(exported):
    groups = {"ds/a": [(2, "a_0002"), (0, "a_0000"), (3, "a_0003"), (1, "a_0001")],
              "ds/b": [(7, "b_0007"), (5, "b_0005")]}
    out = {v: (idx, img, ref) for v, idx, img, ref in stacked_volumes(exported, groups)}
    assert sorted(out) == ["ds/a", "ds/b"]
    idx, img, ref = out["ds/a"]
    assert idx == [0, 1, 2, 3]
    assert img.shape == (4, 8, 8) and img.dtype == np.float32
    assert [int(img[z, 0, 0]) for z in range(4)] == [0, 10, 20, 30]
    assert [int(ref[z, 0, 0]) for z in range(4)] == [0, 1, 0, 1]
    idx, img, ref = out["ds/b"]
    assert idx == [5, 7] and [int(img[z, 0, 0]) for z in range(2)] == [205, 207] and ref.dtype == np.uint8


def test_repeated_slice_index_is_an_error(exported):
    with pytest.raises(ValueError, match="ds/a"):
        list(stacked_volumes(exported, {"ds/a": [(1, "a_0001"), (1, "a_0002")]}))


def test_volume_groups_from_export_cases_json(tmp_path):
    """The grouping written by the exporter's cases.json is what eval stacks by."""
    import json

    from mrgen.jobs.export.nnunet import volume_groups

    cases = {"x_0001": {"set": "test", "slice_id": "d/v1/0001", "dataset": "d", "volume_id": "v1", "slice_index": 1},
             "x_0000": {"set": "test", "slice_id": "d/v1/0000", "dataset": "d", "volume_id": "v1", "slice_index": 0},
             "y_0000": {"set": "test", "slice_id": "d/v2/0000", "dataset": "d", "volume_id": "v2", "slice_index": 0},
             "syn-1": {"set": "train", "slice_id": "s/v1/0000", "dataset": "s", "volume_id": "v1", "slice_index": 0}}
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    assert volume_groups(tmp_path) == {"d/v1": [(0, "x_0000"), (1, "x_0001")], "d/v2": [(0, "y_0000")]}

"""The mask condition by organ name: one organ, one intensity, whatever id its dataset gives it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mrgen.datasets.phantom_anatomy import ORGAN_IDS
from mrgen.models.condition import MaskCondition, UnknownOrganError, mask_to_condition, official_vocabulary


def _mask(*ids: int) -> np.ndarray:
    return np.array([[list(ids)]], np.uint8)  # [1, 1, len(ids)]


def test_vocabulary_maps_organs_by_name_not_id():
    vocab = MaskCondition.from_organ_names(["liver", "spleen", "right kidney"])
    phantom = vocab.encode(_mask(0, 1, 2, 3), {1: "liver", 2: "spleen", 3: "right kidney"})
    other_ids = vocab.encode(_mask(0, 3, 1, 2), {3: "liver", 1: "spleen", 2: "right kidney"})
    assert torch.equal(phantom, other_ids)  # spleen = 1 in one dataset, 2 in the other: the same intensity
    assert phantom.flatten().tolist() == pytest.approx([0.0, 1 / 2, 2 / 3, 3 / 4])


def test_phantom_vocabulary_equals_the_ratio_encoding_of_its_ids():
    """Bundles trained before the vocabulary (ratio of raw ids) and after it condition the phantom identically."""
    names = [ORGAN_IDS[i] for i in sorted(ORGAN_IDS)]
    mask = np.arange(7, dtype=np.uint8).reshape(1, 1, 7)
    assert torch.allclose(MaskCondition.from_organ_names(names).encode(mask, ORGAN_IDS), mask_to_condition(mask))


def test_unknown_organs_are_refused_by_name():
    vocab = MaskCondition.from_organ_names(["liver", "spleen"])
    with pytest.raises(UnknownOrganError, match=r"\['heart'\]") as info:
        vocab.encode(_mask(1, 2), {1: "liver", 2: "heart"})
    assert info.value.organs == ["heart"]
    assert vocab.unknown(["liver", "heart", "heart", "lung"]) == ["heart", "lung"]
    # a collection's organ map names every label of the collection: only the organs in the mask matter
    assert vocab.encode(_mask(0, 1), {1: "liver", 2: "heart"}).flatten().tolist() == [0.0, 0.5]
    with pytest.raises(ValueError, match="organ_map"):
        vocab.encode(_mask(1), None)


def test_official_release_condition_background_minus_one_organ_two_w_minus_one():
    chaos = official_vocabulary({"liver": 0.3, "right kidney": 0.5, "left kidney": 0.4, "spleen": 0.6})
    organ_map = {1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen", 5: "bladder"}
    values = chaos.encode(_mask(0, 1, 2, 3, 4, 5), organ_map).flatten().tolist()
    # background -1; 2w-1: liver -0.4, right kidney 0, left kidney -0.2, spleen 0.2; an organ without weight w=1 -> 1
    assert values == pytest.approx([-1.0, -0.4, 0.0, -0.2, 0.2, 1.0])
    assert chaos.unknown(["bladder"]) == []  # the release conditions any organ (weight 1.0)
    assert torch.equal(chaos.empty(1, 2), torch.full((1, 1, 2, 2), -1.0))  # target-modality slices: all -1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        official_vocabulary({"liver": 1.5})


def test_manifest_round_trip_and_legacy_bundles():
    for condition in (MaskCondition.from_organ_names(["liver", "bladder"]), official_vocabulary({"liver": 0.3})):
        again = MaskCondition.from_manifest(condition.manifest_fields())
        mask = _mask(0, 1, 2)
        organ_map = {1: "liver", 2: "bladder"}
        assert torch.equal(again.encode(mask, organ_map), condition.encode(mask, organ_map))
    legacy = MaskCondition.from_manifest({"mask_encoding": "ratio"})
    assert not legacy.by_name and legacy.unknown(["anything"]) == []
    assert torch.equal(legacy.encode(_mask(0, 1, 3)), mask_to_condition(_mask(0, 1, 3)))
    assert torch.equal(MaskCondition.from_manifest({}).encode(_mask(2)), mask_to_condition(_mask(2)))


def test_onehot_vocabulary_gives_each_organ_its_own_channel_by_name():
    vocab = MaskCondition.from_organ_names(["liver", "spleen", "right kidney"], onehot=True)
    assert vocab.channels == 3
    cond = vocab.encode(_mask(0, 3, 1, 2), {3: "liver", 1: "spleen", 2: "right kidney"})
    assert cond.shape == (1, 3, 1, 4)
    assert cond[0, :, 0].tolist() == [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]  # liver, spleen, right kidney
    assert torch.equal(vocab.empty(2, 4), torch.zeros(2, 3, 4, 4))
    again = MaskCondition.from_manifest(vocab.manifest_fields())
    assert again.channels == 3 and torch.equal(again.encode(_mask(1, 2), {1: "liver", 2: "spleen"}),
                                               vocab.encode(_mask(1, 2), {1: "liver", 2: "spleen"}))
    with pytest.raises(UnknownOrganError, match="heart"):
        vocab.encode(_mask(1), {1: "heart"})

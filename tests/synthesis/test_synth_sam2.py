"""SAM2 loading through the real checkpoint path ({"model": state_dict}, weights_only) and batched scoring."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mrgen.models.sam2_scorer import Sam2LoadError, Sam2Scorer, Sam2Settings, build_sam2_model

SIZE = 256


@pytest.fixture(scope="module")
def random_scorer():
    torch.manual_seed(0)
    return Sam2Scorer(Sam2Settings(image_size=SIZE, allow_random=True))


def _mask() -> np.ndarray:
    mask = np.zeros((64, 64), np.uint8)
    mask[8:30, 8:34] = 1
    mask[38:58, 36:60] = 2
    return mask


def test_checkpoint_roundtrip_gives_identical_scores(random_scorer, tmp_path):
    ckpt = tmp_path / "sam2_tiny.pt"
    torch.save({"model": random_scorer.model.state_dict()}, ckpt)
    loaded = Sam2Scorer(Sam2Settings(image_size=SIZE, checkpoint=str(ckpt)))
    assert loaded.meaningful and not random_scorer.meaningful
    images = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32)
    a = random_scorer.score(images, _mask(), {1: "liver", 2: "spleen"})
    b = loaded.score(images, _mask(), {1: "liver", 2: "spleen"})
    assert [[(o.iou, o.conf) for o in c.organs] for c in a] == [[(o.iou, o.conf) for o in c.organs] for c in b]
    assert [c.index for c in a] == [0, 1, 2] and [o.organ for o in a[0].organs] == ["liver", "spleen"]


def test_batched_organ_prompts_match_sam2_predict(random_scorer):
    """One embedding + one decoder call for all organs equals SAM2's own set_image/predict per organ."""
    image = np.random.default_rng(1).random((64, 64), dtype=np.float32)
    batched = random_scorer.score(image[None], _mask(), {1: "liver", 2: "spleen"})[0]
    reference = random_scorer.score_reference(image, _mask(), {1: "liver", 2: "spleen"})
    for x, y in zip(batched.organs, reference.organs):
        assert x.organ == y.organ
        assert x.iou == pytest.approx(y.iou, abs=1e-6) and x.conf == pytest.approx(y.conf, abs=1e-5)


def test_absent_organ_and_unknown_ids(random_scorer):
    image = np.zeros((1, 64, 64), np.float32)
    scores = random_scorer.score(image, _mask(), {1: "liver", 2: "spleen", 5: "bladder"}, organs=["liver", "bladder"])
    assert [(o.organ, o.present) for o in scores[0].organs] == [("liver", True), ("bladder", False)]
    with pytest.raises(KeyError, match=r"organ ids \[2\]"):
        random_scorer.score(image, _mask(), {1: "liver"})


def test_refuses_random_unless_asked_and_bad_checkpoints(tmp_path):
    with pytest.raises(Sam2LoadError, match="--sam2-random"):
        build_sam2_model(Sam2Settings(image_size=SIZE))
    with pytest.raises(Sam2LoadError, match="does not exist"):
        build_sam2_model(Sam2Settings(image_size=SIZE, checkpoint=str(tmp_path / "nope.pt")))
    bad = tmp_path / "bad.pt"
    torch.save({"model": {"not_a_sam2_key": torch.zeros(1)}}, bad)
    with pytest.raises(Sam2LoadError, match="does not match"):
        build_sam2_model(Sam2Settings(image_size=SIZE, checkpoint=str(bad)))


def test_hydra_global_state_is_restored():
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    initialize_config_module("sam2.configs", version_base="1.2")  # stands in for a project's own Hydra setup
    before = GlobalHydra.instance().hydra
    try:
        build_sam2_model(Sam2Settings(image_size=SIZE, allow_random=True))
        assert GlobalHydra.instance().hydra is before
    finally:
        GlobalHydra.instance().clear()
        initialize_config_module("sam2", version_base="1.2")  # as `import sam2` leaves it

"""SAM2 loading through the real checkpoint path ({"model": state_dict}, weights_only) and batched scoring."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mrgen.models.sam2_scorer import Sam2LoadError, Sam2Scorer, build_sam2_model
from mrgen.models.scorers import ScorerSettings

SIZE = 256


@pytest.fixture(scope="module")
def random_scorer():
    torch.manual_seed(0)  # float32: the batched decoder call is checked against SAM2's predict to 1e-6
    return Sam2Scorer(ScorerSettings(image_size=SIZE, random=True, precision="float32"))


def _mask() -> np.ndarray:
    mask = np.zeros((64, 64), np.uint8)
    mask[8:30, 8:34] = 1
    mask[38:58, 36:60] = 2
    return mask


def test_checkpoint_roundtrip_gives_identical_scores(random_scorer, tmp_path):
    ckpt = tmp_path / "sam2_tiny.pt"
    torch.save({"model": random_scorer.model.state_dict()}, ckpt)
    loaded = Sam2Scorer(ScorerSettings(image_size=SIZE, checkpoint=str(ckpt), precision="float32"))
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
        build_sam2_model(ScorerSettings(image_size=SIZE))
    with pytest.raises(Sam2LoadError, match="does not exist"):
        build_sam2_model(ScorerSettings(image_size=SIZE, checkpoint=str(tmp_path / "nope.pt")))
    bad = tmp_path / "bad.pt"
    torch.save({"model": {"not_a_sam2_key": torch.zeros(1)}}, bad)
    with pytest.raises(Sam2LoadError, match="does not match"):
        build_sam2_model(ScorerSettings(image_size=SIZE, checkpoint=str(bad)))


def test_hydra_global_state_is_restored():
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    initialize_config_module("sam2.configs", version_base="1.2")  # stands in for a project's own Hydra setup
    before = GlobalHydra.instance().hydra
    try:
        build_sam2_model(ScorerSettings(image_size=SIZE, random=True))
        assert GlobalHydra.instance().hydra is before
    finally:
        GlobalHydra.instance().clear()
        initialize_config_module("sam2", version_base="1.2")  # as `import sam2` leaves it


def test_multimask_keeps_the_best_scored_mask_as_predict_does(random_scorer):
    """The release's setting: three masks per prompt, the best-scored one kept; the batched decoder call matches
    SAM2's own predict(multimask_output=True) followed by the same choice."""
    scorer = Sam2Scorer(ScorerSettings(image_size=SIZE, random=True, multimask=True, precision="float32"))
    image = np.random.default_rng(2).random((64, 64), dtype=np.float32)
    batched = scorer.score(image[None], _mask(), {1: "liver", 2: "spleen"})[0]
    reference = scorer.score_reference(image, _mask(), {1: "liver", 2: "spleen"})
    single = random_scorer.score(image[None], _mask(), {1: "liver", 2: "spleen"})[0]
    for x, y, z in zip(batched.organs, reference.organs, single.organs):
        assert x.iou == pytest.approx(y.iou, abs=1e-6) and x.conf == pytest.approx(y.conf, abs=1e-5)
        assert x.conf >= z.conf - 1e-6 or x.iou != z.iou  # the best of three, not the single-mask output
    assert "multimask" in scorer.model_id


def test_sam2_0_config_builds_and_takes_its_own_checkpoint(tmp_path):
    """The official release filters with SAM2.0 (sam2_hiera_l.yaml); the tiny SAM2.0 config goes through the same
    checkpoint path, and a SAM2.1 state dict does not fit it."""
    sam20 = build_sam2_model(ScorerSettings(config_name="2.0-tiny", image_size=SIZE, random=True))
    ckpt = tmp_path / "sam2_hiera_tiny.pt"
    torch.save({"model": sam20.state_dict()}, ckpt)
    loaded = build_sam2_model(ScorerSettings(config_name="configs/sam2/sam2_hiera_t.yaml", image_size=SIZE,
                                             checkpoint=str(ckpt)))
    assert all(torch.equal(a, b) for a, b in zip(sam20.state_dict().values(), loaded.state_dict().values()))
    sam21 = tmp_path / "sam2.1_tiny.pt"
    torch.save({"model": build_sam2_model(ScorerSettings(image_size=SIZE, random=True)).state_dict()}, sam21)
    with pytest.raises(Sam2LoadError, match="does not match config configs/sam2/sam2_hiera_t.yaml"):
        build_sam2_model(ScorerSettings(config_name="2.0-tiny", image_size=SIZE, checkpoint=str(sam21)))

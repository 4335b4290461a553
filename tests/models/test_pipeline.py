import numpy as np
import pytest
import torch

from mrgen.models.bundle import ModelBundle, build_random_bundle
from mrgen.models.pipeline import MRGenPipeline

torch.set_num_threads(1)
PROMPTS = ["T1 MRI; upper abdominal region; liver", "T2 SPIR MRI; upper abdominal region; spleen"]
STEPS = 4


@pytest.fixture(scope="module")
def pipe():
    return MRGenPipeline(build_random_bundle("tiny", seed=0))


@pytest.fixture(scope="module")
def masks():
    m = np.zeros((2, 64, 64), np.uint8)
    m[0, 10:30, 10:40] = 1
    m[1, 30:56, 20:44] = 2
    return m


def test_shape_dtype_range(pipe, masks):
    images = pipe.generate(PROMPTS, masks, 3, steps=STEPS, seeds=list(range(6)))
    assert images.shape == (6, 64, 64) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_same_seeds_same_images_other_seeds_other_images(pipe, masks):
    a = pipe.generate(PROMPTS, masks, 2, steps=STEPS, seeds=[1, 2, 3, 4])
    b = pipe.generate(PROMPTS, masks, 2, steps=STEPS, seeds=[1, 2, 3, 4])
    c = pipe.generate(PROMPTS, masks, 2, steps=STEPS, seeds=[5, 6, 7, 8])
    assert np.array_equal(a, b)
    assert all(not np.allclose(a[i], c[i], atol=1e-3) for i in range(4))
    assert not np.allclose(a[0], a[1], atol=1e-3)  # candidates of one mask differ


@pytest.mark.parametrize("sampler", ["ddim", "dpm", "ddpm"])
def test_batching_does_not_change_images(pipe, masks, sampler):
    whole = pipe.generate(PROMPTS, masks, 2, steps=STEPS, sampler=sampler, seeds=[1, 2, 3, 4], batch_size=4)
    single = pipe.generate(PROMPTS, masks, 2, steps=STEPS, sampler=sampler, seeds=[1, 2, 3, 4], batch_size=1)
    np.testing.assert_allclose(whole, single, atol=1e-5)


def test_outputs_are_mask_major(pipe, masks):
    images = pipe.generate(PROMPTS, masks, 2, steps=STEPS, seeds=[10, 11, 12, 13])
    third = pipe.generate(PROMPTS[1:], masks[1:], 1, steps=STEPS, seeds=[12])
    np.testing.assert_allclose(images[2], third[0], atol=1e-5)


def test_guidance_prompt_and_mask_change_the_image(pipe, masks):
    base = pipe.generate(PROMPTS[:1], masks[:1], 1, steps=STEPS, seeds=[0], guidance=7.0)
    no_cfg = pipe.generate(PROMPTS[:1], masks[:1], 1, steps=STEPS, seeds=[0], guidance=1.0)
    other_prompt = pipe.generate(PROMPTS[1:], masks[:1], 1, steps=STEPS, seeds=[0], guidance=7.0)
    other_mask = pipe.generate(PROMPTS[:1], masks[1:], 1, steps=STEPS, seeds=[0], guidance=7.0)
    for other in (no_cfg, other_prompt, other_mask):
        assert np.abs(base - other).max() > 1e-3


def test_conditioning_scale_weighs_the_mask_controller(pipe, masks):
    def sample(scale, m=masks[:1]):
        return pipe.generate(PROMPTS[:1], m, 1, steps=STEPS, seeds=[0], conditioning_scale=scale)

    np.testing.assert_allclose(sample(0.0), pipe.generate_text_only(PROMPTS[:1], steps=STEPS, seeds=[0]), atol=1e-6)
    np.testing.assert_allclose(sample(0.0), sample(0.0, masks[1:]), atol=1e-6)  # the mask no longer matters
    mask_effect = {s: np.abs(sample(s) - sample(s, masks[1:])).mean() for s in (1.0, 3.0)}
    assert mask_effect[3.0] > mask_effect[1.0] > 1e-4


def test_text_only_generation(pipe):
    images = pipe.generate(PROMPTS, None, 1, steps=STEPS, seeds=[0, 1])
    assert images.shape == (2, 64, 64)
    np.testing.assert_array_equal(pipe.generate_text_only(PROMPTS, 1, steps=STEPS, seeds=[0, 1]), images)


def test_bad_requests_are_named(pipe, masks):
    with pytest.raises(ValueError, match="seeds"):
        pipe.generate(PROMPTS, masks, 2, steps=STEPS, seeds=[1, 2])
    with pytest.raises(ValueError, match="2 prompts"):
        pipe.generate(PROMPTS, masks[:1], 1, steps=STEPS, seeds=[1, 2])
    with pytest.raises(ValueError, match="seeds must lie"):
        pipe.generate(PROMPTS, masks, 1, steps=STEPS, seeds=[1, -2])
    with pytest.raises(ValueError, match="sampler"):
        pipe.generate(PROMPTS, masks, 1, steps=STEPS, seeds=[1, 2], sampler="euler")
    with pytest.raises(ValueError, match="divisible"):
        pipe.generate(PROMPTS[:1], np.zeros((1, 62, 62), np.uint8), 1, steps=STEPS, seeds=[1])
    text_only = build_random_bundle()
    text_only.controlnet = None
    with pytest.raises(ValueError, match="controlnet"):
        MRGenPipeline(text_only).generate(PROMPTS, masks, 1, steps=STEPS, seeds=[1, 2])


def test_loaded_bundle_generates_what_the_saved_one_did(pipe, masks, tmp_path):
    expected = pipe.generate(PROMPTS, masks, 1, steps=STEPS, seeds=[3, 4])
    pipe.bundle.save(str(tmp_path / "b"))
    loaded = MRGenPipeline(ModelBundle.load(str(tmp_path / "b")))
    np.testing.assert_array_equal(loaded.generate(PROMPTS, masks, 1, steps=STEPS, seeds=[3, 4]), expected)


def test_bfloat16_bundle_generates(pipe, masks, tmp_path):
    pipe.bundle.save(str(tmp_path / "b"))
    bundle = ModelBundle.load(str(tmp_path / "b"), dtype=torch.bfloat16)
    assert {p.dtype for part in bundle.parts().values() for p in part.parameters()} == {torch.bfloat16}
    images = MRGenPipeline(bundle).generate(PROMPTS[:1], masks[:1], 1, steps=2, seeds=[0])
    reference = pipe.generate(PROMPTS[:1], masks[:1], 1, steps=2, seeds=[0])
    assert images.dtype == np.float32 and np.isfinite(images).all()
    assert np.abs(images - reference).mean() < 0.1  # same model, lower precision


def test_onehot_bundle_draws_each_organ_from_its_own_channel(masks):
    """A controller with one condition channel per organ: the organ's *name* picks the channel, so renaming an organ
    changes the image and relabelling its id does not; a controller whose channels do not fit the vocabulary is
    refused naming both counts."""
    from mrgen.models.condition import MaskCondition

    vocabulary = MaskCondition.from_organ_names(["liver", "spleen", "bladder"], onehot=True).manifest_fields()
    bundle = build_random_bundle("tiny", seed=1, overrides={"controlnet": {"conditioning_channels": 3}})
    bundle.manifest.update(vocabulary)
    onehot = MRGenPipeline(bundle)
    one = masks[:1]

    def draw(mask, organ_map):
        return onehot.generate(PROMPTS[:1], mask, 1, steps=STEPS, seeds=[0], organ_maps=[organ_map])

    liver = draw(one, {1: "liver"})
    assert liver.shape == (1, 64, 64)
    np.testing.assert_allclose(draw(np.where(one == 1, 5, 0).astype(np.uint8), {5: "liver"}), liver, atol=1e-5)
    assert np.abs(draw(one, {1: "spleen"}) - liver).max() > 1e-3
    single = build_random_bundle("tiny", seed=1)
    single.manifest.update(vocabulary)
    with pytest.raises(ValueError, match="takes 1 condition channels.*gives 3"):
        MRGenPipeline(single).generate(PROMPTS[:1], one, 1, steps=STEPS, seeds=[0], organ_maps=[{1: "liver"}])

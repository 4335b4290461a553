import numpy as np
import pytest
import torch

from mrgen.models.bundle import ModelBundle, build_random_bundle
from mrgen.models.pipeline import EarlyStop, MRGenPipeline

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


# ---------------------------------------------------------------- UniPC, guidance interval, cost, early stop

def test_unipc_samples(pipe, masks):
    images = pipe.generate(PROMPTS, masks, 1, steps=STEPS, sampler="unipc", seeds=[0, 1])
    assert images.shape == (2, 64, 64) and np.isfinite(images).all()
    assert images.min() >= 0.0 and images.max() <= 1.0
    ddim = pipe.generate(PROMPTS, masks, 1, steps=STEPS, sampler="ddim", seeds=[0, 1])
    assert np.abs(images - ddim).max() > 1e-4  # another solver
    np.testing.assert_array_equal(pipe.generate(PROMPTS, masks, 1, steps=STEPS, sampler="unipc", seeds=[0, 1]), images)


def _guided_every_step(pipe, prompts, masks, seeds, steps, sampler, guidance=7.0):
    """The sampling loop as it was before guidance intervals and early stops: the reference they must not move."""
    from diffusers.utils.torch_utils import randn_tensor

    from mrgen.models.autoencoder import decode_latents
    from mrgen.models.scheduler import build_scheduler

    bundle = pipe.bundle
    scheduler = build_scheduler(sampler, bundle.scheduler_config)
    scheduler.set_timesteps(steps)
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    side = masks.shape[-1] // pipe.factor
    latents = randn_tensor((len(seeds), pipe.latent_channels, side, side), generator=generators, dtype=torch.float32)
    latents = latents * scheduler.init_noise_sigma
    text = bundle.text_encoder.encode([""] * len(prompts) + prompts)
    condition, _ = pipe._condition(masks, len(prompts))
    condition = torch.cat([condition, condition])
    with torch.inference_mode():
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            down, mid = bundle.controlnet(model_in, t, encoder_hidden_states=text, controlnet_cond=condition,
                                          conditioning_scale=1.0, return_dict=False)
            noise = bundle.unet(model_in, t, encoder_hidden_states=text, return_dict=False,
                                down_block_additional_residuals=down, mid_block_additional_residual=mid)[0]
            uncond, cond = noise.float().chunk(2)
            latents = scheduler.step(uncond + guidance * (cond - uncond), t, latents, generator=generators,
                                     return_dict=False)[0]
        return decode_latents(bundle.vae, latents, bundle.latent_scaling)[:, 0].numpy()


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_full_guidance_interval_is_todays_sampling(pipe, masks, sampler):
    """(0, 1) guides every step: bitwise the images of the loop before the interval existed; (0.5, 1) spends fewer
    rows and gives other images."""
    base = pipe.sample(PROMPTS, masks, 1, steps=STEPS, sampler=sampler, seeds=[1, 2])
    reference = _guided_every_step(pipe, PROMPTS, masks, [1, 2], STEPS, sampler)
    np.testing.assert_array_equal(base.images, reference)
    base = pipe.sample(PROMPTS, masks, 2, steps=STEPS, seeds=[1, 2, 3, 4])
    full = pipe.generate(PROMPTS, masks, 2, steps=STEPS, seeds=[1, 2, 3, 4], guidance_interval=(0.0, 1.0))
    np.testing.assert_array_equal(base.images, full)
    assert base.denoiser_rows.tolist() == [2 * STEPS] * 4 and base.decodes.tolist() == [1] * 4
    assert base.finished.all() and base.probe_step is None
    late = pipe.sample(PROMPTS, masks, 2, steps=STEPS, seeds=[1, 2, 3, 4], guidance_interval=(0.5, 1.0))
    assert late.denoiser_rows.tolist() == [2 * 1 + 2 * 2] * 4 == [6] * 4  # steps 0, 1: 1 row; steps 2, 3: 2
    assert late.total_denoiser_rows == 24
    assert np.abs(late.images - base.images).max() > 1e-4
    unguided = pipe.sample(PROMPTS, masks, 2, steps=STEPS, seeds=[1, 2, 3, 4], guidance=1.0)
    assert unguided.denoiser_rows.tolist() == [STEPS] * 4


def test_unguided_steps_run_the_conditional_pass_alone(pipe, masks):
    """An interval that guides no step (here: [0.9, 1) of 4 steps) samples as guidance 1 does."""
    none_guided = pipe.sample(PROMPTS, masks, 1, steps=STEPS, seeds=[0, 1], guidance_interval=(0.9, 1.0))
    assert none_guided.denoiser_rows.tolist() == [STEPS, STEPS]
    no_cfg = pipe.generate(PROMPTS, masks, 1, steps=STEPS, seeds=[0, 1], guidance=1.0)
    np.testing.assert_allclose(none_guided.images, no_cfg, atol=1e-6)


@pytest.mark.parametrize("sampler", ["ddim", "dpm", "unipc", "ddpm"])
def test_early_stop_survivors_are_the_unstopped_images(pipe, masks, sampler):
    """The judge sees the x̂₀ of every image at step round(at * steps) and stops the odd ones: the even ones finish
    as the same seeds do without the hook; the stopped ones spent the rows of steps 0..k, a decode each."""
    steps, seeds = 6, [5, 6, 7, 8, 9, 10]
    plain = pipe.sample(PROMPTS, masks, 3, steps=steps, sampler=sampler, seeds=seeds)
    seen = []

    def judge(images, rows):
        seen.append((images.copy(), rows.tolist()))
        return rows % 2 == 0

    early = pipe.sample(PROMPTS, masks, 3, steps=steps, sampler=sampler, seeds=seeds,
                        early_stop=EarlyStop(0.5, judge))
    assert [rows for _, rows in seen] == [[0, 1, 2, 3, 4, 5]]
    x0 = seen[0][0]
    assert x0.shape == (6, 64, 64) and x0.dtype == np.float32 and 0.0 <= x0.min() and x0.max() <= 1.0
    assert early.probe_step == 3
    assert early.finished.tolist() == [True, False] * 3 and early.finished_rows().tolist() == [0, 2, 4]
    np.testing.assert_allclose(early.images, plain.images[[0, 2, 4]], atol=1e-6, rtol=0)
    assert early.denoiser_rows.tolist() == [12, 8] * 3    # stopped: steps 0..3 guided, 2 rows each
    assert early.decodes.tolist() == [2, 1] * 3           # finished: the probe and the image; stopped: the probe


def test_early_stop_keeping_all_changes_nothing_and_batches_line_up(pipe, masks):
    """A judge that stops nothing leaves the images bitwise as they were; with batches, the judge is called once a
    batch with the request's row indices, and the survivors keep their seeds' images."""
    plain = pipe.generate(PROMPTS, masks, 2, steps=STEPS, seeds=[1, 2, 3, 4])
    calls = []

    def keep_all(images, rows):
        calls.append(rows.tolist())
        return np.ones(len(rows), bool)

    kept = pipe.sample(PROMPTS, masks, 2, steps=STEPS, seeds=[1, 2, 3, 4], early_stop=EarlyStop(0.5, keep_all))
    np.testing.assert_array_equal(kept.images, plain)
    assert calls == [[0, 1, 2, 3]] and kept.decodes.tolist() == [2] * 4
    calls.clear()
    batched = pipe.sample(PROMPTS, masks, 2, steps=STEPS, seeds=[1, 2, 3, 4], batch_size=3,
                          early_stop=EarlyStop(0.5, lambda images, rows: calls.append(rows.tolist()) or rows != 1))
    assert calls == [[0, 1, 2], [3]]
    assert batched.finished.tolist() == [True, False, True, True]
    np.testing.assert_allclose(batched.images, plain[[0, 2, 3]], atol=1e-5)  # other batching: float rounding
    everyone = pipe.sample(PROMPTS, masks, 2, steps=STEPS, seeds=[1, 2, 3, 4],
                           early_stop=EarlyStop(0.5, lambda images, rows: np.zeros(len(rows), bool)))
    assert everyone.images.shape == (0, 64, 64) and not everyone.finished.any()
    assert everyone.denoiser_rows.tolist() == [6] * 4 and everyone.decodes.tolist() == [1] * 4


def test_predicted_x0_inverts_the_forward_process():
    from mrgen.models.pipeline import predicted_x0
    from mrgen.models.scheduler import build_scheduler

    scheduler = build_scheduler("ddim")
    x0, eps, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor(601)
    xt = scheduler.add_noise(x0, eps, t)
    torch.testing.assert_close(predicted_x0(scheduler, xt, eps, t), x0, atol=1e-4, rtol=1e-4)


def test_bad_guidance_interval_and_early_stop_are_named(pipe, masks):
    with pytest.raises(ValueError, match="guidance_interval must satisfy 0 <= lo < hi <= 1"):
        pipe.generate(PROMPTS, masks, 1, steps=STEPS, seeds=[1, 2], guidance_interval=(0.6, 0.4))
    with pytest.raises(ValueError, match="early rejection at 0.1 of 4 steps is step 0"):
        pipe.sample(PROMPTS, masks, 1, steps=STEPS, seeds=[1, 2], early_stop=EarlyStop(0.1, lambda i, r: r >= 0))
    with pytest.raises(ValueError, match="judge must answer one bool per image"):
        pipe.sample(PROMPTS, masks, 1, steps=STEPS, seeds=[1, 2], early_stop=EarlyStop(0.5, lambda i, r: [True]))

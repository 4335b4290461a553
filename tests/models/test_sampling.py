import pytest

from mrgen.models.sampling import PAPER_SAMPLING, SAMPLING_PRESETS, SamplingSettings


def test_each_job_preset_samples_as_its_sampling_preset():
    from mrgen.jobs.synthesis.config import SynthesisConfig
    from mrgen.serving.config import ServeConfig

    for name in ("tiny", "paper"):
        preset = SAMPLING_PRESETS[name]
        assert SynthesisConfig.load(name).sampling == preset
        served = ServeConfig.load(name).sampling  # the tiny service takes fewer steps
        assert (served.sampler, served.guidance) == (preset.sampler, preset.guidance)
    # `mrgen synthesize` without a preset samples as R1 of `mrgen bench cost` (40 denoiser rows a candidate, 3
    # candidates), `--config cheap` as R2 (6 rows); the release's recipe is the paper preset; the service without
    # one samples as the paper
    synthesis, cheap = SynthesisConfig(), SynthesisConfig.load("cheap")
    assert synthesis.sampling == SAMPLING_PRESETS["default"] and synthesis.sampling.denoiser_rows() == 40
    assert cheap.sampling == SAMPLING_PRESETS["cheap"] and cheap.sampling.denoiser_rows() == 6
    assert synthesis.candidates == cheap.candidates == 3 and SynthesisConfig.load("paper").candidates == 20
    assert ServeConfig().sampling == PAPER_SAMPLING == SamplingSettings()
    assert PAPER_SAMPLING.kwargs() == {"sampler": "ddim", "steps": 50, "guidance": 7.0,
                                       "guidance_interval": (0.0, 1.0), "conditioning_scale": 1.0}


@pytest.mark.parametrize("bad, field", [({"sampler": "euler"}, "sampler"), ({"steps": 0}, "steps"),
                                        ({"guidance": -1.0}, "guidance"),
                                        ({"guidance_interval": (0.5, 0.5)}, r"guidance_interval must satisfy 0 <= lo"),
                                        ({"guidance_interval": (-0.1, 1.0)}, "guidance_interval"),
                                        ({"guidance_interval": (0.0, 1.5)}, "guidance_interval"),
                                        ({"guidance_interval": (0.5,)}, "guidance_interval must be two numbers")])
def test_bad_settings_name_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        SamplingSettings(**bad)


def test_guidance_interval_decides_which_steps_are_guided_and_their_rows():
    # steps=4, interval [0.5, 1): steps 0, 1 conditional only (1 row), steps 2, 3 guided (2 rows) = 6 rows an image
    half = SamplingSettings(steps=4, guidance_interval=[0.5, 1])  # a list (YAML) becomes a tuple
    assert half.guidance_interval == (0.5, 1.0)
    assert [half.guided(i) for i in range(4)] == [False, False, True, True]
    assert half.denoiser_rows() == 6
    assert SamplingSettings(steps=4).denoiser_rows() == 8
    assert SamplingSettings(steps=4, guidance=1.0).denoiser_rows() == 4  # no unconditional pass at all
    assert SamplingSettings(steps=8, guidance_interval=(0.0, 0.5)).denoiser_rows() == 12


def test_early_stop_step_is_a_middle_step():
    from mrgen.models.sampling import early_stop_step

    assert early_stop_step(0.5, 4) == 2 and early_stop_step(0.375, 8) == 3
    with pytest.raises(ValueError, match="step 0: it must be a step from 1 to 3"):
        early_stop_step(0.1, 4)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        early_stop_step(1.0, 4)
    with pytest.raises(ValueError, match="at least 2 steps"):
        early_stop_step(0.5, 1)


def test_service_takes_no_guidance_interval_and_guides_every_step():
    from mrgen.serving.config import ServeConfig

    assert "default_guidance_interval" not in ServeConfig.model_fields
    assert ServeConfig.load("tiny").sampling.guidance_interval == (0.0, 1.0)

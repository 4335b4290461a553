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


def test_one_sampling_section_and_its_older_spellings():
    """Each config that samples holds one `sampling` section: a partial mapping fills from the config's own default,
    and the keys it had before the section (`steps`, the service's `default_steps`) still set it."""
    from mrgen.jobs.sample.config import SampleConfig
    from mrgen.jobs.synthesis.config import SynthesisConfig
    from mrgen.serving.config import ServeConfig

    assert SynthesisConfig.load_dict({"sampling": {"steps": 7}}).sampling == SamplingSettings("dpm", 7, 4.0)
    assert SynthesisConfig.load("cheap", ["steps=6"]).sampling == SamplingSettings("dpm", 6, 4.0, (0.0, 0.5))
    assert SynthesisConfig.load("cheap", ["sampling.steps=6"]) == SynthesisConfig.load("cheap", ["steps=6"])
    served = ServeConfig.load("tiny", ["default_steps=3", "default_sampler=unipc"]).sampling
    assert served == ServeConfig.load("tiny", ["sampling.steps=3", "sampling.sampler=unipc"]).sampling
    assert (served.steps, served.sampler, served.guidance_interval) == (3, "unipc", (0.0, 1.0))  # every step guided
    sample = SampleConfig(model="m", mask="m.png", modality="T1", out="o", sampling={"guidance": 2.0})
    assert sample.sampling == SamplingSettings(guidance=2.0)


def test_every_config_allows_exactly_the_samplers_the_pipeline_has():
    from mrgen.models.sampling import SAMPLERS, SamplingOverrides
    from mrgen.models.scheduler import SCHEDULERS
    from mrgen.serving.schemas import GenerateRequest

    assert sorted(SAMPLERS) == sorted(SCHEDULERS)
    for model in (SamplingOverrides, GenerateRequest):
        assert model.model_json_schema()["properties"]["sampler"]["anyOf"][0]["enum"] == list(SAMPLERS)
        assert model.model_json_schema()["properties"]["steps"]["anyOf"][0]["minimum"] == 1  # SamplingSettings' bound

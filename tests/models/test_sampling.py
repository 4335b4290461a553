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
    assert SynthesisConfig().sampling == ServeConfig().sampling == PAPER_SAMPLING == SamplingSettings()
    assert PAPER_SAMPLING.kwargs() == {"sampler": "ddim", "steps": 50, "guidance": 7.0, "conditioning_scale": 1.0}


@pytest.mark.parametrize("bad, field", [({"sampler": "euler"}, "sampler"), ({"steps": 0}, "steps"),
                                        ({"guidance": -1.0}, "guidance")])
def test_bad_settings_name_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        SamplingSettings(**bad)

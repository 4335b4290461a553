"""Request parsing without Ray: mask PNG decoding, organ derivation, limits, prompt, seeds."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _request(**changes):
    from mrgen.serving.schemas import GenerateRequest

    mask = np.zeros((32, 32), np.uint8)
    mask[4:12, 4:12] = 2
    mask[20:28, 20:28] = 1
    body = {"modality": "T2-weighted fat sat", "mask": _png(Image.fromarray(mask)),
            "organ_map": {"1": "liver", "2": "spleen", "3": "bladder"}, "n": 3, "seed": 40}
    body.update(changes)
    return GenerateRequest.model_validate(body)


def test_parse_request_builds_the_job():
    from mrgen.serving.config import ServeConfig
    from mrgen.serving.inputs import parse_request

    config = ServeConfig.load("tiny")
    parsed = parse_request(_request(region="upper abdominal region"), config, size_multiple=16)
    assert parsed.organs == ["liver", "spleen"]  # from the mask, in id order; bladder is absent
    assert parsed.job.seeds == [40, 41, 42] and parsed.job.sampling == config.sampling
    assert parsed.job.prompt.startswith("T2-weighted fat sat; ") and "upper abdominal region" in parsed.job.prompt
    assert parsed.job.mask.dtype == np.uint8 and parsed.job.mask.shape == (32, 32)
    named = parse_request(_request(organs=["liver"]), config, size_multiple=16)
    assert named.organs == ["liver"]
    random_seeds = parse_request(_request(seed=None), config, size_multiple=16).job.seeds
    assert random_seeds[1] == random_seeds[0] + 1
    # a request's sampling settings replace the service's (serve.sampling) one by one
    asked = parse_request(_request(sampler="ddpm", guidance_interval=[0, 0.5]), config, size_multiple=16).job.sampling
    assert (asked.sampler, asked.guidance_interval) == ("ddpm", (0.0, 0.5))
    assert (asked.steps, asked.guidance) == (config.sampling.steps, config.sampling.guidance)


def test_palette_and_16_bit_masks():
    from mrgen.serving.inputs import BadRequest, decode_mask_png

    palette = Image.fromarray(np.full((32, 32), 2, np.uint8)).convert("P")
    assert decode_mask_png(_png(palette), 64, 16).max() == 2
    wide = Image.fromarray(np.full((32, 32), 300, np.uint16))
    with pytest.raises(BadRequest, match="300 > 255"):
        decode_mask_png(_png(wide), 64, 16)


@pytest.mark.parametrize("changes, field", [
    ({"n": 6}, "n"), ({"steps": 10_000}, "steps"), ({"modality": "ultrasound"}, "modality"),
    ({"organ_map": {"1": "liver"}}, "mask"), ({"organ_map": {"0": "background"}}, "organ_map.0"),
    ({"keep": 4}, "keep"), ({"region": "elbow"}, "region"),
])
def test_limits_name_the_field(changes, field):
    from mrgen.serving.config import ServeConfig
    from mrgen.serving.inputs import BadRequest, parse_request

    config = ServeConfig.load("tiny", ["limits.max_n=5"])
    with pytest.raises(BadRequest) as info:
        parse_request(_request(**changes), config, size_multiple=16)
    assert info.value.field == field and 400 <= info.value.status < 500


def test_served_prompt_matches_the_db_prompt_for_the_same_label():
    """The model learnt the DB's prompts, so the service must build the very same text for a label."""
    from mrgen.datasets.modality import attributes_for
    from mrgen.datasets.prompt import build_prompt
    from mrgen.serving.config import ServeConfig
    from mrgen.serving.inputs import parse_request

    parsed = parse_request(_request(modality="T2 SPIR MRI", region="upper abdominal region"), ServeConfig.load("tiny"),
                           size_multiple=16)
    expected = build_prompt("T2 SPIR MRI", attributes_for("T2 SPIR MRI"), "upper abdominal region", ["liver", "spleen"])
    assert parsed.job.prompt == expected

"""`mrgen serve` on the official release's checkpoint folder, nothing renamed: the ingress writes the release's
prompts (its ", " template, the attributes file's text looked up exactly, the organ map's labels) and the
generator conditions with the release's organ weights; the flags reach the config."""
from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

ATTRIBUTES = {"T2 SPIR Abdomen MRI": "fat low signal, water high signal"}
ORGANS = {"1": "liver", "2": "spleen"}


def _mask_b64() -> str:
    mask = np.zeros((32, 32), np.uint8)
    mask[4:16, 4:16] = 2
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _config(release_folder: str):
    from mrgen.serving.config import ServeConfig

    return ServeConfig.load("tiny").with_overrides({"model": release_folder, "modality_attributes": ATTRIBUTES,
                                                     "organ_weights": {"spleen": 0.6}})


def test_release_prompt_is_written_by_the_ingress(release_folder):
    from mrgen.serving.inputs import BadRequest, parse_request
    from mrgen.serving.schemas import GenerateRequest

    config = _config(release_folder)
    request = GenerateRequest.model_validate({"modality": "T2 SPIR Abdomen MRI", "mask": _mask_b64(),
                                              "organ_map": ORGANS, "region": "upper abdomen"})
    parsed = parse_request(request, config, size_multiple=4, prompt_template="official")
    assert parsed.job.prompt == "T2 SPIR Abdomen MRI, fat low signal, water high signal, upper abdomen, liver, spleen"
    with pytest.raises(BadRequest, match="not in the attributes file"):
        parse_request(request.model_copy(update={"modality": "T2 SPIR"}), config, size_multiple=4,
                      prompt_template="official")


def test_serve_flags_reach_the_config(tmp_path):
    from mrgen.cli.main import build_parser
    from mrgen.cli.serve import serve_config

    file = tmp_path / "modality_attributes.json"
    file.write_text(json.dumps(ATTRIBUTES))
    args = build_parser().parse_args(["serve", "--model", "ckpt", "--attributes", str(file), "--organ-weights",
                                      '{"liver": 0.3}', "--set", "filter.kind=sam2",
                                      "--set", "filter.scorer.config_name=2.0-large", "--set", "filter.rule=official"])
    config = serve_config(args)
    assert config.modality_attributes == ATTRIBUTES and config.organ_weights == {"liver": 0.3}
    assert config.filter.scorer.sam2_config() == "configs/sam2/sam2_hiera_l.yaml" and config.filter.rule == "official"


def test_release_folder_serves_unchanged(serve_port, release_folder):
    from ray import serve

    from mrgen.serving.app import build_app_from_config

    config = _config(release_folder).with_overrides({"autoscaling.min_replicas": 1, "autoscaling.max_replicas": 1})
    serve.run(build_app_from_config(config), name="mrgen-release", route_prefix="/release")
    try:
        url = f"http://127.0.0.1:{serve_port}/release"
        with httpx.Client(base_url=url, timeout=120) as http:
            body = {"modality": "T2 SPIR Abdomen MRI", "mask": _mask_b64(), "organ_map": ORGANS, "n": 2, "seed": 3,
                    "steps": 2}
            answer = http.post("/v1/generate", json=body)
            assert answer.status_code == 200, answer.text
            data = answer.json()
            assert data["prompt"] == "T2 SPIR Abdomen MRI, fat low signal, water high signal, liver, spleen"
            assert [c["seed"] for c in data["candidates"]] == [3, 4]
            modalities = http.get("/v1/modalities").json()
            assert [m["label"] for m in modalities["modalities"]] == list(ATTRIBUTES)
            assert http.post("/v1/generate", json={**body, "modality": "T2 SPIR"}).status_code == 422
    finally:
        serve.delete("mrgen-release")

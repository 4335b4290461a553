"""`mrgen sample` on the official release's folder: reproducible per seed, and the image the release's pipeline (a
diffusers ControlNet pipeline fed the release's text states and condition) gives for
``generator=torch.Generator().manual_seed(S)``; our bundles go through the same command."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mrgen.cli.main import main

torch.set_num_threads(1)
ORGANS = {"1": "liver", "2": "spleen"}
WEIGHTS = {"liver": 0.3, "spleen": 0.6}
ATTRIBUTES = {"T2 SPIR Abdomen MRI": "fat low signal, water high signal"}


def _mask(size: int = 32) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[4:16, 6:20] = 1
    mask[18:28, 14:26] = 2
    return mask


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sample-in")
    Image.fromarray(_mask()).save(root / "mask.png")
    (root / "attributes.json").write_text(json.dumps(ATTRIBUTES))
    return {"mask": str(root / "mask.png"), "attributes": str(root / "attributes.json")}


def _sample(model: str, inputs: dict, out: Path, *extra: str) -> dict:
    code = main(["sample", "--model", model, "--mask", inputs["mask"], "--organ-map", json.dumps(ORGANS),
                 "--modality", "T2 SPIR Abdomen MRI", "--out", str(out), "--steps", "3", *extra])
    assert code == 0
    return json.loads((out / "candidates.json").read_text())


def _png(path: Path) -> np.ndarray:
    image = Image.open(path)
    assert image.mode == "L"
    return np.asarray(image)


def test_release_prompt_seeds_and_reproducibility(release_folder, inputs, tmp_path):
    common = ("--attributes", inputs["attributes"], "--organ-weights", json.dumps(WEIGHTS), "--region",
              "upper abdominal region")
    flags = (*common, "--n", "2", "--seed", "5")
    record = _sample(release_folder, inputs, tmp_path / "a", *flags)
    assert record["prompt"] == ("T2 SPIR Abdomen MRI, fat low signal, water high signal, upper abdominal region, "
                                "liver, spleen")
    assert record["seeds"] == [5, 6] and record["files"] == ["candidate_000.png", "candidate_001.png"]
    assert record["layout"] == "mrgen-release" and len(record["bundle_id"]) == 64
    again = _sample(release_folder, inputs, tmp_path / "b", *flags)
    assert again["bundle_id"] == record["bundle_id"]
    for name in record["files"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    shifted = _sample(release_folder, inputs, tmp_path / "c", *common, "--seed", "6")
    assert np.array_equal(_png(tmp_path / "c" / "candidate_000.png"), _png(tmp_path / "a" / "candidate_001.png"))
    assert not np.array_equal(_png(tmp_path / "a" / "candidate_000.png"), _png(tmp_path / "a" / "candidate_001.png"))
    assert shifted["seeds"] == [6]


def test_equals_the_release_pipeline_for_the_same_generator(release_folder, inputs, tmp_path):
    from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline,
                           UNet2DConditionModel)
    from transformers import BertModel, BertTokenizer

    from mrgen.models.release_text import bert_config

    prompt = "T2 SPIR Abdomen MRI, liver, spleen"
    _sample(release_folder, inputs, tmp_path, "--prompt", prompt, "--organ-weights", json.dumps(WEIGHTS),
            "--seed", "11")
    ours = _png(tmp_path / "candidate_000.png")

    # the release's setup_pipeline / encode_prompt / condition, with transformers' BERT standing in for its tower
    root = Path(release_folder)
    parts = {name: cls.from_pretrained(release_folder, subfolder=name) for name, cls in
             (("vae", AutoencoderKL), ("unet", UNet2DConditionModel), ("controlnet", ControlNetModel))}
    scheduler = DDIMScheduler.from_pretrained(release_folder, subfolder="scheduler")
    tokenizer = BertTokenizer.from_pretrained(str(root / "tokenizer"))
    text_config = json.loads((root / "text_encoder" / "config.json").read_text())["text_config"]
    bert = BertModel(bert_config(text_config), add_pooling_layer=False).eval()
    from safetensors.torch import load_file

    from mrgen.models.release_text import bert_key

    state = load_file(str(root / "text_encoder" / "model.safetensors"))
    bert.load_state_dict({bert_key(k): v for k, v in state.items() if bert_key(k)})

    def states(text: str) -> torch.Tensor:
        ids = tokenizer([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        return bert(input_ids=ids).last_hidden_state  # text_model(ids)[0], no attention mask

    mask = _mask()
    condition = torch.full((1, 1, 32, 32), -1.0)  # merged_mask: background -1, organ k → 2·w_k − 1
    condition[0, 0][torch.from_numpy(mask == 1)] = 2 * 0.3 - 1
    condition[0, 0][torch.from_numpy(mask == 2)] = 2 * 0.6 - 1
    pipe = StableDiffusionControlNetPipeline(**parts, text_encoder=None, tokenizer=None, scheduler=scheduler,
                                             safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        image = pipe(prompt_embeds=states(prompt), negative_prompt_embeds=states(""), image=condition, height=32,
                     width=32, num_inference_steps=3, guidance_scale=7.0, generator=torch.Generator().manual_seed(11),
                     output_type="pil").images[0]
    theirs = np.asarray(image.convert("L"))
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1  # within 1/255 (float32, CPU)


def test_our_bundles_and_bad_input(release_folder, inputs, tmp_path, capsys):
    from mrgen.models.bundle import build_random_bundle

    ours = str(tmp_path / "bundle")
    build_random_bundle("tiny", seed=0).save(ours)
    mask64 = tmp_path / "mask64.png"
    Image.fromarray(np.kron(_mask(), np.ones((2, 2), np.uint8))).save(mask64)
    code = main(["sample", "--model", ours, "--mask", str(mask64), "--organ-map", json.dumps(ORGANS),
                 "--modality", "T2 SPIR", "--out", str(tmp_path / "ours"), "--steps", "2", "--sampler", "dpm"])
    assert code == 0
    record = json.loads((tmp_path / "ours" / "candidates.json").read_text())
    assert record["prompt"].startswith("T2 SPIR; ") and record["layout"] == "mrgen"
    assert _png(tmp_path / "ours" / "candidate_000.png").shape == (64, 64)

    def fails(*argv: str) -> str:
        assert main(["sample", "--mask", inputs["mask"], "--out", str(tmp_path / "x"), "--steps", "2", *argv]) == 2
        return capsys.readouterr().err

    release = ["--model", release_folder, "--modality", "T2 SPIR Abdomen MRI"]
    assert "--attributes FILE" in fails(*release, "--organ-map", json.dumps(ORGANS))
    assert "does not name" in fails(*release, "--organ-map", '{"1": "liver"}', "--prompt", "p")
    assert "official release's bundles only" in fails("--model", ours, "--modality", "T2", "--organ-map",
                                                      json.dumps(ORGANS), "--organ-weights", '{"liver": 0.5}')

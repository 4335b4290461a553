"""The official MRGen release's checkpoint folder, as its synthesis script loads it, written by the tests at tiny widths
(``write_release_folder`` in tests/conftest.py): every part loads unchanged, with the release's conventions; a folder
with a missing part, a wrong key or a config for another size is refused naming the file and the key."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mrgen.datasets.prompt import PromptRecipe
from mrgen.models.bundle import ModelBundle, build_random_bundle
from mrgen.models.manifest import BundleError, describe_bundle
from mrgen.models.condition import MaskCondition
from mrgen.models.release_text import ReleaseTextEncoder
from mrgen.models.scheduler import build_scheduler

torch.set_num_threads(1)
PROMPT = "T2 SPIR Abdomen MRI, liver"


@pytest.fixture(scope="module")
def release(tmp_path_factory, release_writer):
    root = tmp_path_factory.mktemp("rel") / "ckpt"
    models = release_writer(root)
    return root, models


def _copy(release, tmp_path) -> Path:
    root = tmp_path / "ckpt"
    shutil.copytree(release[0], root)
    return root


def test_every_part_loads_with_the_release_conventions(release):
    root, models = release
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    bundle = ModelBundle.load(str(root))
    for part in ("vae", "unet", "controlnet"):
        for key, value in models[part].state_dict().items():
            assert torch.equal(getattr(bundle, part).state_dict()[key], value), f"{part}.{key}"
    assert isinstance(bundle.text_encoder, ReleaseTextEncoder)
    assert bundle.latent_scaling == 0.18215 and bundle.resolution == 32  # vae/config.json has no scaling_factor
    m = bundle.manifest
    assert (m["layout"], m["prompt_template"], m["text_context_length"], m["text_attention_mask"]) == (
        "mrgen-release", "official", 77, False)
    assert describe_bundle(str(root)) == m
    condition = MaskCondition.from_manifest(m)
    assert condition.background == -1.0 and condition.default == 1.0
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert after == before  # nothing renamed or converted


def test_the_template_folder_names_load_too(tmp_path, release_writer):
    root = tmp_path / "ckpt"
    release_writer(root, template_names=True, bin_part="controlnet")
    assert (root / "text_encoder_BiomedCLIP").is_dir()
    assert (root / "controlnet" / "diffusion_pytorch_model.bin").is_file()
    bundle = ModelBundle.load(str(root))
    assert isinstance(bundle.text_encoder, ReleaseTextEncoder) and bundle.controlnet is not None
    assert bundle.manifest["text_encoder_dir"] == "text_encoder_BiomedCLIP"


def _reference_tower(state: dict[str, torch.Tensor], ids: torch.Tensor, heads: int, eps: float) -> torch.Tensor:
    """The release's BiomedCLIP text tower, computed straight from its key names (its modelling file's
    post-norm forward), independent of the project's mapping."""
    F = torch.nn.functional
    p = "text_model.embeddings."
    h = state[p + "token_embedding.weight"][ids] + state[p + "token_type_embedding.weight"][0]
    h = h + state[p + "position_embedding.weight"][: ids.shape[1]]
    h = F.layer_norm(h, h.shape[-1:], state[p + "layer_norm.weight"], state[p + "layer_norm.bias"], eps)
    n = 0
    while f"text_model.encoder.layers.{n}.layer_norm1.weight" in state:
        w = lambda name: (state[f"text_model.encoder.layers.{n}.{name}.weight"],  # noqa: E731
                          state[f"text_model.encoder.layers.{n}.{name}.bias"])
        b, t, d = h.shape
        q, k, v = (F.linear(h, *w(f"self_attn.{x}_proj")).view(b, t, heads, d // heads).transpose(1, 2) for x in "qkv")
        attn = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1) @ v  # no mask: padding attended
        h = F.layer_norm(h + F.linear(attn.transpose(1, 2).reshape(b, t, d), *w("self_attn.out_proj")), (d,),
                         *w("layer_norm1"), eps)
        h = F.layer_norm(h + F.linear(F.gelu(F.linear(h, *w("mlp.fc1"))), *w("mlp.fc2")), (d,), *w("layer_norm2"), eps)
        n += 1
    return h


def test_text_tower_gives_the_token_states_of_its_bert(release):
    root, models = release
    encoder = ModelBundle.load(str(root), parts=["text_encoder"]).text_encoder
    ids = encoder.token_ids([PROMPT, ""])
    states = encoder.encode([PROMPT, ""])
    assert states.shape == (2, 77, 16)
    with torch.no_grad():
        bert = models["bert"](input_ids=ids).last_hidden_state
        reference = _reference_tower(load_file(str(root / "text_encoder" / "model.safetensors")), ids, heads=2,
                                     eps=1e-12)
    assert torch.allclose(states, bert, atol=1e-5)
    assert torch.allclose(states, reference, atol=1e-5)


def test_tokens_are_77_with_padding_and_truncation(release):
    encoder = ModelBundle.load(str(release[0]), parts=["text_encoder"]).text_encoder
    # vocab.txt: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 ","=5 t2=8 spir=9 abdomen=10 mri=11 liver=20; lower-cased
    ids = encoder.token_ids([PROMPT, "T1 in-phase"])
    assert ids.shape == (2, 77)
    assert ids[0, :9].tolist() == [2, 8, 9, 10, 11, 5, 20, 3, 0] and not ids[0, 8:].any()
    assert ids[1, :6].tolist() == [2, 7, 28, 6, 29, 3]
    long = encoder.token_ids([" ".join(["liver"] * 100)])[0]
    assert long[0] == 2 and long[-1] == 3 and (long[1:-1] == 20).all()  # truncated to 77, [SEP] kept


def test_release_prompt_and_mask_condition_hand_worked(release):
    recipe = PromptRecipe.for_bundle(describe_bundle(str(release[0])), {"T2 SPIR Abdomen MRI": "fat low signal"})
    labels = ["liver", "right kidney", "left kidney", "spleen"]
    assert recipe.render("T2 SPIR Abdomen MRI", recipe.attributes("T2 SPIR Abdomen MRI"), "upper abdominal region",
                         ["liver"], labels) == ("T2 SPIR Abdomen MRI, fat low signal, upper abdominal region, liver, "
                                                "right kidney, left kidney, spleen")
    assert recipe.render("T2 SPIR Abdomen MRI", "fat low signal", None, [], labels[:1]) == (
        "T2 SPIR Abdomen MRI, fat low signal, liver")
    with pytest.raises(KeyError, match="did you mean 'T2 SPIR Abdomen MRI'"):
        recipe.attributes("t2 spir abdomen mri")  # looked up exactly, as the release does
    manifest = describe_bundle(str(release[0]), organ_weights={"liver": 0.3, "spleen": 0.6})
    mask = np.array([[[0, 1, 2, 4]]], np.uint8)
    condition = MaskCondition.from_manifest(manifest).encode(mask, {1: "liver", 2: "spleen", 4: "right kidney"})
    assert condition[0, 0, 0].tolist() == pytest.approx([-1.0, -0.4, 0.2, 1.0])  # 2·w − 1, unnamed organs w = 1


def test_ddim_timesteps_come_from_the_release_scheduler_config(release):
    from diffusers import DDIMScheduler

    bundle = ModelBundle.load(str(release[0]), parts=["vae", "scheduler"])
    ours = build_scheduler("ddim", bundle.scheduler_config)
    ours.set_timesteps(50)
    assert ours.timesteps.tolist() == list(range(981, 0, -20))  # steps_offset 1: 981, 961, ..., 1
    theirs = DDIMScheduler.from_pretrained(str(release[0]), subfolder="scheduler")  # as the release builds it
    theirs.set_timesteps(50)
    assert torch.equal(ours.timesteps, theirs.timesteps) and ours.init_noise_sigma == theirs.init_noise_sigma
    assert torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod) and not ours.config.set_alpha_to_one


def test_a_missing_part_is_named(release, tmp_path):
    root = _copy(release, tmp_path)
    (root / "tokenizer" / "vocab.txt").unlink()
    with pytest.raises(BundleError, match=r"tokenizer: no vocab.txt"):
        ModelBundle.load(str(root))
    shutil.rmtree(root / "unet")
    with pytest.raises(BundleError, match=r"part 'unet' missing .*unet/config.json"):
        ModelBundle.load(str(root), parts=["unet"])


def test_wrong_keys_are_named_with_their_file(release, tmp_path):
    root = _copy(release, tmp_path)
    file = root / "text_encoder" / "model.safetensors"
    state = load_file(str(file))
    state["text_model.encoder.layers.1.self_attn.q_projection.weight"] = state.pop(
        "text_model.encoder.layers.1.self_attn.q_proj.weight")
    save_file(state, str(file))
    with pytest.raises(BundleError, match=r"model.safetensors: unexpected key "
                                          r"'text_model.encoder.layers.1.self_attn.q_projection.weight'"):
        ModelBundle.load(str(root), parts=["text_encoder"])
    del state["text_model.encoder.layers.1.self_attn.q_projection.weight"]
    save_file(state, str(file))
    with pytest.raises(BundleError, match=r"missing key 'text_model.encoder.layers.1.self_attn.q_proj.weight'"):
        ModelBundle.load(str(root), parts=["text_encoder"])

    unet = root / "unet" / "diffusion_pytorch_model.bin"
    weights = torch.load(unet, weights_only=True)
    weights["conv_in.weight_renamed"] = weights.pop("conv_in.weight")
    torch.save(weights, unet)
    with pytest.raises(BundleError, match=r"unet/diffusion_pytorch_model.bin has 1 missing key\(s\), first "
                                          r"'conv_in.weight'"):
        ModelBundle.load(str(root), parts=["unet"])


def test_a_config_for_another_size_is_named(release, tmp_path):
    root = _copy(release, tmp_path)
    config_file = root / "text_encoder" / "config.json"
    config = json.loads(config_file.read_text())
    config["text_config"]["intermediate_size"] = 64
    config_file.write_text(json.dumps(config))
    with pytest.raises(BundleError, match=r"model.safetensors: key 'text_model.encoder.layers.0.mlp.fc1.(weight|bias)' "
                                          r"has shape \(32.*\), but .*config.json \(text_config.intermediate_size"):
        ModelBundle.load(str(root), parts=["text_encoder"])
    vae_file = root / "vae" / "config.json"
    vae = json.loads(vae_file.read_text())
    vae["block_out_channels"] = [8, 32]
    vae_file.write_text(json.dumps(vae))
    with pytest.raises(BundleError, match=r"part 'vae'.*"):
        ModelBundle.load(str(root), parts=["vae"])


def test_organ_weights_are_for_release_bundles_only(tmp_path):
    uri = str(tmp_path / "ours")
    build_random_bundle("tiny", seed=0).save(uri)
    with pytest.raises(BundleError, match="organ weights apply to the official release's bundles only"):
        ModelBundle.load(uri, organ_weights={"liver": 0.3})
    assert "prompt_template" not in describe_bundle(uri)  # our bundles keep our conventions


def test_noise_is_drawn_as_diffusers_draws_it():
    from diffusers.utils.torch_utils import randn_tensor

    per_image = [torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(s)) for s in (3, 4)]
    batch = randn_tensor((2, 4, 8, 8), generator=[torch.Generator().manual_seed(s) for s in (3, 4)],
                         device=torch.device("cpu"), dtype=torch.float32)
    single = randn_tensor((1, 4, 8, 8), generator=torch.Generator().manual_seed(3), device=torch.device("cpu"),
                          dtype=torch.float32)
    assert torch.equal(torch.stack(per_image), batch) and torch.equal(single[0], per_image[0])

import json

import pytest
import torch
from safetensors.torch import save_file

from mrgen.models.configs import BIOMEDCLIP, model_config
from mrgen.models.text_encoder import TextEncoder

torch.set_num_threads(1)
PROMPT = "T1 MRI; fat high signal; upper abdominal region; liver, spleen"


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder.from_config(model_config("tiny").text_encoder)


def test_token_level_states_and_frozen(encoder):
    states = encoder.encode([PROMPT, ""])
    assert states.shape == (2, encoder.context_length, encoder.width) == (2, 77, 64)
    assert not torch.equal(states[0], states[1])  # "" is a distinct, unconditional prompt
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not states.requires_grad


def test_cache_returns_same_states_whatever_the_batch(encoder):
    alone = encoder.encode(PROMPT)
    in_batch = encoder.encode(["other", PROMPT, PROMPT])
    assert torch.equal(in_batch[1], alone[0]) and torch.equal(in_batch[2], alone[0])
    fresh = TextEncoder.from_config(model_config("tiny").text_encoder).forward([PROMPT])
    assert torch.allclose(fresh, alone, atol=1e-5)


def test_states_cached_during_inference_can_feed_training(encoder):
    with torch.inference_mode():
        encoder.encode(["cached while sampling"])
    states = encoder.encode(["cached while sampling"])
    assert not states.is_inference()
    layer = torch.nn.Linear(encoder.width, 2)
    layer(states).sum().backward()  # would raise for an inference tensor
    assert layer.weight.grad is not None


def test_random_init_follows_seed():
    cfg = model_config("tiny").text_encoder
    a, b = TextEncoder.from_config(cfg), TextEncoder.from_config(cfg)
    c = TextEncoder.from_config(dict(cfg, seed=1))
    for (k, va), vb, vc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(va, vb), k
    assert any(not torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values()))


def test_save_pretrained_round_trip(encoder, tmp_path):
    encoder.save_pretrained(tmp_path / "te")
    files = sorted(p.name for p in (tmp_path / "te").iterdir())
    assert files == ["open_clip_config.json", "open_clip_model.safetensors"]
    loaded = TextEncoder.from_pretrained(tmp_path / "te")
    for (k, v), w in zip(encoder.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(v, w), k
    assert torch.equal(loaded.encode([PROMPT]), loaded.forward([PROMPT]))
    assert torch.allclose(loaded.encode([PROMPT]), encoder.forward([PROMPT]), atol=1e-6)
    assert TextEncoder.from_pretrained(f"local-dir:{tmp_path / 'te'}").width == 64


@pytest.mark.parametrize("custom_text", [True, False])
def test_loads_a_full_open_clip_folder(tmp_path, custom_text):
    """A whole open_clip CLIP (vision + text) in open_clip's own folder format; only the text tower is kept."""
    import open_clip
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = dict(model_config("tiny").text_encoder["model_cfg"], custom_text=custom_text)
    torch.manual_seed(3)
    clip = (CustomTextCLIP if custom_text else CLIP)(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"])
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(tmp_path / "open_clip_model.safetensors"))
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))

    encoder = TextEncoder.from_pretrained(tmp_path)
    ids = open_clip.get_tokenizer(f"local-dir:{tmp_path}")([PROMPT])
    with torch.no_grad():
        if custom_text:
            clip.text.output_tokens = True
            expected = clip.text(ids)[1]
        else:
            x = clip.token_embedding(ids) + clip.positional_embedding
            expected = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
    assert torch.allclose(encoder.encode([PROMPT]), expected, atol=1e-6)


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        TextEncoder.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(RuntimeError, match="BiomedCLIP"):
        TextEncoder.from_pretrained(BIOMEDCLIP)  # no hub here (HF_HUB_OFFLINE=1)
    with pytest.raises(ValueError, match="width"):
        TextEncoder.from_config(dict(model_config("tiny").text_encoder, width=768))

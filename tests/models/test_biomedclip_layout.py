"""The paper-scale text encoder path on a BiomedCLIP-SHAPED checkpoint written here at tiny size.

BiomedCLIP (``microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``) is an open_clip folder whose text tower
is an HF BERT (PubMedBERT, width 768) with an MLP projection and CLS pooling, context 256, and whose vision tower
is timm ``vit_base_patch16_224``. Here the same config keys point at a 2-layer BERT of width 32 and at timm
``vit_tiny_patch16_224``; the weights are written by open_clip itself. Everything loads with HF_HUB_OFFLINE=1.
"""
import json
import shutil

import huggingface_hub
import numpy as np
import open_clip
import pytest
import torch
from open_clip.hf_model import HFTextEncoder
from open_clip.model import CustomTextCLIP
from safetensors.torch import save_file
from transformers import BertConfig, BertTokenizer

from mrgen.models.bundle import ModelBundle, build_random_bundle
from mrgen.models.configs import model_config
from mrgen.models.mask_controller import MaskController
from mrgen.models.pipeline import MRGenPipeline
from mrgen.models.text_encoder import TextEncoder
from mrgen.models.unet import build_unet

torch.set_num_threads(1)
PROMPT = "T1 MRI; fat high signal; upper abdominal region; liver"
WIDTH = 32  # BERT hidden size (768 for PubMedBERT)
CONTEXT = 256  # BiomedCLIP's context_length
PUBMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"  # BiomedCLIP's text_cfg.hf_model_name
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ";", ",", "t1", "t2", "mri", "fat", "high", "low", "signal",
         "upper", "lower", "abdominal", "region", "liver", "spleen", "kidney", "this", "is", "a", "radiology",
         "image", "that", "shows", "of", "human", "body", "and", "probably", "contains", "##s", "."]


def biomedclip_config(bert_dir) -> dict:
    """BiomedCLIP's ``open_clip_config.json``, key for key, with tiny towers."""
    return {
        "model_cfg": {
            "embed_dim": 16,
            "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                           "timm_pool": "", "timm_proj": "linear", "image_size": 224},
            "text_cfg": {"hf_model_name": str(bert_dir), "hf_tokenizer_name": str(bert_dir), "hf_proj_type": "mlp",
                         "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": CONTEXT},
        },
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }


@pytest.fixture(scope="module")
def biomedclip(tmp_path_factory):
    """(open_clip folder, the CustomTextCLIP whose weights it holds)."""
    root = tmp_path_factory.mktemp("biomedclip")
    bert_dir, clip_dir = root / "tiny-pubmedbert", root / "tiny-biomedclip"
    bert_dir.mkdir()
    clip_dir.mkdir()
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizer(str(root / "vocab.txt"), do_lower_case=True)
    BertConfig(vocab_size=len(VOCAB), hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=512, pad_token_id=0).save_pretrained(bert_dir)
    tokenizer.save_pretrained(bert_dir)
    tokenizer.save_pretrained(clip_dir)  # like the hub repo: get_tokenizer("local-dir:...") reads the folder itself

    config = biomedclip_config(bert_dir)
    (clip_dir / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    cfg = json.loads(json.dumps(config["model_cfg"]))
    cfg["text_cfg"]["hf_model_pretrained"] = False  # the BERT folder holds a config only, as PubMedBERT's is used
    torch.manual_seed(0)
    clip = CustomTextCLIP(**cfg).eval()
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(clip_dir / "open_clip_model.safetensors"))
    return clip_dir, clip


def open_clip_tokens(model, name: str, prompts: list[str]) -> torch.Tensor:
    ids = open_clip.get_tokenizer(name)(prompts)
    model.text.output_tokens = True
    with torch.no_grad():
        return model.text(ids)[1]


def test_loads_offline_with_token_states_equal_to_open_clip(biomedclip):
    clip_dir, written = biomedclip
    name = f"local-dir:{clip_dir}"
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # nothing here may come from the hub

    encoder = TextEncoder.from_pretrained(name)
    assert isinstance(encoder.text, HFTextEncoder) and encoder.text.transformer.config.model_type == "bert"
    assert encoder.width == WIDTH and encoder.context_length == CONTEXT
    states = encoder.encode([PROMPT])
    assert states.shape == (1, CONTEXT, WIDTH)

    reference = open_clip.create_model(name, device="cpu").eval()  # open_clip's own loader, built independently
    expected = open_clip_tokens(reference, name, [PROMPT])
    assert torch.allclose(states, expected, atol=1e-6)
    assert torch.allclose(expected, open_clip_tokens(written, name, [PROMPT]), atol=1e-6)  # the saved weights
    ids = encoder.tokenizer([PROMPT])[0].tolist()
    assert ids[0] == VOCAB.index("[CLS]") and VOCAB.index("[UNK]") not in ids[:12]  # words in the vocab, not [UNK]
    assert not torch.allclose(encoder.encode([""])[0], states[0], atol=1e-3)


def test_save_pretrained_round_trip_is_self_contained(biomedclip, tmp_path):
    clip_dir, _ = biomedclip
    encoder = TextEncoder.from_pretrained(f"local-dir:{clip_dir}")
    encoder.save_pretrained(tmp_path / "te")
    saved = json.loads((tmp_path / "te" / "open_clip_config.json").read_text())
    text_cfg = saved["model_cfg"]["text_cfg"]
    assert text_cfg["hf_model_name"] == text_cfg["hf_tokenizer_name"] == "."  # BERT config + tokenizer copied in
    assert (tmp_path / "te" / "config.json").is_file() and (tmp_path / "te" / "tokenizer_config.json").is_file()

    loaded = TextEncoder.from_pretrained(tmp_path / "te")
    assert isinstance(loaded.text, HFTextEncoder) and loaded.width == WIDTH and loaded.context_length == CONTEXT
    for (key, v), w in zip(encoder.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(v, w), key
    prompts = [PROMPT, "T2 MRI; pelvic region; bladder", ""]
    assert torch.equal(loaded.encode(prompts), encoder.encode(prompts))


def test_bundle_with_biomedclip_shaped_text_encoder(biomedclip, tmp_path):
    clip_dir, _ = biomedclip
    bundle = build_random_bundle("tiny", seed=0)
    # the UNet attends to the text states, so its cross_attention_dim follows the text width
    unet_cfg = dict(model_config("tiny").unet, cross_attention_dim=WIDTH)
    torch.manual_seed(0)
    bundle.unet = build_unet(unet_cfg)
    bundle.controlnet = MaskController.from_unet(bundle.unet, model_config("tiny").controlnet)
    bundle.text_encoder = TextEncoder.from_pretrained(f"local-dir:{clip_dir}")
    bundle.save(str(tmp_path / "bundle"))
    assert (tmp_path / "bundle" / "text_encoder" / "tokenizer_config.json").is_file()

    loaded = ModelBundle.load(str(tmp_path / "bundle"))
    assert isinstance(loaded.text_encoder.text, HFTextEncoder) and loaded.text_encoder.width == WIDTH
    assert loaded.unet.config.cross_attention_dim == WIDTH
    assert torch.equal(loaded.text_encoder.encode([PROMPT]), bundle.text_encoder.encode([PROMPT]))
    mask = np.zeros((1, 64, 64), np.uint8)
    mask[0, 16:40, 20:44] = 1
    kwargs = dict(num_candidates=1, steps=2, seeds=[7])
    images = MRGenPipeline(loaded).generate([PROMPT], mask, **kwargs)
    assert images.shape == (1, 64, 64) and np.isfinite(images).all()
    assert np.allclose(images, MRGenPipeline(bundle.eval()).generate([PROMPT], mask, **kwargs), atol=1e-5)


def test_real_config_naming_bert_by_hub_id_fails_clearly_offline(biomedclip, tmp_path):
    """The released config names PubMedBERT by hub id; without it in the HF cache the error must say so."""
    clip_dir, _ = biomedclip
    folder = tmp_path / "biomedclip"
    shutil.copytree(clip_dir, folder)
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"].update(hf_model_name=PUBMEDBERT, hf_tokenizer_name=PUBMEDBERT)
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match=f"hf_model_name '{PUBMEDBERT}'.*Hugging Face cache"):
        TextEncoder.from_pretrained(f"local-dir:{folder}")

"""The official MRGen release's text encoder: BiomedCLIP's PubMedBERT tower, run as transformers' ``BertModel``.

The release saves a transformers BiomedCLIP (``text_encoder/config.json`` with a ``text_config``, custom code we
never execute) whose text tower is a post-norm BERT under CLIP-style key names. Read from the release's modelling
file, that tower is: embeddings = LayerNorm(token + token type 0 + absolute position); each layer
``h = layer_norm1(h + out_proj(attention(q_proj, k_proj, v_proj)))``, ``h = layer_norm2(h + fc2(act(fc1(h))))``;
no final norm; the output is the last hidden states. That is exactly a BERT encoder, so its weights are mapped by
name into ``BertModel(add_pooling_layer=False)``:

    text_model.embeddings.token_embedding            → embeddings.word_embeddings
    text_model.embeddings.position_embedding         → embeddings.position_embeddings
    text_model.embeddings.token_type_embedding       → embeddings.token_type_embeddings
    text_model.embeddings.layer_norm                 → embeddings.LayerNorm
    text_model.encoder.layers.N.self_attn.q_proj     → encoder.layer.N.attention.self.query
    text_model.encoder.layers.N.self_attn.k_proj     → encoder.layer.N.attention.self.key
    text_model.encoder.layers.N.self_attn.v_proj     → encoder.layer.N.attention.self.value
    text_model.encoder.layers.N.self_attn.out_proj   → encoder.layer.N.attention.output.dense
    text_model.encoder.layers.N.layer_norm1          → encoder.layer.N.attention.output.LayerNorm
    text_model.encoder.layers.N.mlp.fc1              → encoder.layer.N.intermediate.dense
    text_model.encoder.layers.N.mlp.fc2              → encoder.layer.N.output.dense
    text_model.encoder.layers.N.layer_norm2          → encoder.layer.N.output.LayerNorm

The other towers of the checkpoint (``vision_model.*``, ``visual_projection``, ``text_projection``,
``logit_scale``) are not needed and skipped; any other key, a missing key or a shape the config does not give
is an error naming the file and the key. ``text_config`` keys the file leaves out take transformers'
``CLIPTextConfig`` defaults, as the release's own loading does.

Inputs as the release's pipeline builds them: ``BertTokenizer`` from ``tokenizer/vocab.txt``, 77 tokens
(``padding="max_length"``, truncation), no attention mask (padding is attended), last hidden states.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from mrgen.models.text_encoder import PromptEncoder

CONTEXT_LENGTH = 77
CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
OTHER_TOWERS = ("vision_model.", "visual_projection.", "text_projection.", "logit_scale")
BUFFERS = ("text_model.embeddings.position_ids", "text_model.embeddings.token_type_ids")
_EMBEDDINGS = {"token_embedding": "word_embeddings", "position_embedding": "position_embeddings",
               "token_type_embedding": "token_type_embeddings", "layer_norm": "LayerNorm"}
_LAYER = {"self_attn.q_proj": "attention.self.query", "self_attn.k_proj": "attention.self.key",
          "self_attn.v_proj": "attention.self.value", "self_attn.out_proj": "attention.output.dense",
          "layer_norm1": "attention.output.LayerNorm", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
          "layer_norm2": "output.LayerNorm"}
_LAYER_KEY = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_EMBEDDING_KEY = re.compile(r"text_model\.embeddings\.(\w+)\.(weight|bias)$")
# config key that sets each dimension of a weight, for errors about a config of another size
_SIZE_KEYS = {"word_embeddings": "vocab_size", "position_embeddings": "max_position_embeddings",
              "token_type_embeddings": "type_vocab_size", "intermediate": "intermediate_size"}


class ReleaseWeightsError(ValueError):
    """The release's text encoder files do not fit together; the message names the file and the key."""


def bert_key(release_key: str) -> str | None:
    """Our ``BertModel`` key for one of the release's text-tower keys (None: not a text-tower weight)."""
    match = _EMBEDDING_KEY.match(release_key)
    if match and match.group(1) in _EMBEDDINGS:
        return f"embeddings.{_EMBEDDINGS[match.group(1)]}.{match.group(2)}"
    match = _LAYER_KEY.match(release_key)
    if match and match.group(2) in _LAYER:
        return f"encoder.layer.{match.group(1)}.{_LAYER[match.group(2)]}.{match.group(3)}"
    return None


def bert_config(text_config: dict[str, Any]):
    """``BertConfig`` of the tower a release ``text_config`` describes (CLIPTextConfig defaults for absent keys)."""
    # transformers takes seconds to import and serves the official release's text tower only: every bundle load
    # imports this module, so it is imported where that tower is built
    from transformers import BertConfig, CLIPTextConfig

    clip = CLIPTextConfig()
    value = lambda key, default=None: text_config.get(key, getattr(clip, key, default))  # noqa: E731
    return BertConfig(vocab_size=value("vocab_size"), hidden_size=value("hidden_size"),
                      num_hidden_layers=value("num_hidden_layers"), num_attention_heads=value("num_attention_heads"),
                      intermediate_size=value("intermediate_size"), hidden_act=value("hidden_act"),
                      max_position_embeddings=value("max_position_embeddings"),
                      type_vocab_size=value("type_vocab_size", 2), layer_norm_eps=value("layer_norm_eps"),
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager")


def _read_weights(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    for name in WEIGHT_FILES:
        file = folder / name
        if file.is_file():
            if file.suffix == ".safetensors":
                return file, load_file(str(file))
            try:
                return file, torch.load(file, map_location="cpu", weights_only=True)  # never unpickle objects
            except Exception as exc:  # noqa: BLE001 - any unreadable or non-tensor pickle
                raise ReleaseWeightsError(f"{file}: not a plain state dict of tensors ({exc})") from None
    raise ReleaseWeightsError(f"{folder}: no weights ({' or '.join(WEIGHT_FILES)})")


def map_release_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], file: Path,
                      config_file: Path) -> dict[str, torch.Tensor]:
    """The release's text-tower weights under our ``BertModel`` keys; raises naming the first bad key."""
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.startswith(OTHER_TOWERS) or key in BUFFERS:
            continue
        ours = bert_key(key)
        if ours is None or ours not in expected:
            raise ReleaseWeightsError(f"{file}: unexpected key {key!r} (not part of the text tower that "
                                      f"{config_file} describes)")
        if tuple(tensor.shape) != tuple(expected[ours].shape):
            size_key = next((v for k, v in _SIZE_KEYS.items() if k in ours), "hidden_size")
            raise ReleaseWeightsError(f"{file}: key {key!r} has shape {tuple(tensor.shape)}, but {config_file} "
                                      f"(text_config.{size_key} and hidden_size) gives {tuple(expected[ours].shape)}")
        mapped[ours] = tensor
    missing = [k for k in expected if k not in mapped]
    if missing:
        release = {bert_key(k): k for k in _release_names(expected)}
        raise ReleaseWeightsError(f"{file}: missing key {release.get(missing[0], missing[0])!r} "
                                  f"({len(missing)} missing; {config_file} asks for them)")
    return mapped


def _release_names(expected: dict[str, torch.Tensor]) -> list[str]:
    """Every release key name whose mapping lands in ``expected`` (for naming a missing key)."""
    inverse_embed = {v: k for k, v in _EMBEDDINGS.items()}
    inverse_layer = {v: k for k, v in _LAYER.items()}
    names = []
    for key in expected:
        parts = key.split(".")
        if parts[0] == "embeddings":
            names.append(f"text_model.embeddings.{inverse_embed[parts[1]]}.{parts[2]}")
        else:
            inner = ".".join(parts[3:-1])
            names.append(f"text_model.encoder.layers.{parts[2]}.{inverse_layer[inner]}.{parts[-1]}")
    return names


class ReleaseTextEncoder(PromptEncoder):
    """The release's BiomedCLIP text tower (``BertModel``) with its tokenizer: prompts → ``[B, 77, width]``."""

    def __init__(self, bert, tokenizer, source: str | None = None):
        super().__init__()
        self.bert = bert
        self.tokenizer = tokenizer
        self.source = source
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_folders(cls, text_dir: str | Path, tokenizer_dir: str | Path) -> ReleaseTextEncoder:
        """``text_encoder/`` (config.json + weights) and ``tokenizer/`` (vocab.txt) as the release saves them."""
        from transformers import BertModel, BertTokenizer

        text_dir, tokenizer_dir = Path(text_dir), Path(tokenizer_dir)
        config_file = text_dir / CONFIG_FILE
        try:
            text_config = json.loads(config_file.read_text())["text_config"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ReleaseWeightsError(f"{config_file}: not the release's BiomedCLIP config (needs 'text_config'): "
                                      f"{exc}") from None
        with torch.random.fork_rng(devices=[]):  # the weights replace the random init; leave the global RNG alone
            bert = BertModel(bert_config(text_config), add_pooling_layer=False)
        file, state = _read_weights(text_dir)
        bert.load_state_dict(map_release_state(state, bert.state_dict(), file, config_file))
        if not (tokenizer_dir / "vocab.txt").is_file():
            raise ReleaseWeightsError(f"{tokenizer_dir}: no vocab.txt (the release's BertTokenizer)")
        tokenizer = BertTokenizer.from_pretrained(str(tokenizer_dir))
        return cls(bert.eval(), tokenizer, source=str(text_dir))

    @property
    def width(self) -> int:
        return int(self.bert.config.hidden_size)

    @property
    def context_length(self) -> int:
        return CONTEXT_LENGTH

    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        """``[B, 77]`` ids as the release tokenizes: ``[CLS] … [SEP]`` padded to 77, longer prompts truncated."""
        return self.tokenizer(list(prompts), padding="max_length", max_length=CONTEXT_LENGTH, truncation=True,
                              return_tensors="pt").input_ids

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> torch.Tensor:
        ids = self.token_ids(prompts).to(self.device)
        return self.bert(input_ids=ids).last_hidden_state  # no attention mask: the release attends to padding

    def save_pretrained(self, path) -> None:
        raise NotImplementedError("the release's text encoder is not re-saved; keep its text_encoder/ and "
                                  "tokenizer/ folders as the release ships them")

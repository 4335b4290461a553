"""The frozen text encoder: an open_clip text tower whose token-level states feed the UNet's cross-attention.

Paper scale is BiomedCLIP (``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`` or a local
open_clip directory holding ``open_clip_config.json`` + weights; width 768). ``tiny`` is a custom open_clip
text transformer with the built-in SimpleTokenizer (no ``transformers`` needed), randomly initialised from a
fixed seed. ``save_pretrained`` writes the text tower only (``open_clip_config.json`` marked
``"mrgen": {"text_only": true}`` + ``open_clip_model.safetensors`` with ``text.*`` keys).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
# open_clip where a text tower is built (seconds to import; not every bundle load needs it)

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
LOCAL_DIR = "local-dir:"


def _open_clip():
    """open_clip, imported where a text tower is built: importing it (and timm with it) costs ~1 s that every
    importer of the bundle module would pay otherwise, and timm's import warns that torch.jit.interface is
    deprecated, a line in the user's console about code that is not ours."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import open_clip
    return open_clip
HF_HUB = "hf-hub:"
CACHE_LIMIT = 8192


class PromptEncoder(nn.Module):
    """Prompts → token states ``[B, T, width]``, frozen, each distinct prompt encoded once (a bounded cache).

    Subclasses implement ``forward(prompts)``, ``width`` and ``context_length``: :class:`TextEncoder` (open_clip)
    and ``ReleaseTextEncoder`` (the official release's BiomedCLIP, ``models/release_text.py``).
    """

    def __init__(self):
        super().__init__()
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def train(self, mode: bool = True) -> PromptEncoder:
        return super().train(False)  # frozen in every stage

    def _apply(self, fn, *args, **kwargs):
        self._cache = {}  # cached states live on the old device/dtype
        return super()._apply(fn, *args, **kwargs)

    def encode(self, prompts: list[str] | str) -> torch.Tensor:
        """Token states ``[B, T, width]``; each distinct prompt is encoded once and cached (prompts repeat).

        Always normal (not inference-mode) tensors, so states cached while sampling inside
        ``torch.inference_mode`` can later feed a training step through the same encoder.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        with torch.inference_mode(False), torch.no_grad():
            missing = sorted({p for p in prompts if p not in self._cache})
            if missing:
                if len(self._cache) + len(missing) > CACHE_LIMIT:
                    self._cache = {}
                for prompt, states in zip(missing, self.forward(missing)):
                    self._cache[prompt] = states
            return torch.stack([self._cache[p] for p in prompts])


class TextEncoder(PromptEncoder):
    """Prompts → token states ``[B, T, width]``; frozen; ``""`` is the unconditional prompt."""

    def __init__(self, model_cfg: dict[str, Any], seed: int = 0, tower: nn.Module | None = None,
                 tokenizer: Any = None, source: str | None = None, local_dir: Path | None = None):
        super().__init__()
        self.model_cfg = model_cfg
        self.source = source
        text_cfg = model_cfg["text_cfg"]
        if tower is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                tower = _open_clip().model._build_text_tower(model_cfg["embed_dim"], text_cfg,
                                                             model_cfg.get("quick_gelu", False))
        tower.output_tokens = True
        self.text = tower
        self.tokenizer = tokenizer or _tokenizer(text_cfg, local_dir)
        self.requires_grad_(False)
        self.eval()

    # ----- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> TextEncoder:
        """``ModelConfig.text_encoder``: ``{"model_cfg": ..., "seed": 0}`` (random) or ``{"pretrained": name}``."""
        if cfg.get("pretrained"):
            encoder = cls.from_pretrained(cfg["pretrained"])
        elif "model_cfg" in cfg:
            encoder = cls(cfg["model_cfg"], seed=int(cfg.get("seed", 0)))
        else:
            raise ValueError(f"text_encoder config needs 'model_cfg' or 'pretrained', got keys {sorted(cfg)}")
        if cfg.get("width") is not None and encoder.width != cfg["width"]:
            raise ValueError(f"text encoder {cfg.get('pretrained') or 'from model_cfg'} has width {encoder.width}, "
                             f"config says {cfg['width']}")
        return encoder

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> TextEncoder:
        """A folder written by :meth:`save_pretrained`, any local open_clip folder, or ``hf-hub:``/``local-dir:``."""
        name = str(name_or_path)
        if name.startswith(HF_HUB):
            encoder = _from_open_clip(cls, name)
        else:
            path = Path(name[len(LOCAL_DIR):] if name.startswith(LOCAL_DIR) else name)
            config_file = path / CONFIG_NAME
            if not config_file.is_file():
                raise FileNotFoundError(f"text encoder: {config_file} not found (expected an open_clip folder)")
            try:
                saved = json.loads(config_file.read_text())
                model_cfg = saved["model_cfg"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise ValueError(f"text encoder: {config_file} is not an open_clip config ({exc})") from None
            if saved.get("mrgen", {}).get("text_only"):
                encoder = cls(_resolve_local(model_cfg, path), tokenizer=None, source=saved["mrgen"].get("source"),
                              local_dir=path)
                _load_text_weights(encoder, path / WEIGHTS_NAME)
            else:
                encoder = _from_open_clip(cls, LOCAL_DIR + str(path))
        return encoder.to(device=device, dtype=dtype) if dtype is not None else encoder.to(device)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        model_cfg = json.loads(json.dumps(self.model_cfg))
        text_cfg = model_cfg["text_cfg"]
        if text_cfg.get("hf_model_name"):
            # An HF (BERT) tower: keep its config and tokenizer beside the weights so the folder loads offline.
            self.text.transformer.config.save_pretrained(path)
            self.tokenizer.tokenizer.save_pretrained(path)
            text_cfg.update(hf_model_name=".", hf_tokenizer_name=".", hf_model_pretrained=False)
        config = {"model_cfg": model_cfg, "preprocess_cfg": {}, "mrgen": {"text_only": True, "source": self.source}}
        (path / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
        state = {f"text.{k}": v.detach().cpu().contiguous() for k, v in self.text.state_dict().items()}
        save_file(state, str(path / WEIGHTS_NAME))

    # ----- use ----------------------------------------------------------------------------------------------
    @property
    def width(self) -> int:
        width = getattr(self.text, "width", None)
        return int(width if width is not None else self.text.transformer.config.hidden_size)

    @property
    def context_length(self) -> int:
        return int(self.tokenizer.context_length)

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts)).to(self.device)
        _, tokens = self.text(ids)
        return tokens


def _tokenizer(text_cfg: dict[str, Any], local_dir: Path | None):
    context_length = text_cfg.get("context_length", 77)
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    tokenizer = _open_clip().tokenizer
    if text_cfg.get("hf_tokenizer_name"):
        return tokenizer.HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context_length,
                           tokenizer_mode=text_cfg.get("tokenizer_mode"), **kwargs)
    return tokenizer.SimpleTokenizer(context_length=context_length, **kwargs)


def _resolve_local(model_cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    model_cfg = json.loads(json.dumps(model_cfg))
    text_cfg = model_cfg["text_cfg"]
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if text_cfg.get(key) == ".":
            text_cfg[key] = str(path)
    return model_cfg


def _load_text_weights(encoder: TextEncoder, file: Path) -> None:
    if not file.is_file():
        raise FileNotFoundError(f"text encoder: weights {file} not found")
    state = {k[len("text."):]: v for k, v in load_file(str(file)).items() if k.startswith("text.")}
    result = encoder.text.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"text encoder: {file} does not match its config: missing {result.missing_keys[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")


def _from_open_clip(cls: type[TextEncoder], name: str) -> TextEncoder:
    """A full open_clip model (hub or local folder); only its text tower is kept."""
    open_clip = _open_clip()
    try:
        model = open_clip.create_model(name, force_custom_text=True, device="cpu")
    except Exception as exc:
        raise RuntimeError(f"text encoder: open_clip could not load {name!r}: {exc}{_hf_tower_hint(name)}") from exc
    if name.startswith(LOCAL_DIR):
        model_cfg = json.loads((Path(name[len(LOCAL_DIR):]) / CONFIG_NAME).read_text())["model_cfg"]
    else:
        model_cfg = open_clip.factory._get_hf_config(name[len(HF_HUB):])["model_cfg"]
    model_cfg = dict(model_cfg, custom_text=True)
    return cls(model_cfg, tower=model.text, tokenizer=open_clip.get_tokenizer(name), source=name)


def _hf_tower_hint(name: str) -> str:
    """BiomedCLIP's config names its BERT by hub id; offline, that id must resolve from the HF cache."""
    if not name.startswith(LOCAL_DIR):
        return ""
    try:
        text_cfg = json.loads((Path(name[len(LOCAL_DIR):]) / CONFIG_NAME).read_text())["model_cfg"]["text_cfg"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    hf_name = text_cfg.get("hf_model_name")
    if not hf_name or Path(hf_name).is_dir():
        return ""
    return (f" (text_cfg.hf_model_name {hf_name!r} in {CONFIG_NAME} is a hub id: offline, that model's config.json "
            "must be in the Hugging Face cache, or point hf_model_name at a local folder holding it)")

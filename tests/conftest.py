"""Shared real components for the suite: one local Ray cluster, one moto S3 server, one tiny phantom DB."""
from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MRGEN_RAY_LOG_TO_DRIVER", "0")

import torch  # noqa: E402

torch.set_num_threads(1)

BUCKET = "mrgen-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3 server on 127.0.0.1; AWS_* variables point at it (set before Ray starts)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield {"endpoint": endpoint, "bucket": BUCKET, "env": env}
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _start_session_ray():
    from mrgen.platform.cluster import RayConfig, init_ray

    init_ray(RayConfig(num_cpus=2, object_store_memory_mb=512, no_progress_timeout_s=300))
    import ray

    return ray


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray for the whole run (2 CPUs); S3 variables are in place first so workers inherit them."""
    ray = _start_session_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def session_ray_paused(ray_session):
    """The session's Ray stopped while a module joins a (multi-node) cluster of its own, started again after."""
    ray_session.shutdown()
    yield
    ray_session.shutdown()
    _start_session_ray()


@pytest.fixture(scope="session")
def tiny_db(tmp_path_factory, ray_session) -> str:
    """A small phantom MRGen-DB (64x64), built once per session; treat it as read-only."""
    from mrgen.datasets.phantom import PhantomConfig, build_phantom_db

    out = str(tmp_path_factory.mktemp("tiny_db") / "db")
    build_phantom_db(out, PhantomConfig.load("tiny"))
    return out


# ----- the official MRGen release's checkpoint folder, written here at tiny widths ---------------------------------
# Config keys as the release's ckpt/*/config.json name them (vae without scaling_factor), weights under the key names
# its classes save (diffusers' for vae/unet/controlnet; BiomedCLIP's CLIP-style names for the text tower), a PNDM
# scheduler config, a BertTokenizer vocab. 32x32 images, x2 autoencoder, token width 16.
RELEASE_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", "-", "t1", "t2", "spir", "abdomen", "mri", "fat",
                 "muscle", "water", "low", "high", "signal", "dark", "bright", "liver", "right", "left", "kidney",
                 "spleen", "upper", "abdominal", "region", "in", "phase", "##s"]
RELEASE_TEXT_CONFIG = {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 2,
                       "max_position_embeddings": 80, "vocab_size": len(RELEASE_VOCAB), "type_vocab_size": 2,
                       "layer_norm_eps": 1e-12, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
                       "attention_dropout": 0.1, "projection_dim": 8, "model_type": "clip_text_model"}
RELEASE_CONFIGS = {
    "vae": {"_class_name": "AutoencoderKL", "_diffusers_version": "0.6.0", "act_fn": "silu",
            "block_out_channels": [8, 16], "down_block_types": ["DownEncoderBlock2D"] * 2, "in_channels": 1,
            "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 4, "out_channels": 1, "sample_size": 32,
            "up_block_types": ["UpDecoderBlock2D"] * 2},
    "unet": {"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.29.2", "act_fn": "silu",
             "attention_head_dim": 2, "block_out_channels": [16, 32], "center_input_sample": False,
             "class_embed_type": None, "conv_in_kernel": 3, "conv_out_kernel": 3, "cross_attention_dim": 16,
             "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "downsample_padding": 1,
             "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 1,
             "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05,
             "norm_num_groups": 8, "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4,
             "resnet_time_scale_shift": "default", "sample_size": 16, "time_embedding_type": "positional",
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "upcast_attention": False,
             "use_linear_projection": False},
    "controlnet": {"_class_name": "ControlNetModel", "_diffusers_version": "0.29.2", "act_fn": "silu",
                   "addition_embed_type": None, "addition_embed_type_num_heads": 64, "addition_time_embed_dim": None,
                   "attention_head_dim": 2, "block_out_channels": [16, 32], "class_embed_type": None,
                   "conditioning_channels": 1, "conditioning_embedding_out_channels": [8, 16],
                   "controlnet_conditioning_channel_order": "rgb", "cross_attention_dim": 16,
                   "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "downsample_padding": 1,
                   "encoder_hid_dim": None, "encoder_hid_dim_type": None, "flip_sin_to_cos": True, "freq_shift": 0,
                   "global_pool_conditions": False, "in_channels": 4, "layers_per_block": 1,
                   "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05,
                   "norm_num_groups": 8, "num_attention_heads": None, "num_class_embeds": None,
                   "only_cross_attention": False, "projection_class_embeddings_input_dim": None,
                   "resnet_time_scale_shift": "default", "transformer_layers_per_block": 1, "upcast_attention": False,
                   "use_linear_projection": False},
}
RELEASE_SCHEDULER = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
                     "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
                     "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
                     "clip_sample": False}
# BertModel key → the release's BiomedCLIP key (written out here by hand, from its modelling file)
RELEASE_TEXT_NAMES = {"embeddings.word_embeddings": "text_model.embeddings.token_embedding",
                      "embeddings.position_embeddings": "text_model.embeddings.position_embedding",
                      "embeddings.token_type_embeddings": "text_model.embeddings.token_type_embedding",
                      "embeddings.LayerNorm": "text_model.embeddings.layer_norm",
                      "attention.self.query": "self_attn.q_proj", "attention.self.key": "self_attn.k_proj",
                      "attention.self.value": "self_attn.v_proj", "attention.output.dense": "self_attn.out_proj",
                      "attention.output.LayerNorm": "layer_norm1", "intermediate.dense": "mlp.fc1",
                      "output.dense": "mlp.fc2", "output.LayerNorm": "layer_norm2"}


def release_text_key(bert_key: str) -> str:
    """The release's name of a ``BertModel`` key (independent of the project's own mapping)."""
    module, kind = bert_key.rsplit(".", 1)
    if module.startswith("embeddings."):
        return f"{RELEASE_TEXT_NAMES[module]}.{kind}"
    _, _, layer, inner = module.split(".", 3)
    return f"text_model.encoder.layers.{layer}.{RELEASE_TEXT_NAMES[inner]}.{kind}"


def write_release_folder(root, bin_part: str = "unet", template_names: bool = False, seed: int = 3) -> dict:
    """Write a release checkpoint folder at ``root``; returns the modules written (vae, unet, controlnet, bert)."""
    import json
    from pathlib import Path

    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    root = Path(root)
    text_dir, tok_dir = ("text_encoder_BiomedCLIP", "tokenizer_BiomedCLIP") if template_names else (
        "text_encoder", "tokenizer")
    models: dict = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for part, cls in (("vae", AutoencoderKL), ("unet", UNet2DConditionModel), ("controlnet", ControlNetModel)):
            model = cls.from_config(RELEASE_CONFIGS[part])
            with torch.no_grad():
                for p in model.parameters():
                    if not p.any():  # zero convolutions: the condition must matter
                        p.normal_(0.0, 0.2)
            models[part] = model.eval()
            (root / part).mkdir(parents=True)
            (root / part / "config.json").write_text(json.dumps(RELEASE_CONFIGS[part], indent=2))
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            if part == bin_part:
                torch.save(state, root / part / "diffusion_pytorch_model.bin")
            else:
                save_file(state, str(root / part / "diffusion_pytorch_model.safetensors"))
        tc = RELEASE_TEXT_CONFIG
        bert = BertModel(BertConfig(vocab_size=tc["vocab_size"], hidden_size=tc["hidden_size"],
                                    num_hidden_layers=tc["num_hidden_layers"],
                                    num_attention_heads=tc["num_attention_heads"],
                                    intermediate_size=tc["intermediate_size"], hidden_act="gelu",
                                    max_position_embeddings=tc["max_position_embeddings"], layer_norm_eps=1e-12,
                                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                         add_pooling_layer=False).eval()
        state = {release_text_key(k): v.contiguous() for k, v in bert.state_dict().items()}
        state.update({"text_projection.fc1.weight": torch.randn(12, 16),
                      "text_projection.fc2.weight": torch.randn(8, 12),
                      "visual_projection.weight": torch.randn(8, 24), "logit_scale": torch.tensor(2.6592),
                      "vision_model.embeddings.patch_embedding.weight": torch.randn(24, 3, 4, 4)})
    models["bert"] = bert
    (root / text_dir).mkdir()
    (root / text_dir / "config.json").write_text(json.dumps({
        "architectures": ["BiomedCLIPModel"], "model_type": "clip", "projection_dim": 8,
        "auto_map": {"AutoConfig": "configuration_biomed_clip.BiomedCLIPConfig",
                     "AutoModel": "modeling_biomed_clip.BiomedCLIPModel"},
        "logit_scale_init_value": 2.6592, "text_config": tc,
        "text_projection_config": {"hidden_size": 16, "intermediate_size": 12, "projection_dim": 8},
        "vision_config": {"hidden_size": 24, "patch_size": 4, "image_size": 16, "num_hidden_layers": 1},
        "torch_dtype": "float32", "transformers_version": "4.44.0"}, indent=2))
    save_file(state, str(root / text_dir / "model.safetensors"))
    (root / tok_dir).mkdir()
    (root / tok_dir / "vocab.txt").write_text("\n".join(RELEASE_VOCAB) + "\n")
    (root / tok_dir / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": True, "model_max_length": 512, "tokenizer_class": "BertTokenizer"}))
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(RELEASE_SCHEDULER, indent=2))
    return models


@pytest.fixture(scope="session")
def release_writer():
    """``write_release_folder(root, bin_part=, template_names=, seed=)``: a release folder of one's own."""
    return write_release_folder


@pytest.fixture(scope="session")
def release_folder(tmp_path_factory) -> str:
    """A release checkpoint folder as the release's synthesis script expects it (read-only: copy it to change it)."""
    root = tmp_path_factory.mktemp("release") / "ckpt"
    write_release_folder(root)
    return str(root)

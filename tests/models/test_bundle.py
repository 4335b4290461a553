import datetime
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from mrgen.models.bundle import ModelBundle, build_random_bundle
from mrgen.models.manifest import MANIFEST, BundleError, bundle_hash
from mrgen.models.pipeline import MRGenPipeline
from mrgen.models.text_encoder import TextEncoder
from mrgen.platform import storage

torch.set_num_threads(1)
PARTS = ("vae", "unet", "controlnet", "text_encoder")


@pytest.fixture(scope="module")
def bundle():
    return build_random_bundle("tiny", seed=0)


def assert_same_weights(a: ModelBundle, b: ModelBundle, parts=PARTS):
    for part in parts:
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sa.keys() == sb.keys(), part
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{part}.{key}"


def test_random_bundle_follows_its_seed(bundle):
    assert_same_weights(bundle, build_random_bundle("tiny", seed=0))
    other = build_random_bundle("tiny", seed=1)
    for part in PARTS:
        assert any(not torch.equal(v, w) for v, w in
                   zip(getattr(bundle, part).state_dict().values(), getattr(other, part).state_dict().values())), part


def test_local_round_trip(bundle, tmp_path):
    uri = str(tmp_path / "bundle")
    digest = bundle.save(uri)
    names = sorted(p.name for p in (tmp_path / "bundle").iterdir())
    assert names == sorted([*PARTS, "scheduler", MANIFEST])
    suffixes = {p.suffix for p in (tmp_path / "bundle").rglob("*") if p.is_file()}
    assert suffixes == {".json", ".safetensors"}  # no pickle
    loaded = ModelBundle.load(uri)
    assert_same_weights(bundle, loaded)
    assert loaded.scheduler_config == {**bundle.scheduler_config, "_class_name": "DDIMScheduler"}
    manifest = loaded.manifest
    for key in ("prompt_template_version", "modality_table_version", "resolution", "latent_scaling", "run_id",
                "created", "parts"):
        assert key in manifest, key
    assert manifest["resolution"] == 64 and manifest["run_id"] == "random-tiny-0"
    assert manifest["mask_encoding"] == "ratio"
    assert set(manifest["parts"]) == {*PARTS, "scheduler"}
    assert digest == bundle_hash(uri) == loaded.bundle_id == bundle_hash(f"file://{uri}")
    assert loaded.vae.config.scaling_factor == loaded.latent_scaling


def test_s3_round_trip_and_overwrite(bundle, s3_server, tmp_path):
    uri = "s3://mrgen-test/bundles/x"
    digest = bundle.save(uri)
    assert MANIFEST in storage.listdir(uri)
    loaded = ModelBundle.load(uri, cache_dir=tmp_path / "cache")
    assert_same_weights(bundle, loaded)
    assert loaded.bundle_id == digest == bundle_hash(uri)
    again = ModelBundle.load(uri, cache_dir=tmp_path / "cache")  # served from the cache
    assert_same_weights(bundle, again)

    other = build_random_bundle("tiny", seed=1)
    assert other.save(uri) != digest
    reloaded = ModelBundle.load(uri, cache_dir=tmp_path / "cache")  # the cache notices the new manifest
    assert_same_weights(other, reloaded)


def _fail_text_encoder(monkeypatch):
    def boom(self, path):
        raise RuntimeError("disk full")

    monkeypatch.setattr(TextEncoder, "save_pretrained", boom)


def test_failed_local_save_leaves_no_bundle_and_keeps_an_old_one(bundle, tmp_path, monkeypatch):
    uri = str(tmp_path / "bundles" / "b")
    _fail_text_encoder(monkeypatch)
    with pytest.raises(RuntimeError, match="disk full"):
        bundle.save(uri)
    assert list((tmp_path / "bundles").iterdir()) == []
    monkeypatch.undo()

    digest = bundle.save(uri)
    _fail_text_encoder(monkeypatch)
    with pytest.raises(RuntimeError, match="disk full"):
        build_random_bundle("tiny", seed=1).save(uri)
    assert [p.name for p in (tmp_path / "bundles").iterdir()] == ["b"]
    assert bundle_hash(uri) == digest
    assert_same_weights(bundle, ModelBundle.load(uri))


def test_failed_s3_save_uploads_nothing(bundle, s3_server, monkeypatch):
    uri = "s3://mrgen-test/bundles/failed"
    _fail_text_encoder(monkeypatch)
    with pytest.raises(RuntimeError, match="disk full"):
        bundle.save(uri)
    assert storage.listdir(uri) == []


def test_missing_part_is_named(bundle, tmp_path):
    uri = str(tmp_path / "b")
    bundle.save(uri)
    only_vae = ModelBundle.load(uri, parts=["vae"])
    assert only_vae.unet is None and only_vae.controlnet is None and only_vae.vae is not None
    shutil.rmtree(tmp_path / "b" / "unet")
    with pytest.raises(BundleError, match=r"part 'unet' missing .*unet"):
        ModelBundle.load(uri)
    shutil.rmtree(tmp_path / "b" / "controlnet")
    assert ModelBundle.load(uri, parts=["vae", "text_encoder"]).controlnet is None
    with pytest.raises(BundleError, match="'controlnet' missing"):
        ModelBundle.load(uri, parts=["controlnet"])
    with pytest.raises(BundleError, match="unknown bundle parts"):
        ModelBundle.load(uri, parts=["refiner"])


# ----- the official MRGen release layout, written by hand at tiny widths ---------------------------------------
OFFICIAL_VAE = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.25.0", "act_fn": "silu",
    "block_out_channels": [16, 32, 64, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 1, "out_channels": 1, "latent_channels": 16, "layers_per_block": 1, "norm_num_groups": 8,
    "sample_size": 64, "scaling_factor": 0.75, "force_upcast": True,
}
OFFICIAL_UNET = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.25.0", "act_fn": "silu",
    "attention_head_dim": 4, "block_out_channels": [32, 64], "center_input_sample": False,
    "cross_attention_dim": 64, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 16, "layers_per_block": 1,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 16, "out_channels": 16, "sample_size": 8,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "use_linear_projection": False,
    "upcast_attention": False, "only_cross_attention": False, "dual_cross_attention": False,
}
OFFICIAL_CONTROLNET = {
    "_class_name": "ControlNetModel", "_diffusers_version": "0.25.0", "act_fn": "silu", "attention_head_dim": 4,
    "block_out_channels": [32, 64], "class_embed_type": None, "conditioning_channels": 1,
    "conditioning_embedding_out_channels": [8, 16, 16, 32], "controlnet_conditioning_channel_order": "rgb",
    "cross_attention_dim": 64, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "global_pool_conditions": False,
    "in_channels": 16, "layers_per_block": 1, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
    "norm_num_groups": 16, "num_class_embeds": None, "only_cross_attention": False,
    "projection_class_embeddings_input_dim": None, "resnet_time_scale_shift": "default",
    "upcast_attention": False, "use_linear_projection": False,
}
OFFICIAL_SCHEDULER = {
    "_class_name": "DDIMScheduler", "_diffusers_version": "0.25.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "trained_betas": None,
}


def _write_official(root, bin_part="unet", extra_object=False, condition_channels=1):
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    torch.manual_seed(5)
    models = {}
    for part, cls, config in (("vae", AutoencoderKL, OFFICIAL_VAE), ("unet", UNet2DConditionModel, OFFICIAL_UNET),
                              ("controlnet", ControlNetModel, OFFICIAL_CONTROLNET)):
        if part == "controlnet":
            config = {**config, "conditioning_channels": condition_channels}
        model = cls.from_config(config)
        models[part] = model
        (root / part).mkdir(parents=True)
        (root / part / "config.json").write_text(json.dumps(config, indent=2))
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if part == bin_part:
            payload = {**state, "evil": datetime.timedelta(days=1)} if extra_object else state
            torch.save(payload, root / part / "diffusion_pytorch_model.bin")
        else:
            save_file(state, str(root / part / "diffusion_pytorch_model.safetensors"))
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(OFFICIAL_SCHEDULER))
    return models


def test_official_release_layout_loads_unchanged(tmp_path, bundle):
    root = tmp_path / "MRGen-release"
    models = _write_official(root)
    bundle.text_encoder.save_pretrained(tmp_path / "biomedclip-like")
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    with pytest.raises(BundleError, match="text_encoder"):
        ModelBundle.load(str(root))
    loaded = ModelBundle.load(str(root), text_encoder=str(tmp_path / "biomedclip-like"))
    for part, model in models.items():
        for key, value in model.state_dict().items():
            assert torch.equal(getattr(loaded, part).state_dict()[key], value), f"{part}.{key}"
    assert loaded.latent_scaling == 0.75 and loaded.resolution == 64
    assert loaded.scheduler_config["skip_prk_steps"] is True
    assert loaded.bundle_id == bundle_hash(str(root))
    images = MRGenPipeline(loaded).generate(["T2 SPIR MRI"], None, 1, steps=2, seeds=[0])
    assert images.shape == (1, 64, 64)
    mask = torch.zeros(1, 64, 64, dtype=torch.uint8)
    mask[0, 20:40, 20:40] = 1
    assert MRGenPipeline(loaded).generate(["T2 SPIR MRI"], mask, 2, steps=2, seeds=[0, 1]).shape == (2, 64, 64)
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert after == before  # loading changes nothing


def test_official_controller_with_an_rgb_condition(tmp_path, bundle):
    root = tmp_path / "release"
    _write_official(root, condition_channels=3)
    bundle.text_encoder.save_pretrained(root / "text_encoder")
    loaded = ModelBundle.load(str(root))
    assert loaded.controlnet.config.conditioning_channels == 3
    mask = torch.zeros(1, 64, 64, dtype=torch.uint8)
    mask[0, 8:30, 8:50] = 2
    assert MRGenPipeline(loaded).generate(["T1 MRI"], mask, 1, steps=2, seeds=[0]).shape == (1, 64, 64)


def test_bin_weights_are_never_unpickled(tmp_path):
    root = tmp_path / "release"
    _write_official(root, bin_part="controlnet", extra_object=True)
    file = root / "controlnet" / "diffusion_pytorch_model.bin"
    assert "evil" in torch.load(file, weights_only=False)  # a plain unpickler would accept the file
    with pytest.raises(BundleError, match="part 'controlnet'"):
        ModelBundle.load(str(root), parts=["controlnet"])


def test_a_db_is_recorded_by_the_command_that_makes_it(bundle, tmp_path):
    """`db_record` names a phantom DB by the `mrgen db phantom` line that remakes it (the nearest preset, a --set per
    other field) and its digest: the line, parsed by the CLI, builds the same config (the same digest) elsewhere."""
    import shlex

    from mrgen.cli.common import load_config
    from mrgen.cli.main import build_parser
    from mrgen.datasets.phantom import PhantomConfig, build_phantom_db, phantom_meta
    from mrgen.datasets.store import db_digest, meta_digest
    from mrgen.models.manifest import DB_NAME, db_record, read_manifest, record_evaluation
    from mrgen.platform.provenance import command_line

    config = PhantomConfig.load("tiny", ["seed=3", "volumes=2", 'pool_modalities=["T1 MRI"]'])
    db = str(tmp_path / "db")
    build_phantom_db(db, config, use_ray=False)
    record = db_record(db)
    assert record["db_digest"] == db_digest(db) and str(tmp_path) not in record["db"]
    words = shlex.split(record["db"])
    assert words[:5] == ["mrgen", "db", "phantom", "--out", DB_NAME] and "--config" in words
    args = build_parser().parse_args(words[1:])
    remade = load_config(PhantomConfig, args, {"seed": args.seed, "volumes": args.volumes})
    assert meta_digest(phantom_meta(remade)) == record["db_digest"]
    argv = ["/venv/bin/mrgen", "train", "unet", "--db", db, "--out", "o"]
    assert command_line(argv, shown={"--db": DB_NAME}) == "mrgen train unet --db D --out o"
    saved = str(tmp_path / "bundle")
    bundle.save(saved)
    record_evaluation(saved, "test", {"mask_dependence": {"gain": 0.5, "db": db}})  # `mrgen eval mask --record`
    assert read_manifest(saved)["evaluation"]["test"]["mask_dependence"] == {"gain": 0.5, **record}
    assert bundle_hash(saved) == read_manifest(saved)["bundle_hash"]

"""`mrgen eval`, `export`, `generate` and `bench` read their tunables from config sections (``evaluate``, ``export``,
``generate``, ``bench``): the defaults are those the commands' argparse defaults were, `--set` overrides, an unknown
key exits naming it, and a flag given beats the config. Handlers run with their jobs replaced: no Ray, no models."""
from __future__ import annotations

import dataclasses
import json

import pytest

from mrgen.cli import bench as bench_cli
from mrgen.cli.main import main
from mrgen.jobs.bench.config import BenchConfig
from mrgen.jobs.evaluate.config import EvaluateConfig
from mrgen.jobs.export.config import ExportConfig
from mrgen.models.sampling import SAMPLING_PRESETS, SamplingSettings
from mrgen.platform.config import ConfigBase, ConfigError
from mrgen.serving.client import GenerateConfig

SECTIONS = (EvaluateConfig, ExportConfig, GenerateConfig, BenchConfig)


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda c: c.section)
def test_presets_are_the_defaults(cls):
    assert cls.load(None) == cls.load("tiny") == cls.load("paper") == cls()


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda c: c.section)
def test_every_field_is_described(cls):
    def undescribed(model, prefix=""):
        for name, field in model.model_fields.items():
            if not field.description:
                yield prefix + name
            if isinstance(field.annotation, type) and issubclass(field.annotation, ConfigBase):
                yield from undescribed(field.annotation, f"{prefix}{name}.")

    assert not list(undescribed(cls))


def test_defaults_are_the_former_argparse_defaults():
    e = EvaluateConfig()
    assert (e.ae.split, e.ae.limit, e.ae.batch_size) == ("test", None, 16)
    assert (e.mask.split, e.mask.limit, e.mask.seed, e.mask.following_slices, e.mask.sheet_slices) == \
        ("test", 64, 0, 24, 6)
    assert e.mask.sampling == SamplingSettings("dpm", 20, 4.0) == SAMPLING_PRESETS["default"]
    assert (e.fid.extractor, e.fid.limit, e.clip.text, e.clip.limit) == ("inception", None, "prompt", None)
    x = ExportConfig()
    assert (x.split, x.labels, x.verify) == ("test", None, False)
    g = GenerateConfig()
    assert (g.n, g.keep, g.region, g.steps, g.guidance, g.sampler, g.seed, g.timeout) == \
        (None, None, None, None, None, None, None, 300.0)  # n: the service's (1, or with keep its filter budget)
    b = BenchConfig()
    assert b.db.model_dump() == dict(volumes=8, slices=64, size=128, resolution=64, batch_size=64, repeats=2,
                                    rescans=4, subset_dataset="phantom-src", subset_split="train")
    assert b.train.model_dump() == dict(steps=40, batch_size=8)
    assert b.serve.model_dump() == dict(clients=8, duration=20.0, n=1, steps=20, max_batch_size=8, rounds=3)
    assert b.adaptive.model_dump() == dict(masks=16, candidates=8, keep=2, wave_size=2)
    assert b.synth.model_dump() == dict(masks=2, scale=10, candidates=4, steps=4, sam2_size=256)
    assert b.elastic.model_dump() == dict(masks=32, train_steps=60)
    assert b.gpu.model_dump() == dict(device=None, tiny=False, sections=None, autotune=True)


def test_a_partial_sampling_mapping_keeps_the_other_defaults():
    assert EvaluateConfig.load(None, ["mask.sampling.steps=4"]).mask.sampling == SamplingSettings("dpm", 4, 4.0)
    with pytest.raises(ConfigError, match="mask.sampling.steps: .*greater than or equal to 1"):
        EvaluateConfig.load(None, ["mask.sampling.steps=0"])


@pytest.fixture
def calls(monkeypatch, tmp_path):
    """Replace every job the handlers call (where the handler looks it up); record the arguments they get."""
    import mrgen.cli.eval as eval_cli
    import mrgen.jobs.evaluate.autoencoder as ae
    import mrgen.jobs.evaluate.clip_score as clip
    import mrgen.jobs.evaluate.fid as fid
    import mrgen.jobs.export.nnunet as nnunet
    import mrgen.platform.cluster as cluster
    import mrgen.serving.client as client

    seen: dict = {}

    def record(name, result):
        def job(*args, **kwargs):
            seen[name] = (args, kwargs)
            return result
        return job

    def bench_run(name):
        def run(settings, args):
            seen[name] = settings
            return {}
        return run

    ae_result = {"split": "x", "slices": 1, "psnr": 1.0, "ssim": 1.0, "mse": 1.0}
    mask_result = dict.fromkeys(["split", "slices", "mse_true", "mse_empty", "mse_shuffled", "mse_unet", "gain"], 0)
    monkeypatch.setattr(cluster, "init_ray", record("init_ray", None))
    monkeypatch.setattr(eval_cli, "init_ray", record("init_ray", None))
    monkeypatch.setattr(ae, "evaluate_autoencoder", record("ae", ae_result))
    monkeypatch.setattr(eval_cli, "evaluate_mask_dependence", record("mask", {**mask_result, "split": "x"}))
    fid_result = {"fid": 1.0, "kid": 0.1, "kid_std": 0.01, "n_real": 2, "n_synthetic": 2, "extractor": "x"}
    monkeypatch.setattr(fid, "compute_fid", record("fid", fid_result))
    monkeypatch.setattr(clip, "compute_clip_scores", record("clip", {}))
    monkeypatch.setattr(nnunet, "export_nnunet", record("export", {"folder": str(tmp_path)}))

    class Client:
        def __init__(self, url, token=None, timeout_s=None):
            seen["timeout"] = timeout_s

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        generate = staticmethod(record("generate", type("G", (), {"bundle_id": "b" * 12, "kept": None,
                                                                 "generated": 1})()))

    monkeypatch.setattr(client, "GeneratorClient", Client)
    monkeypatch.setattr(client, "write_generation", lambda result, out: [])
    for name, bench in bench_cli.BENCHMARKS.items():
        monkeypatch.setitem(bench_cli.BENCHMARKS, name, dataclasses.replace(bench, run=bench_run(name)))
    return seen


@pytest.fixture
def mask_png(tmp_path):
    path = tmp_path / "mask.png"
    path.write_bytes(b"")
    return str(path)


def test_eval_ae(calls):
    base = ["eval", "ae", "--model", "m", "--db", "d"]
    assert main(base) == 0 and calls["ae"][0][2:] == ("test", 16, None)
    assert main([*base, "--set", "ae.batch_size=4", "--set", "ae.limit=9"]) == 0 and calls["ae"][0][2:] == \
        ("test", 4, 9)
    assert main([*base, "--set", "ae.batch_size=4", "--batch-size", "2", "--split", "val"]) == 0
    assert calls["ae"][0][2:] == ("val", 2, None)


def test_eval_mask(calls, monkeypatch):
    from mrgen.models.bundle import ModelBundle

    monkeypatch.setattr(ModelBundle, "load", staticmethod(lambda uri, **kw: None))
    base = ["eval", "mask", "--model", "m", "--db", "d"]
    assert main(base) == 0 and calls["mask"][0][2:] == ("test", 64) and calls["mask"][1]["seed"] == 0
    assert main([*base, "--set", "mask.limit=8", "--set", "mask.seed=3"]) == 0
    assert calls["mask"][0][2:] == ("test", 8) and calls["mask"][1]["seed"] == 3
    assert main([*base, "--set", "mask.limit=8", "--limit", "5", "--split", "train"]) == 0
    assert calls["mask"][0][2:] == ("train", 5)


def test_eval_mask_sampling_flags_beat_the_config(calls, monkeypatch):
    import mrgen.cli.eval as eval_cli
    from mrgen.models.bundle import ModelBundle

    monkeypatch.setattr(ModelBundle, "load", staticmethod(lambda uri, **kw: None))
    following = {"error_own": 0, "error_other": 0, "organs": 0, "following": 0, "autoencoder_ceiling": 0,
                 "separation_following": 0, "separation_ceiling": 0, "sheet": "s"}
    monkeypatch.setattr(eval_cli, "evaluate_mask_following",
                        lambda *a, **kw: calls.update(following=(a, kw)) or following)
    base = ["eval", "mask", "--model", "m", "--db", "d", "--sheet", "s.png"]
    assert main(base) == 0
    args, kwargs = calls["following"]
    assert args[4:] == (24, 6) and kwargs["sampling"] == SAMPLING_PRESETS["default"]
    assert main([*base, "--set", "mask.sampling.steps=7", "--set", "mask.sheet_slices=2", "--guidance", "3"]) == 0
    args, kwargs = calls["following"]
    assert args[4:] == (24, 2) and kwargs["sampling"] == SamplingSettings("dpm", 7, 3.0)
    assert main([*base, "--set", "mask.sampling.steps=7", "--steps", "5", "--sampler", "ddim"]) == 0
    assert calls["following"][1]["sampling"] == SamplingSettings("ddim", 5, 4.0)
    assert main([*base, "--conditioning-scale", "2"]) == 0
    assert calls["following"][1]["sampling"] == SamplingSettings("dpm", 20, 4.0, conditioning_scale=2.0)


def test_eval_fid_and_clip(calls):
    fid = ["eval", "fid", "--real", "r", "--synthetic", "s"]
    assert main(fid) == 0 and (calls["fid"][0][2], calls["fid"][0][6]) == ("inception", None)
    assert main([*fid, "--set", "fid.limit=10", "--set", "fid.extractor=resnet18"]) == 0
    assert (calls["fid"][0][2], calls["fid"][0][6]) == ("resnet18", 10)
    assert main([*fid, "--set", "fid.limit=10", "--limit", "3"]) == 0 and calls["fid"][0][6] == 3
    clip = ["eval", "clip", "--model", "m", "--synthetic", "s"]
    assert main(clip) == 0 and calls["clip"][0][3] == "prompt"
    assert main([*clip, "--set", "clip.text=modality"]) == 0 and calls["clip"][0][3] == "modality"
    assert main([*clip, "--set", "clip.text=modality", "--text", "prompt"]) == 0 and calls["clip"][0][3] == "prompt"


def test_export_nnunet(calls):
    base = ["export", "nnunet", "--synthetic", "s", "--out", "o", "--dataset-id", "7", "--name", "x"]
    assert main(base) == 0
    assert (calls["export"][1]["real_split"], calls["export"][1]["labels"]) == ("test", None)
    assert main([*base, "--set", "labels=liver,spleen", "--set", "split=val"]) == 0
    assert (calls["export"][1]["real_split"], calls["export"][1]["labels"]) == ("val", ["liver", "spleen"])
    assert main([*base, "--set", "labels=[liver]", "--labels", "kidney,liver", "--split", "train"]) == 0
    assert (calls["export"][1]["real_split"], calls["export"][1]["labels"]) == ("train", ["kidney", "liver"])
    assert main([*base, "--labels", "kidney", "liver,spleen"]) == 0
    assert calls["export"][1]["labels"] == ["kidney", "liver", "spleen"]


def test_generate(calls, mask_png, tmp_path):
    base = ["generate", "--url", "http://x", "--mask", mask_png, "--modality", "T1", "--out", str(tmp_path / "o")]
    assert main(base) == 0 and calls["timeout"] == 300.0
    assert calls["generate"][1] == dict(n=None, keep=None, region=None, steps=None, guidance=None, sampler=None,
                                        seed=None, conditioning_scale=None, guidance_interval=None)
    assert main([*base, "--set", "steps=20", "--set", "n=3", "--set", "timeout=5"]) == 0
    assert calls["timeout"] == 5 and (calls["generate"][1]["steps"], calls["generate"][1]["n"]) == (20, 3)
    assert main([*base, "--set", "steps=20", "--steps", "2", "--timeout", "9"]) == 0
    assert calls["timeout"] == 9 and calls["generate"][1]["steps"] == 2
    assert main([*base, "--guidance-interval", "0", "0.5", "--sampler", "ddpm"]) == 0  # every sampling setting
    assert (calls["generate"][1]["guidance_interval"], calls["generate"][1]["sampler"]) == ((0.0, 0.5), "ddpm")


def test_bench(calls):
    assert main(["bench", "db"]) == 0 and calls["db"] == BenchConfig().db
    assert main(["bench", "db", "--set", "db.volumes=4", "--set", "db.batch_size=16"]) == 0
    assert (calls["db"].volumes, calls["db"].batch_size) == (4, 16)
    assert main(["bench", "db", "--set", "db.volumes=4", "--volumes", "2"]) == 0 and calls["db"].volumes == 2
    assert main(["bench", "gpu", "--set", "gpu.sections=[synthesis]", "--tiny", "--no-autotune"]) == 0
    assert calls["gpu"].model_dump() == dict(device=None, tiny=True, sections=["synthesis"], autotune=False)
    assert main(["bench", "serve", "--set", "serve.steps=4", "--steps", "6"]) == 0 and calls["serve"].steps == 6
    calls.clear()
    assert main(["bench", "all", "--set", "synth.scale=3"]) == 0
    assert set(calls) == set(bench_cli.BENCHMARKS) and calls["synth"].scale == 3 and calls["db"] == BenchConfig().db


@pytest.mark.parametrize("argv,key", [
    (["eval", "ae", "--model", "m", "--db", "d", "--set", "ae.bogus=1"], "ae.bogus"),
    (["eval", "mask", "--model", "m", "--db", "d", "--set", "limit=3"], "limit"),
    (["eval", "fid", "--real", "r", "--synthetic", "s", "--set", "fid.extractor=vgg"], "fid.extractor"),
    (["eval", "clip", "--model", "m", "--synthetic", "s", "--set", "clip.nope=1"], "clip.nope"),
    (["export", "nnunet", "--out", "o", "--dataset-id", "1", "--name", "x", "--set", "bogus=1"], "bogus"),
    (["generate", "--url", "u", "--mask", "m", "--modality", "T1", "--out", "o", "--set", "bogus=1"], "bogus"),
    (["bench", "db", "--set", "db.bogus=1"], "db.bogus"),
    (["bench", "all", "--set", "gpu.sections=[nope]"], "gpu.sections"),
])
def test_bad_keys_exit_naming_them(argv, key, capsys):
    assert main(argv) == 1
    said = capsys.readouterr().err
    assert said.startswith(f"mrgen {argv[0]}") and key in said, said


def test_settings_flags_come_from_the_fields():
    """Each bench's flags are generated from its settings class: name, help, type, choices, lists and booleans."""
    import argparse

    from mrgen.cli.common import add_settings_flags
    from mrgen.jobs.bench.config import GpuBench, SynthBench

    parser = argparse.ArgumentParser()
    add_settings_flags(parser, GpuBench)
    add_settings_flags(parser, SynthBench)
    assert vars(parser.parse_args([])) == dict.fromkeys([*GpuBench.model_fields, *SynthBench.model_fields])
    got = parser.parse_args(["--device", "cpu", "--tiny", "--sections", "synthesis", "endpoint", "--sam2-size", "128"])
    assert (got.device, got.tiny, got.sections, got.sam2_size) == ("cpu", True, ["synthesis", "endpoint"], 128)
    assert parser.parse_args(["--no-tiny"]).tiny is False
    for bad in (["--device", "tpu"], ["--sections", "nope"], ["--scale", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    helps = {a.dest: a.help for a in parser._actions}
    assert helps["sam2_size"] == SynthBench.model_fields["sam2_size"].description


def test_a_dict_setting_takes_a_json_object_or_file(tmp_path):
    """`--recipe-overrides` (a dict field) parses a JSON object given inline or as a file, and refuses anything else."""
    import argparse

    from mrgen.cli.common import add_settings_flags
    from mrgen.jobs.bench.config import CostBench

    parser = argparse.ArgumentParser()
    add_settings_flags(parser, CostBench)
    inline = {"R2": {"steps": 5, "guidance_interval": [0.0, 0.2]}}
    assert parser.parse_args(["--recipe-overrides", json.dumps(inline)]).recipe_overrides == inline
    path = tmp_path / "overrides.json"
    path.write_text(json.dumps(inline))
    assert parser.parse_args(["--recipe-overrides", str(path)]).recipe_overrides == inline
    for bad in ("{R2: 1}", "[1, 2]"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--recipe-overrides", bad])

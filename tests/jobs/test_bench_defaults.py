"""Every `mrgen bench` benchmark resolves at its defaults: the job configs it would build (training, synthesis, service,
DB, phantom) are built from the CLI's own parse of `mrgen bench NAME` with no flags, through the benchmark's
``resolve`` (what the command does before it starts), and none is refused. Nothing runs: no Ray, no training, no
model. (`mrgen bench train` failed at its defaults: the tiny preset's 100 warm-up steps exceed the benchmark's 40.)"""
from __future__ import annotations

import dataclasses

import pytest

from mrgen.cli import bench as bench_cli
from mrgen.cli.main import build_parser, main

# Each benchmark with no flags; the GPU check also with --device cuda, its paper mode (what a GPU machine runs by
# default: resolving needs no GPU); and the smallest values of flags that a fixed setting of the benchmark used to
# exceed (warm-up steps, candidates kept).
ARGV = [["bench", name] for name in bench_cli.BENCHMARKS] + [
    ["bench", "gpu", "--device", "cuda"],
    ["bench", "train", "--steps", "1"],
    ["bench", "synth", "--candidates", "1"],
    ["bench", "elastic", "--train-steps", "1"],
    ["bench", "db", "--db", "somewhere"],
]


def _resolve(argv: list[str]) -> tuple[str, object, dict]:
    args = build_parser().parse_args(argv)
    name = args.benchmark
    settings = getattr(bench_cli.bench_config(args, name), name)
    return name, settings, bench_cli.BENCHMARKS[name].resolve(settings, args)


def test_every_benchmark_is_covered():
    assert {argv[1] for argv in ARGV} == set(bench_cli.BENCHMARKS)


@pytest.mark.parametrize("argv", ARGV, ids=" ".join)
def test_resolves_at_defaults(argv):
    name, settings, configs = _resolve(argv)  # a ConfigError (or any other refusal) fails here
    assert configs and all(v is not None for v in configs.values()), (name, configs)


def test_train_bench_settings_reach_its_run():
    _, settings, configs = _resolve(["bench", "train"])
    unet = configs["train"].unet
    assert (unet.max_steps, unet.batch_size) == (settings.steps, settings.batch_size)
    assert unet.warmup_steps < unet.max_steps and configs["train"].num_workers == 1
    assert "phantom" in configs  # no --db: the benchmark builds the tiny phantom DB
    assert "phantom" not in _resolve(["bench", "train", "--db", "somewhere"])[2]


def test_db_bench_builds_its_db_at_volume_only_without_db():
    _, settings, configs = _resolve(["bench", "db"])
    assert configs["phantom"].rescans == settings.rescans > 1 and configs["db"].resolution == settings.resolution
    assert "phantom" not in _resolve(["bench", "db", "--db", "somewhere"])[2]


def test_gpu_bench_paper_mode_is_the_paper_preset():
    _, _, configs = _resolve(["bench", "gpu", "--device", "cuda"])
    assert configs["train"].model == "paper" and configs["train"].resolved_precision() == "bf16"
    assert configs["endpoint.batching on"].limits.max_image_size == 512
    assert configs["model"].resolution == 512


def test_volume_bench_defaults_are_the_issue_s_run():
    """`mrgen bench volume` at its defaults: ≥ 10,000 masks (source slices x target modalities, every source slice of
    its phantom DB), head + ≥ 2 worker nodes, 1 candidate, 2-4 steps, filter none, and a medsam run on a subset."""
    _, settings, configs = _resolve(["bench", "volume"])
    full, resume, join, phantom = (configs[k] for k in ("synthesis.full", "synthesis.resume", "synthesis.join",
                                                        "phantom"))
    assert settings.masks >= 10_000 and settings.workers >= 2 and settings.at < settings.masks
    assert full.max_masks * len(full.target_modalities) == settings.masks
    assert phantom.volumes * phantom.slices_per_volume >= full.max_masks  # phantom-src: a mask on every slice
    assert (full.candidates, full.keep, full.filter.kind, full.output.shard_rows) == (1, 1, "none", settings.shard_rows)
    assert 2 <= full.sampling.steps <= 4 and resume.model_dump() | {"out": None} == full.model_dump() | {"out": None}
    assert join.filter.kind == "medsam" and join.max_masks * len(join.target_modalities) <= settings.medsam_masks


def test_bench_all_resolves_every_benchmark_before_running_any(monkeypatch, capsys):
    """A value the last benchmarks' job configs reject stops `mrgen bench all` before the first benchmark runs."""
    ran: list[str] = []
    for name, bench in bench_cli.BENCHMARKS.items():
        monkeypatch.setitem(bench_cli.BENCHMARKS, name,
                            dataclasses.replace(bench, run=lambda settings, args, name=name: ran.append(name) or {}))
    assert main(["bench", "all", "--set", "synth.sam2_size=100"]) == 1  # SAM2's input size must be a multiple of 16
    said = capsys.readouterr().err
    assert said.startswith("mrgen bench synth: ") and "image_size" in said, said
    assert ran == []
    assert main(["bench", "all"]) == 0 and ran == list(bench_cli.BENCHMARKS)

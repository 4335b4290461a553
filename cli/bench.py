"""`mrgen bench <name>`: benchmarks that print figures and ratios against a baseline measured in the same run.

Each benchmark is one entry of ``BENCHMARKS`` (name → :class:`Benchmark`) and a mapping of the same name in
``BenchConfig`` (jobs/bench/config.py), which holds its defaults; a flag's ``dest`` is the field it overrides.
`mrgen bench all` runs every one with the config's values. Teams add theirs by adding an entry and a mapping.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mrgen.cli.common import add_config_flags, add_settings_flags, load_config, settings_flags


@dataclass(frozen=True)
class Benchmark:
    help: str
    add_inputs: Callable[[argparse.ArgumentParser], None]  # its input flags; its settings' flags come from the mapping
    run: Callable[[Any, argparse.Namespace], dict[str, Any]]  # (its BenchConfig mapping, the flags)
    example: str  # a `--set` key=value of its mapping, for the help


def _no_inputs(parser: argparse.ArgumentParser) -> None:
    pass


def _db_run(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.db_bench import run_db_bench

    return run_db_bench(**settings.model_dump())


def _train_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None,
                        help="MRGen-DB to stream (default: a tiny phantom DB built in a temp dir)")


def _train_run(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.train_bench import run_train_bench

    figures = run_train_bench(db_uri=args.db, steps=settings.steps, batch_size=settings.batch_size)
    print(json.dumps(figures, indent=1))
    return figures


def _serve_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model bundle (default: a random tiny bundle in a temp dir)")


def _serve_run(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.serving.loadgen import benchmark

    return benchmark(model=args.model, clients=settings.clients, duration_s=settings.duration, n=settings.n,
                     steps=settings.steps, max_batch_size=settings.max_batch_size)


def _adaptive_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None,
                        help="phantom MRGen-DB (default: the embedded default, built in a temp dir)")


def _adaptive_run(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.adaptive_bench import run_adaptive_bench

    return run_adaptive_bench(**settings.model_dump(), db=args.db)


BENCHMARKS: dict[str, Benchmark] = {
    "db": Benchmark("MRGen-DB ingest slices/s and Ray Data read slices/s (local, s3://moto) vs. plain pyarrow",
                    _no_inputs, _db_run, "db.volumes=4"),
    "train": Benchmark("training samples/s of Ray Train + DeepSpeed vs. a bare PyTorch loop, and data-wait share",
                       _train_inputs, _train_run, "train.steps=20"),
    "adaptive": Benchmark("generator-seconds per kept sample with the adaptive budget vs. every candidate, embedded "
                          "generator and LiteMedSAM", _adaptive_inputs, _adaptive_run, "adaptive.masks=8"),
    "serve": Benchmark("generation service throughput and p50/p95/p99 latency, batching on vs. off (max batch 1)",
                       _serve_inputs, _serve_run, "serve.clients=4"),
}


def _synth_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None, help="phantom MRGen-DB to use (default: build one in a temp dir)")


def _synth_run(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.synth_bench import run_synth_bench

    return run_synth_bench(**settings.model_dump(), db=args.db)


BENCHMARKS["synth"] = Benchmark("synthesis candidates/s: Ray pipeline vs. bare loop vs. reference algorithm; "
                                "peak memory 1x vs 10x masks", _synth_inputs, _synth_run, "synth.scale=5")


def _elastic_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-out", default=None, help="where training checkpoints go (default: a temp dir; "
                        "an s3:// URI tests object storage)")


def _elastic_run(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.elastic import run_elastic_bench

    return run_elastic_bench(masks=settings.masks, train_steps=settings.train_steps, train_out=args.train_out)


BENCHMARKS["elastic"] = Benchmark("a multi-node Ray cluster on this machine: nodes join and die, the driver dies; "
                                  "masks lost / duplicated and wall time vs. an undisturbed run",
                                  _elastic_inputs, _elastic_run, "elastic.masks=16")


def _gpu_run(settings, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from mrgen.jobs.bench.gpu_bench import run_gpu_bench

    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and not settings.tiny:
        if settings.device == "cpu":
            raise SystemExit("mrgen bench gpu --device cpu: paper scale on the CPU takes hours; add --tiny")
        print("mrgen bench gpu: no CUDA device; running the tiny CPU mode (--tiny)", file=sys.stderr)
    return run_gpu_bench(device=device, tiny=settings.tiny or device == "cpu",
                         sections=tuple(settings.sections) if settings.sections else None,
                         on_section=lambda figures: _write(args.out, figures))


BENCHMARKS["gpu"] = Benchmark("the GPU check: tiny stages' steps/s vs CPU, paper-scale training (bf16, ZeRO-2, "
                              "NCCL), synthesis candidates/s vs the FLOP-bound limit, endpoint req/s and p99",
                              _no_inputs, _gpu_run, "gpu.tiny=true")


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="run benchmarks (figures and ratios vs. a same-run baseline)")
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, bench in BENCHMARKS.items():
        p = sub.add_parser(name, help=bench.help, description=bench.help)
        add_settings_flags(p, _settings_class(name))
        bench.add_inputs(p)
        p.add_argument("--out", default=None, help="also write the figures as JSON to this file")
        add_config_flags(p, example=bench.example, ray_address=False)
        p.set_defaults(func=lambda args, name=name: _run_one(name, args))
    p = sub.add_parser("all", help="run every benchmark with its defaults")
    p.add_argument("--out", default=None, help="also write all figures as JSON to this file")
    add_config_flags(p, example="db.volumes=4", ray_address=False)
    p.set_defaults(func=_run_all)


def bench_config(args: argparse.Namespace, name: str | None = None):
    """The ``bench`` section from --config and --set; with ``name``, that benchmark's flags given override its
    mapping (a flag's dest is its field)."""
    from mrgen.jobs.bench.config import BenchConfig

    return load_config(BenchConfig, args, settings_flags(args, _settings_class(name), f"{name}.") if name else {})


def _settings_class(name: str) -> type:
    from mrgen.jobs.bench.config import BenchConfig

    return BenchConfig.model_fields[name].annotation


def _defaults(bench: Benchmark) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_inputs(parser)
    return parser.parse_args([])


def _write(path: str | None, figures: dict[str, Any]) -> None:
    if path:
        from mrgen.platform.storage import write_text

        write_text(path, json.dumps(figures, indent=1, default=str))


def _run_one(name: str, args: argparse.Namespace) -> int:
    settings = getattr(bench_config(args, name), name)
    _write(args.out, BENCHMARKS[name].run(settings, args))
    return 0


def _run_all(args: argparse.Namespace) -> int:
    config = bench_config(args)
    results = {}
    for name, bench in BENCHMARKS.items():
        print(f"== bench {name}", file=sys.stderr, flush=True)
        results[name] = bench.run(getattr(config, name), _defaults(bench))
    _write(args.out, results)
    return 0

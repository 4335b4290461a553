"""`mrgen bench <name>`: benchmarks that print figures and ratios against a baseline measured in the same run.

Each benchmark is one entry of ``BENCHMARKS`` (name → :class:`Benchmark`) and a mapping of the same name in
``BenchConfig`` (jobs/bench/config.py), which holds its defaults; a flag's ``dest`` is the field it overrides.
`mrgen bench all` runs every one with the config's values. Teams add theirs by adding an entry and a mapping.

A benchmark's ``resolve`` builds every job config it will run with (training, synthesis, service, DB...) from the
same mapping and flags, without running anything: each command resolves before it starts (`mrgen bench all`: every
benchmark before the first), and CI resolves each at the CLI's defaults (tests/jobs/test_bench_defaults.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mrgen.cli.common import EXIT_CONFIG, CliError, add_config_flags, add_settings_flags, load_config, settings_flags
from mrgen.jobs.bench.config import BenchConfig
from mrgen.platform.storage import write_text

# `mrgen bench` is imported whenever a bench command runs, its --help too: a benchmark's run and resolve functions
# import its module (most import torch, Ray or diffusers).


@dataclass(frozen=True)
class Benchmark:
    help: str
    add_inputs: Callable[[argparse.ArgumentParser], None]  # its input flags; its settings' flags come from the mapping
    run: Callable[[Any, argparse.Namespace], dict[str, Any]]  # (its BenchConfig mapping, the flags)
    example: str  # a `--set` key=value of its mapping, for the help
    # (mapping, flags) → the job configs `run` builds, by name, built without running anything; raises as they do
    resolve: Callable[[Any, argparse.Namespace], dict[str, Any]]


def _no_inputs(parser: argparse.ArgumentParser) -> None:
    pass


def _db_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None, help="MRGen-DB at volume to stream, e.g. a `mrgen db phantom --config "
                        "million` (default: the tiny phantom in db.rescans acquisitions, built in a temp dir)")


def _db_run(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.db_bench import run_db_bench

    return run_db_bench(**settings.model_dump(), db=args.db)


def _db_resolve(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.db_bench import db_bench_configs

    return db_bench_configs(settings.resolution, rescans=settings.rescans, db=args.db)


def _train_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None,
                        help="MRGen-DB to stream (default: a tiny phantom DB built in a temp dir)")


def _train_run(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.train_bench import run_train_bench

    figures = run_train_bench(db_uri=args.db, steps=settings.steps, batch_size=settings.batch_size)
    print(json.dumps(figures, indent=1))
    return figures


def _train_resolve(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.train_bench import train_bench_configs

    return train_bench_configs(db_uri=args.db, steps=settings.steps, batch_size=settings.batch_size)


def _serve_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model bundle (default: a random tiny bundle in a temp dir)")


def _serve_options(settings, args: argparse.Namespace) -> dict[str, Any]:
    return dict(model=args.model, clients=settings.clients, duration_s=settings.duration, n=settings.n,
                steps=settings.steps, max_batch_size=settings.max_batch_size, rounds=settings.rounds)


def _serve_run(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.serving.loadgen import benchmark

    return benchmark(**_serve_options(settings, args))


def _serve_resolve(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.serving.loadgen import benchmark_configs

    return benchmark_configs(**_serve_options(settings, args))


def _adaptive_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None,
                        help="phantom MRGen-DB (default: the embedded default, built in a temp dir)")


def _adaptive_run(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.adaptive_bench import run_adaptive_bench

    return run_adaptive_bench(**settings.model_dump(), db=args.db)


def _adaptive_resolve(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.adaptive_bench import adaptive_bench_configs

    return adaptive_bench_configs(**settings.model_dump(), db=args.db)


BENCHMARKS: dict[str, Benchmark] = {
    "db": Benchmark("MRGen-DB ingest slices/s and Ray Data read slices/s (local, s3://moto) vs. plain pyarrow; a DB "
                    "at volume: `db info` seconds, pruning by the index, reader RSS on a subset vs the whole DB",
                    _db_inputs, _db_run, "db.volumes=4", resolve=_db_resolve),
    "train": Benchmark("training samples/s of Ray Train + DeepSpeed vs. a bare PyTorch loop, and data-wait share",
                       _train_inputs, _train_run, "train.steps=20", resolve=_train_resolve),
    "adaptive": Benchmark("generator-seconds per kept sample with the adaptive budget vs. every candidate, embedded "
                          "generator and LiteMedSAM", _adaptive_inputs, _adaptive_run, "adaptive.masks=8",
                          resolve=_adaptive_resolve),
    "serve": Benchmark("generation service throughput and p50/p95/p99 latency, batching on vs. off (max batch 1)",
                       _serve_inputs, _serve_run, "serve.clients=4", resolve=_serve_resolve),
}


def _synth_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None, help="phantom MRGen-DB to use (default: build one in a temp dir)")


def _synth_run(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.synth_bench import run_synth_bench

    return run_synth_bench(**settings.model_dump(), db=args.db)


def _synth_resolve(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.synth_bench import synth_bench_configs

    return synth_bench_configs(settings.candidates, settings.steps, settings.sam2_size, db=args.db)


BENCHMARKS["synth"] = Benchmark("synthesis candidates/s: Ray pipeline vs. bare loop vs. reference algorithm; "
                                "peak memory 1x vs 10x masks", _synth_inputs, _synth_run, "synth.scale=5",
                                resolve=_synth_resolve)


def _elastic_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-out", default=None, help="where training checkpoints go (default: a temp dir; "
                        "an s3:// URI tests object storage)")


def _elastic_run(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.elastic import run_elastic_bench

    return run_elastic_bench(masks=settings.masks, train_steps=settings.train_steps, train_out=args.train_out)


def _elastic_resolve(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.elastic import elastic_bench_configs

    return elastic_bench_configs(masks=settings.masks, train_steps=settings.train_steps)


BENCHMARKS["elastic"] = Benchmark("a multi-node Ray cluster on this machine: nodes join and die, the driver dies; "
                                  "masks lost / duplicated and wall time vs. an undisturbed run",
                                  _elastic_inputs, _elastic_run, "elastic.masks=16", resolve=_elastic_resolve)


def _gpu_mode(settings) -> tuple[str, bool, tuple[str, ...] | None]:
    """(device, tiny, sections) of a run: cuda when torch sees one; on the CPU only the tiny mode."""
    import torch

    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and not settings.tiny and settings.device == "cpu":
        raise CliError("--device cpu: paper scale on the CPU takes hours; add --tiny", EXIT_CONFIG,
                       command="mrgen bench gpu")
    return device, settings.tiny or device == "cpu", tuple(settings.sections) if settings.sections else None


def gpu_endpoint(bundle_uri: str, tiny: bool) -> dict[str, Any]:
    """The GPU check's ``endpoint`` section: `mrgen bench serve`'s load on the section's service (jobs do not reach
    serving: the CLI hands this to :func:`run_gpu_bench`)."""
    from mrgen.jobs.bench.gpu_bench import endpoint_options
    from mrgen.serving.loadgen import benchmark

    return benchmark(model=bundle_uri, **endpoint_options(tiny))


def _gpu_run(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.gpu_bench import run_gpu_bench

    device, tiny, sections = _gpu_mode(settings)
    if tiny and not settings.tiny:
        print("mrgen bench gpu: no CUDA device; running the tiny CPU mode (--tiny)", file=sys.stderr)
    return run_gpu_bench(device=device, tiny=tiny, sections=sections, endpoint=gpu_endpoint,
                         on_section=lambda figures: _write(args.out, figures), autotune=settings.autotune)


def _gpu_resolve(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.gpu_bench import endpoint_options, gpu_bench_configs
    from mrgen.serving.loadgen import benchmark_configs

    device, tiny, sections = _gpu_mode(settings)
    configs = gpu_bench_configs(device, tiny, sections, autotune=settings.autotune)
    if sections is None or "endpoint" in sections:
        configs.update({f"endpoint.{label}": config
                        for label, config in benchmark_configs(**endpoint_options(tiny)).items()})
    return configs


BENCHMARKS["gpu"] = Benchmark("the GPU check: tiny stages' steps/s vs CPU, paper-scale training (bf16, ZeRO-2, "
                              "NCCL), synthesis candidates/s vs the FLOP-bound limit, endpoint req/s and p99, the "
                              "generator's efficiency one setting at a time and beside SAM2 on one GPU",
                              _no_inputs, _gpu_run, "gpu.tiny=true", resolve=_gpu_resolve)


def _cost_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None, help="phantom MRGen-DB (default: the embedded default's, built in "
                        "the work folder)")
    parser.add_argument("--work", default=None, help="folder of the runs (default: a temp dir); a rerun resumes "
                        "there")


def _cost_run(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.cost_bench import run_cost_bench

    return run_cost_bench(**settings.model_dump(), db=args.db, out=args.work)


def _cost_resolve(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.cost_bench import cost_bench_configs

    return cost_bench_configs(**settings.model_dump(), db=args.db)


BENCHMARKS["cost"] = Benchmark("generator and filter TFLOP and seconds per kept slice of each synthesis recipe "
                               "(R0 the release's, R1 the default, R1-early, R2 the cheap one) and the Dice of "
                               "segmenters on equal counts of their slices",
                               _cost_inputs, _cost_run, "cost.masks=24", resolve=_cost_resolve)


def _volume_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work", default=None, help="folder of the runs, their logs and the source DB (default: a "
                        "temp dir, removed after)")


def _volume_run(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.volume_bench import run_volume_bench

    return run_volume_bench(**settings.model_dump(), work=args.work)


def _volume_resolve(settings, args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.volume_bench import volume_bench_configs

    return volume_bench_configs(**settings.model_dump())


BENCHMARKS["volume"] = Benchmark("synthesis at volume on a local multi-node cluster: masks/s at 1,000 vs 10,000 "
                                 "masks, driver and node RSS, files per 1,000 masks, index size, commit seconds; "
                                 "the driver killed at half and rerun; pools onto a joining node",
                                 _volume_inputs, _volume_run, "volume.masks=2000", resolve=_volume_resolve)


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
    return load_config(BenchConfig, args, settings_flags(args, _settings_class(name), f"{name}.") if name else {})


def _settings_class(name: str) -> type:
    return BenchConfig.model_fields[name].annotation


def _defaults(bench: Benchmark) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_inputs(parser)
    return parser.parse_args([])


def _write(path: str | None, figures: dict[str, Any]) -> None:
    if path:
        write_text(path, json.dumps(figures, indent=1, default=str))


def resolve(name: str, settings, args: argparse.Namespace) -> dict[str, Any]:
    """Benchmark ``name``'s job configs at ``settings`` (its mapping) and ``args`` (its flags), nothing run; a value
    they reject exits naming the benchmark."""
    try:
        return BENCHMARKS[name].resolve(settings, args)
    except ValueError as exc:  # ConfigError, a refused request (LoadError), a pydantic error
        raise CliError(str(exc), EXIT_CONFIG, command=f"mrgen bench {name}") from None


def _run_one(name: str, args: argparse.Namespace) -> int:
    settings = getattr(bench_config(args, name), name)
    resolve(name, settings, args)
    _write(args.out, BENCHMARKS[name].run(settings, args))
    return 0


def _run_all(args: argparse.Namespace) -> int:
    config = bench_config(args)
    for name, bench in BENCHMARKS.items():  # every benchmark's settings before the first one's minutes
        resolve(name, getattr(config, name), _defaults(bench))
    results = {}
    for name, bench in BENCHMARKS.items():
        print(f"== bench {name}", file=sys.stderr, flush=True)
        results[name] = bench.run(getattr(config, name), _defaults(bench))
    _write(args.out, results)
    return 0

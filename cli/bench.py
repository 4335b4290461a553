"""`mrgen bench <name>`: benchmarks that print figures and ratios against a baseline measured in the same run.

Each benchmark is one entry of ``BENCHMARKS`` (name → :class:`Benchmark`); `mrgen bench all` runs every one with
its defaults. Teams add theirs by adding an entry.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mrgen.models.sampling import SAMPLING_PRESETS


@dataclass(frozen=True)
class Benchmark:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict[str, Any]]


def _db_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--volumes", type=int, default=8, help="NIfTI volumes to generate and ingest")
    parser.add_argument("--slices", type=int, default=64, help="slices per volume")
    parser.add_argument("--size", type=int, default=128, help="source slice size in pixels")
    parser.add_argument("--resolution", type=int, default=64, help="DB resolution")
    parser.add_argument("--batch-size", type=int, default=64, help="read batch size")
    parser.add_argument("--repeats", type=int, default=2, help="reads per source; the best is reported")


def _db_run(args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.db_bench import run_db_bench

    return run_db_bench(volumes=args.volumes, slices=args.slices, size=args.size, resolution=args.resolution,
                        batch_size=args.batch_size, repeats=args.repeats)


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None,
                        help="MRGen-DB to stream (default: a tiny phantom DB built in a temp dir)")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of each loop")
    parser.add_argument("--batch-size", type=int, default=8, help="micro-batch")


def _train_run(args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.train_bench import run_train_bench

    figures = run_train_bench(db_uri=args.db, steps=args.steps, batch_size=args.batch_size)
    print(json.dumps(figures, indent=1))
    return figures


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model bundle (default: a random tiny bundle in a temp dir)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent closed-loop clients (loopback only)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per run")
    parser.add_argument("--n", type=int, default=1, help="candidates per request")
    parser.add_argument("--steps", type=int, default=SAMPLING_PRESETS["default"].steps,
                        help="sampling steps per request (default: the demo generator's; at 4 the proxy and ingress, "
                             "not sampling, dominate a request)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="max batch of the 'batching on' run")


def _serve_run(args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.serving.loadgen import benchmark

    return benchmark(model=args.model, clients=args.clients, duration_s=args.duration, n=args.n, steps=args.steps,
                     max_batch_size=args.max_batch_size)


def _adaptive_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--masks", type=int, default=16, help="source masks (spread over the DB's training slices)")
    parser.add_argument("--candidates", type=int, default=8, help="candidates per mask without the adaptive budget")
    parser.add_argument("--keep", type=int, default=2, help="candidates kept per mask")
    parser.add_argument("--wave-size", type=int, default=2, help="candidates per wave (adaptive)")
    parser.add_argument("--db", default=None,
                        help="phantom MRGen-DB (default: the embedded default, built in a temp dir)")


def _adaptive_run(args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.adaptive_bench import run_adaptive_bench

    return run_adaptive_bench(masks=args.masks, candidates=args.candidates, keep=args.keep, wave_size=args.wave_size,
                              db=args.db)


BENCHMARKS: dict[str, Benchmark] = {
    "db": Benchmark("MRGen-DB ingest slices/s and Ray Data read slices/s (local, s3://moto) vs. plain pyarrow",
                    _db_arguments, _db_run),
    "train": Benchmark("training samples/s of Ray Train + DeepSpeed vs. a bare PyTorch loop, and data-wait share",
                       _train_arguments, _train_run),
    "adaptive": Benchmark("generator-seconds per kept sample with the adaptive budget vs. every candidate, embedded "
                          "generator and LiteMedSAM", _adaptive_arguments, _adaptive_run),
    "serve": Benchmark("generation service throughput and p50/p95/p99 latency, batching on vs. off (max batch 1)",
                       _serve_arguments, _serve_run),
}


def _synth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--masks", type=int, default=2, help="masks of the 1x run (the 10x run uses scale times more)")
    parser.add_argument("--scale", type=int, default=10, help="mask multiplier of the large run")
    parser.add_argument("--candidates", type=int, default=4, help="candidates per mask")
    parser.add_argument("--steps", type=int, default=SAMPLING_PRESETS["tiny"].steps, help="sampling steps")
    parser.add_argument("--sam2-size", type=int, default=256, help="SAM2 image size")
    parser.add_argument("--db", default=None, help="phantom MRGen-DB to use (default: build one in a temp dir)")


def _synth_run(args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.synth_bench import run_synth_bench

    return run_synth_bench(masks=args.masks, scale=args.scale, candidates=args.candidates, steps=args.steps,
                           sam2_size=args.sam2_size, db=args.db)


BENCHMARKS["synth"] = Benchmark("synthesis candidates/s: Ray pipeline vs. bare loop vs. reference algorithm; "
                                "peak memory 1x vs 10x masks", _synth_arguments, _synth_run)


def _elastic_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--masks", type=int, default=32, help="phantom masks per target modality (2 modalities)")
    parser.add_argument("--train-steps", type=int, default=60, help="steps of the training runs (0: no training)")
    parser.add_argument("--train-out", default=None, help="where training checkpoints go (default: a temp dir; "
                        "an s3:// URI tests object storage)")


def _elastic_run(args: argparse.Namespace) -> dict[str, Any]:
    from mrgen.jobs.bench.elastic import run_elastic_bench

    return run_elastic_bench(masks=args.masks, train_steps=args.train_steps, train_out=args.train_out)


BENCHMARKS["elastic"] = Benchmark("a multi-node Ray cluster on this machine: nodes join and die, the driver dies; "
                                  "masks lost / duplicated and wall time vs. an undisturbed run",
                                  _elastic_arguments, _elastic_run)


def _gpu_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, choices=("cuda", "cpu"),
                        help="where to run (default: cuda when torch sees one, else cpu)")
    parser.add_argument("--tiny", action="store_true", help="tiny preset, a few steps per section (CI's mode; "
                        "the default on the CPU, where paper scale takes hours)")
    parser.add_argument("--sections", nargs="+", default=None, metavar="NAME",
                        choices=("tiny_stages", "paper_training", "synthesis", "endpoint"),
                        help="run only these sections (default: all four)")


def _gpu_run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from mrgen.jobs.bench.gpu_bench import run_gpu_bench

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and not args.tiny:
        if args.device == "cpu":
            raise SystemExit("mrgen bench gpu --device cpu: paper scale on the CPU takes hours; add --tiny")
        print("mrgen bench gpu: no CUDA device; running the tiny CPU mode (--tiny)", file=sys.stderr)
    return run_gpu_bench(device=device, tiny=args.tiny or device == "cpu",
                         sections=tuple(args.sections) if args.sections else None)


BENCHMARKS["gpu"] = Benchmark("the GPU check: tiny stages' steps/s vs CPU, paper-scale training (bf16, ZeRO-2, "
                              "NCCL), synthesis candidates/s vs the FLOP-bound limit, endpoint req/s and p99",
                              _gpu_arguments, _gpu_run)


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="run benchmarks (figures and ratios vs. a same-run baseline)")
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, bench in BENCHMARKS.items():
        p = sub.add_parser(name, help=bench.help, description=bench.help)
        bench.add_arguments(p)
        p.add_argument("--out", default=None, help="also write the figures as JSON to this file")
        p.set_defaults(func=lambda args, bench=bench: _run_one(bench, args))
    p = sub.add_parser("all", help="run every benchmark with its defaults")
    p.add_argument("--out", default=None, help="also write all figures as JSON to this file")
    p.set_defaults(func=_run_all)


def _defaults(bench: Benchmark) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args([])


def _write(path: str | None, figures: dict[str, Any]) -> None:
    if path:
        from mrgen.platform.storage import write_text

        write_text(path, json.dumps(figures, indent=1, default=str))


def _run_one(bench: Benchmark, args: argparse.Namespace) -> int:
    _write(args.out, bench.run(args))
    return 0


def _run_all(args: argparse.Namespace) -> int:
    results = {}
    for name, bench in BENCHMARKS.items():
        print(f"== bench {name}", file=sys.stderr, flush=True)
        results[name] = bench.run(_defaults(bench))
    _write(args.out, results)
    return 0

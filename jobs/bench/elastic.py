"""Elastic synthesis on a multi-node Ray cluster on this machine, the way Ray's own tests build one
(``ray.cluster_utils.Cluster``: a head and worker raylets, each with its own CPUs and object store).

Scenarios, each compared with an undisturbed run of the same settings and seed:

* a node joins mid-run: the generator and filter actor pools grow onto it (seconds until each pool's first actor
  there is alive);
* a node dies mid-run: the worker node holding generator actors is killed (not drained) while masks are in flight;
* the driver dies: `mrgen synthesize` runs as a subprocess, is SIGKILLed mid-run, and the same command is rerun.

Figures of each (:func:`outcome`): masks lost, masks duplicated, whether the kept candidates are bit-identical to the
undisturbed run's, files left half-written, wall seconds.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray._common.utils import get_ray_address_file
from ray.cluster_utils import Cluster

from mrgen.datasets.phantom import TARGET_MODALITY, PhantomConfig, build_phantom_db
from mrgen.datasets.store import is_part_name, load_index, read_table
from mrgen.jobs.bench.synth_bench import Sampler
from mrgen.jobs.synthesis.config import SynthesisConfig
from mrgen.jobs.synthesis.run import load_report, run_synthesis
from mrgen.jobs.synthesis.stages.writer import AUDIT_DIR, audit_parts, finished_masks
from mrgen.models.bundle import build_random_bundle
from mrgen.platform import storage
from mrgen.platform.cluster import RayConfig, init_ray
from mrgen.platform.config import ConfigBase
# elastic_train imports this module's cluster helpers: it is imported where the training scenarios run

MB = 2**20
GENERATOR, FILTER = "MapWorker(MapBatches(GeneratorUDF))", "MapWorker(MapBatches(FilterUDF))"
# The head's 1 CPU holds one generator (0.5 CPU) and one filter actor (0.25) beside a light task (0.25); a worker
# node (2 CPUs) holds the pools' other actors.
HEAD_CPUS, NODE_CPUS = 1, 2
GENERATOR_CPUS, FILTER_CPUS = 0.5, 0.25
# Each node offers one slot per pool (custom resources, as node types do), so a pool's second actor can only run
# on a second node: on the head's CPU alone it would also fit whenever the light task is idle.
SLOTS = {"generator_slot": 1, "filter_slot": 1}
# A killed node is declared dead after ~8 s rather than Ray's default ~15-65 s (a check every 3 s, 5 failed, each
# timing out after 10 s): a dead raylet refuses each check at once, so its actors restart and its tasks retry
# sooner, while a live raylet on a loaded machine still has 5 s to answer each check.
HEALTH_CHECK = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
                "health_check_timeout_ms": 5000, "health_check_failure_threshold": 8}


class LocalCluster:
    """A head raylet (and worker raylets added later) on this machine; this process's driver joins it."""

    def __init__(self, head_cpus: int = HEAD_CPUS, object_store_mb: int = 200):
        if ray.is_initialized():
            raise RuntimeError("LocalCluster: this process is already connected to Ray; ray.shutdown() first")
        self._store = object_store_mb * MB
        with _address_file_kept():
            self.cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": head_cpus, "resources": dict(SLOTS), "object_store_memory": self._store,
                "include_dashboard": False,
                "_system_config": HEALTH_CHECK})
        init_ray(RayConfig(address=self.address, no_progress_timeout_s=300), log_to_driver=False)

    @property
    def address(self) -> str:
        return self.cluster.address

    def add(self, cpus: int = NODE_CPUS):
        """A new worker node (call from the main thread: a raylet's start installs signal handlers)."""
        node = self.cluster.add_node(num_cpus=cpus, resources=dict(SLOTS), object_store_memory=self._store)
        self.cluster.wait_for_nodes()
        return node

    def kill(self, node) -> None:
        """The node's raylet, object store and workers killed at once, as when a spot node vanishes."""
        self.cluster.remove_node(node, allow_graceful=False)

    def workers(self, n: int, cpus: int = NODE_CPUS) -> list:
        """Exactly ``n`` worker nodes: extra ones drained and removed, missing ones added."""
        nodes = list(self.cluster.worker_nodes)
        for node in nodes[n:]:
            self.cluster.remove_node(node)
        return nodes[:n] + [self.add(cpus) for _ in range(n - len(nodes))]

    def close(self) -> None:
        ray.shutdown()
        with _address_file_kept():  # its shutdown deletes the file, whoever wrote it
            self.cluster.shutdown()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def _address_file_kept():
    """Keep /tmp/ray/ray_current_cluster as it was: ``Cluster`` writes its head's address there, and every
    ``ray.init()`` without an address on this machine (other jobs, other sessions' tests) would then join this
    cluster instead of starting its own."""
    path = get_ray_address_file(None)
    before = open(path).read() if os.path.exists(path) else None
    try:
        yield
    finally:
        if before is None:
            if os.path.exists(path):
                os.remove(path)
        else:
            with open(path, "w") as f:
                f.write(before)


def placed_actors() -> list[tuple[str, str, str]]:
    """(class name, node id, state) of every actor placed on a node (from the GCS actor table: no dashboard needed);
    ``PENDING_CREATION`` with a worker's port: placed, its constructor (model load) running."""
    return [(a["ActorClassName"], a["Address"]["NodeID"], a["State"]) for a in ray._private.state.actors().values()
            if (a.get("Address") or {}).get("Port")]


def actor_nodes() -> dict[str, set[str]]:
    """Live actors' class name → ids of the nodes they run on."""
    out: dict[str, set[str]] = {}
    for name, node, state in placed_actors():
        if state == "ALIVE":
            out.setdefault(name, set()).add(node)
    return out


class ActorWatch(Sampler):
    """While the context is open (sampled every 0.5 s): the most actors of each class seen alive on each node at
    once, and when each class was first placed on a node and first alive there (``time.monotonic()``)."""

    interval_s = 0.5

    def __init__(self):
        self.most: dict[str, dict[str, int]] = {}  # class → node → most alive at once
        self.first: dict[str, dict[tuple[str, str], float]] = {"placed": {}, "alive": {}}  # (class, node) → time

    def sample(self) -> None:
        now = time.monotonic()
        alive: dict[tuple[str, str], int] = {}
        for name, node, state in placed_actors():
            if state in ("PENDING_CREATION", "ALIVE"):
                self.first["placed"].setdefault((name, node), now)
            if state == "ALIVE":
                alive[name, node] = alive.get((name, node), 0) + 1
                self.first["alive"].setdefault((name, node), now)
        for (name, node), n in alive.items():
            most = self.most.setdefault(name, {})
            most[node] = max(most.get(node, 0), n)

    @property
    def seen(self) -> dict[str, set[str]]:
        """Class → every node it was seen alive on."""
        return {name: set(nodes) for name, nodes in self.most.items()}

    def per_node(self, labels: dict[str, str]) -> dict[str, dict[str, int]]:
        """Pool → node label → the most of its actors seen alive there at once."""
        return {pool: {labels.get(node, node[:8]): n for node, n in self.most.get(cls, {}).items()}
                for pool, cls in POOLS}


class Background:
    """``fn()`` in a thread (the main thread stays free to add and kill nodes); :meth:`result` joins it."""

    def __init__(self, fn: Callable[[], Any]):
        self._out: dict[str, Any] = {}

        def run() -> None:
            try:
                self._out["value"] = fn()
            except BaseException as exc:  # re-raised in result()
                self._out["error"] = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> Any:
        self._thread.join()
        if "error" in self._out:
            raise self._out["error"]
        return self._out["value"]


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(poll_s)


def synth_settings(bundle: str, db: str, out: str, masks: int = 32) -> list[str]:
    """Overrides of the tiny preset for every scenario: 2 modalities × ``masks`` phantom masks, random SAM2 at 256 in
    float32 (its first bfloat16 calls on a new node took ~80 s here, past the job's end), thresholds 0 (an untrained
    SAM2 passes nothing else), autoscaling pools of 1-2 actors, one of each per node."""
    return [f"model={bundle}", f"source={db}", f"out={out}", f"target_modalities=['{TARGET_MODALITY}','T1 in-phase']",
            "source_datasets=['phantom-src']", f"max_masks={masks}", "candidates=3", "keep=1", "sampling.steps=10",
            "filter.scorer.random=true", "filter.scorer.image_size=256", "filter.scorer.precision=float32",
            "filter.thresholds.organ_iou=0",
            "filter.thresholds.organ_conf=0", "filter.thresholds.mean_iou=0", "filter.thresholds.mean_conf=0",
            "output.shard_rows=4", "contact_sheet_masks=0",
            f"generator.num_cpus={GENERATOR_CPUS}", f"filter_stage.num_cpus={FILTER_CPUS}", "generator.pool_max=2",
            "filter_stage.pool_max=2", "generator.resources.generator_slot=1", "filter_stage.resources.filter_slot=1"]


def out_of(settings: list[str]) -> str:
    return next(s.split("=", 1)[1] for s in settings if s.startswith("out="))


def synthesize(settings: list[str]) -> tuple[dict[str, Any], float]:
    """(report, wall seconds) of `mrgen synthesize` in this process."""
    start = time.perf_counter()
    report = run_synthesis(SynthesisConfig.load("tiny", settings))
    return report, time.perf_counter() - start


def _finished(out: str) -> int:
    return len(finished_masks(out))


def undisturbed(cluster: LocalCluster, settings: list[str], workers: int) -> dict[str, Any]:
    cluster.workers(workers)
    report, seconds = synthesize(settings)
    return {"workers": workers, "wall_s": round(seconds, 1), "masks": report["masks_finished"]}


POOLS = (("generator", GENERATOR), ("filter", FILTER))


def node_joins(cluster: LocalCluster, settings: list[str], then_dies: bool = False) -> dict[str, Any]:
    """Head only; a worker node is added once the first generator and filter actors are up. ``then_dies``: the
    new node is killed as soon as both pools have grown onto it (one run for both scenarios, as CI does)."""
    cluster.workers(0)
    out = out_of(settings)
    with ActorWatch() as watch:
        job = Background(lambda: synthesize(settings))
        wait_until(lambda: {GENERATOR, FILTER} <= set(watch.seen) or job.done(), 600, "the first actors")
        joined_at = time.monotonic()
        node = cluster.add()
        done_at_join = _finished(out)

        def grew() -> dict[str, bool]:
            return {name: node.node_id in watch.seen.get(cls, set()) for name, cls in POOLS}

        def after_s(event: str) -> dict[str, float | None]:
            """Seconds from the node's start until each pool's first actor was placed there / alive (model loaded)."""
            first = watch.first[event]
            return {name: round(first[cls, node.node_id] - joined_at, 1) if (cls, node.node_id) in first else None
                    for name, cls in POOLS}

        def generator_there_now() -> bool:
            # the watch remembers every node a pool reached; the kill needs a generator alive there at that moment
            # (a pool can shrink off the node again between two samples)
            return node.node_id in actor_nodes().get(GENERATOR, set())

        killed: dict[str, Any] = {}
        if then_dies:
            wait_until(lambda: job.done() or (all(grew().values()) and generator_there_now()), 600,
                       "both pools on the new node")
            killed = {"masks_done_at_kill": _finished(out), "generators_on_killed_node": int(generator_there_now())}
            cluster.kill(node)
        _, seconds = job.result()
    return {"wall_s": round(seconds, 1), "masks_done_at_join": done_at_join, "pools_grew_onto_new_node": grew(),
            "pools_placed_on_new_node_after_s": after_s("placed"), "pools_alive_on_new_node_after_s": after_s("alive"),
            **killed}


def node_dies(cluster: LocalCluster, settings: list[str], after_masks: int = 4) -> dict[str, Any]:
    """Head + one worker node, killed once it holds a generator actor and ``after_masks`` masks are finished."""
    (node,) = cluster.workers(1)
    out = out_of(settings)
    job = Background(lambda: synthesize(settings))
    wait_until(lambda: job.done() or (node.node_id in actor_nodes().get(GENERATOR, set())
                                      and _finished(out) >= after_masks), 600, "a generator actor on the worker")
    done_at_kill = _finished(out)
    on_node = len(actor_nodes().get(GENERATOR, set()) & {node.node_id})
    cluster.kill(node)
    _, seconds = job.result()
    return {"wall_s": round(seconds, 1), "masks_done_at_kill": done_at_kill, "generators_on_killed_node": on_node}


def synthesize_command(cluster: LocalCluster, settings: list[str]) -> list[str]:
    """`mrgen synthesize` (tiny preset, ``--set`` each of ``settings``) as a driver joining ``cluster``; ``--verbose``:
    Ray's output stays on the driver's own output, which the caller keeps (a log of its own, or nowhere)."""
    return [sys.executable, "-m", "mrgen.cli", "synthesize", "--config", "tiny", "--ray-address", cluster.address,
            "--verbose", *[a for s in settings for a in ("--set", s)]]


def driver_dies(cluster: LocalCluster, settings: list[str], after_masks: int = 4) -> dict[str, Any]:
    """`mrgen synthesize` as a subprocess joined to the cluster, SIGKILLed mid-run; then the same command again."""
    cluster.workers(1)
    out = out_of(settings)
    command = synthesize_command(cluster, settings)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    start = time.perf_counter()
    first = subprocess.Popen(command, **quiet)
    try:
        wait_until(lambda: first.poll() is not None or _finished(out) >= after_masks, 600, "masks of the first run")
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    killed_after = time.perf_counter() - start
    time.sleep(2.0)  # the job's workers die with their driver
    before = {p["file"]: storage.read_bytes(storage.join(out, p["file"])) for p in audit_parts(out)}
    start = time.perf_counter()
    rerun = subprocess.run(command, timeout=900, **quiet)
    rerun_s = time.perf_counter() - start
    if rerun.returncode:
        raise RuntimeError(f"the rerun of `mrgen synthesize` exited with {rerun.returncode}")
    report = load_report(out)
    kept = sum(storage.exists(storage.join(out, f)) and storage.read_bytes(storage.join(out, f)) == data
               for f, data in before.items())
    return {"wall_s": round(killed_after + rerun_s, 1), "killed_after_s": round(killed_after, 1),
            "driver_killed": first.returncode == -signal.SIGKILL,
            "masks_done_at_kill": sum(len(p["masks"]) for p in audit_parts(out) if p["file"] in before),
            "rerun": {"already_done": report["already_done"], "masks_done": report["this_run"].get("masks_done", 0)},
            "audit_parts_at_kill": len(before), "audit_parts_untouched": kept}


def leftovers(out: str) -> list[str]:
    """Files of ``out`` that a cut-short write left: anything but finished parts, and shards the index omits."""
    listed = {s.file for s in load_index(out).shards}
    found = []
    for folder in ("v1", AUDIT_DIR):
        for name in storage.listdir(storage.join(out, folder)):
            path = f"{folder}/{name}"
            if not is_part_name(name) or (folder == "v1" and path not in listed):
                found.append(path)
    return found


def outcome(out: str, reference: str) -> dict[str, Any]:
    """Masks lost and duplicated against the undisturbed run ``reference``, and whether the kept candidates match."""
    expected = {k for p in audit_parts(reference) for k in p["masks"]}
    keys = [k for p in audit_parts(out) for k in p["masks"]]
    columns = ["slice_id", "image", "seed"]
    rows = read_table(out, columns=columns).to_pylist()
    mine = {r["slice_id"]: r for r in rows}
    ref = {r["slice_id"]: r for r in read_table(reference, columns=columns).to_pylist()}
    return {"masks": len(expected), "masks_lost": len(expected - set(keys)),
            "masks_duplicated": len(keys) - len(set(keys)) + len(rows) - len(mine), "kept_candidates": len(rows),
            "kept_bit_identical": mine.keys() == ref.keys() and all(mine[k] == ref[k] for k in ref),
            "half_written": leftovers(out)}


def attempt(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A scenario's figures, or its error (the other scenarios still run)."""
    try:
        return fn()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:1000]}


SCENARIOS = ("undisturbed", "node_joins", "node_dies", "driver_dies")
TRAIN_CHECKPOINT_EVERY = 10


def elastic_bench_configs(masks: int = 32, train_steps: int = 60, work: str = "<temp dir>") -> dict[str, ConfigBase]:
    """What :func:`run_elastic_bench` builds, by name, without building anything: ``phantom``, one synthesis run per
    scenario (``synthesis.<scenario>``, the settings `mrgen synthesize` also gets as flags in ``driver_dies``) and,
    with ``train_steps``, ``train`` (both training scenarios'); ``work`` is the run's temporary folder."""
    from mrgen.jobs.bench.elastic_train import train_config

    configs: dict[str, ConfigBase] = {"phantom": PhantomConfig.load("tiny")}
    for name in SCENARIOS:
        configs[f"synthesis.{name}"] = SynthesisConfig.load("tiny", synth_settings(f"{work}/bundle", f"{work}/db",
                                                                                   f"{work}/{name}", masks))
    if train_steps:
        configs["train"] = train_config(train_steps, TRAIN_CHECKPOINT_EVERY)
    return configs


def run_elastic_bench(masks: int = 32, train_steps: int = 60, train_out: str | None = None) -> dict[str, Any]:
    """Every scenario on a random tiny bundle and the tiny phantom DB in a temporary folder; prints the figures.
    ``train_out``: where the training run checkpoints (default: the temporary folder; an ``s3://`` URI for object
    storage); ``train_steps=0`` leaves training out."""
    from mrgen.jobs.bench.elastic_train import TRAIN_HEAD_CPUS, training_node_dies, training_undisturbed

    work = Path(tempfile.mkdtemp(prefix="mrgen-elastic-bench-"))
    configs = elastic_bench_configs(masks, train_steps, work=str(work))  # a bad setting fails before Ray starts
    db, bundle = str(work / "db"), str(work / "bundle")
    build_phantom_db(db, configs["phantom"], use_ray=False)
    build_random_bundle("tiny").save(bundle)
    runs = {name: synth_settings(bundle, db, str(work / name), masks) for name in SCENARIOS}
    with LocalCluster() as cluster:
        base = undisturbed(cluster, runs["undisturbed"], workers=1)
        scenarios = {name: attempt(lambda fn=fn, name=name: fn(cluster, runs[name])) for name, fn in
                     (("node_joins", node_joins), ("node_dies", node_dies), ("driver_dies", driver_dies))}
    reference = out_of(runs["undisturbed"])
    figures: dict[str, Any] = {"synthesis": {"undisturbed": base}}
    for name, seen in scenarios.items():
        figures["synthesis"][name] = seen if "error" in seen else {
            **outcome(out_of(runs[name]), reference), **seen,
            "wall_vs_undisturbed": round(seen["wall_s"] / base["wall_s"], 2)}
    if train_steps:
        root = train_out or str(work / "train")
        with LocalCluster(head_cpus=TRAIN_HEAD_CPUS) as cluster:
            calm = training_undisturbed(cluster, db, storage.join(root, "undisturbed"), train_steps,
                                        TRAIN_CHECKPOINT_EVERY)
            hit = training_node_dies(cluster, db, storage.join(root, "node_dies"), train_steps,
                                     TRAIN_CHECKPOINT_EVERY)
        figures["training"] = {"undisturbed": calm, "node_dies": {
            **hit, "wall_vs_undisturbed": round(hit["wall_s"] / calm["wall_s"], 2)}}
    shutil.rmtree(work, ignore_errors=True)
    figures["note"] = ("one machine's cores shared by every node: wall ratios show the cost of lost work and restarts, "
                       "not of lost capacity; driver_dies includes two Python start-ups of `mrgen synthesize`")
    print(json.dumps(figures, indent=1))
    return figures

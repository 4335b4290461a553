"""`mrgen demo --out DIR`: the main job on the embedded default, as a list of named steps.

Today: build the phantom MRGen-DB into DIR/db, print its summary and draw DIR/db_sheet.png. Later steps
(train, synthesise, evaluate) append to ``STEPS``; each takes the shared ``DemoContext`` and may add to it.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mrgen.platform import storage


@dataclass
class DemoContext:
    out: str
    quick: bool
    ray_address: str | None = None
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def db_uri(self) -> str:
        return storage.join(self.out, "db")


def build_db(ctx: DemoContext) -> None:
    from mrgen.cli.db import summarize
    from mrgen.datasets.contact_sheet import contact_sheet, items_from_rows
    from mrgen.datasets.phantom import PhantomConfig, build_phantom_db
    from mrgen.datasets.store import read_table

    config = PhantomConfig.load("tiny" if ctx.quick else "default")
    index = build_phantom_db(ctx.db_uri, config)
    print(summarize(index), flush=True)
    table = read_table(ctx.db_uri, has_mask=True).sort_by("slice_id")
    rows = [r for r in table.to_pylist() if r["organs"]]
    picks = rows[:: max(1, len(rows) // 16)][:16]
    sheet = storage.join(ctx.out, "db_sheet.png")
    contact_sheet(items_from_rows(picks), sheet, title=f"{ctx.db_uri}: annotated slices")
    ctx.results["db"] = {"uri": ctx.db_uri, "rows": index.rows, "sheet": sheet}
    print(f"contact sheet: {sheet}", flush=True)


STEPS: list[tuple[str, Callable[[DemoContext], None]]] = [("build-db", build_db)]


def experiment_steps() -> list[tuple[str, Callable[[DemoContext], None]]]:
    """The paper's experiment after the DB (``jobs.experiment.run.STEPS``), each skipped when its output exists.

    Its own build-db step runs too: a no-op when the DB already holds the experiment's phantom config.
    """
    from mrgen.jobs.experiment.config import ExperimentConfig
    from mrgen.jobs.experiment.run import STEPS as EXPERIMENT_STEPS
    from mrgen.jobs.experiment.run import Experiment

    def adapt(step):
        def run(ctx: DemoContext) -> None:
            if "experiment" not in ctx.results:
                config = ctx.results.get("experiment_config") or ExperimentConfig.from_preset("quick" if ctx.quick else "default")
                ctx.results["experiment"] = Experiment(out=ctx.out, config=config, ray_address=ctx.ray_address)
            exp = ctx.results["experiment"]
            if step.done(exp):
                print(f"   {step.name}: output exists, skipped", flush=True)
                return
            started = time.monotonic()
            step.run(exp)
            exp.results.setdefault("step_seconds", {})[step.name] = round(time.monotonic() - started, 1)
        return run

    return [(f"experiment:{s.name}", adapt(s)) for s in EXPERIMENT_STEPS]


def run_demo(ctx: DemoContext, steps: list[tuple[str, Callable[[DemoContext], None]]] | None = None) -> DemoContext:
    from mrgen.platform.cluster import RayConfig, init_ray

    init_ray(RayConfig(address=ctx.ray_address))
    for name, step in steps or STEPS:
        start = time.monotonic()
        print(f"== demo step {name}", flush=True)
        step(ctx)
        print(f"== demo step {name} done in {time.monotonic() - start:.1f}s", flush=True)
    return ctx


def cmd_demo(args: argparse.Namespace) -> int:
    from mrgen.jobs.experiment.config import ExperimentConfig
    from mrgen.platform.config import ConfigError

    ctx = DemoContext(out=args.out, quick=args.quick, ray_address=args.ray_address)
    try:
        ctx.results["experiment_config"] = ExperimentConfig.load(args.config or ("quick" if args.quick else "default"),
                                                                 args.overrides)
    except ConfigError as exc:
        raise SystemExit(f"mrgen demo: {exc}") from None
    run_demo(ctx, STEPS + ([] if args.db_only else experiment_steps()))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the main job on the embedded default (phantom DB, ...)",
                              description="Run the whole engine on the embedded phantom: build the DB, print its "
                                          "summary and draw a contact sheet (later: train, synthesise, evaluate).")
    p.add_argument("--out", required=True, help="output folder (path or URI)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds instead of minutes)")
    p.add_argument("--ray-address", default=None, help="join this Ray cluster instead of starting a local one")
    p.add_argument("--config", default=None, help="experiment preset (quick, default, paper) or YAML; default: "
                                                  "quick with --quick, else default")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an experiment key, e.g. --set segment_overrides.epochs=20 (repeatable)")
    p.add_argument("--db-only", action="store_true", help="only build the DB (skip the experiment's steps)")
    p.set_defaults(func=cmd_demo)

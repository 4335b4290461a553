"""A stage = a spec (UDF class, constructor kwargs, map_batches kwargs) apart from the callable that does the work.

The callable (:class:`StageUDF`) loads its model once in ``__init__`` and, for every batch, checks that the
columns it needs are there (naming the stage and the missing keys), runs :meth:`StageUDF.process`, and
rejects outputs that drop or double rows. Batches stay columnar numpy (images as raw bytes columns).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import ray.data


class StageInputError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def batch_rows(batch: dict[str, np.ndarray]) -> int:
    return len(next(iter(batch.values()))) if batch else 0


class StageUDF:
    """Base of every stage callable. Subclasses set ``REQUIRED`` (column → description) and ``process``."""

    NAME: ClassVar[str] = "stage"
    REQUIRED: ClassVar[dict[str, str]] = {}
    ONE_TO_ONE: ClassVar[bool] = True       # process() returns new columns for the same rows
    DROP: ClassVar[tuple[str, ...]] = ()    # columns not passed on (large, no longer needed)

    def required(self) -> dict[str, str]:
        return self.REQUIRED

    def check(self, batch: dict[str, np.ndarray]) -> None:
        missing = [k for k in self.required() if k not in batch]
        if missing:
            wanted = "; ".join(f"{k}: {self.required()[k]}" for k in missing)
            raise StageInputError(f"stage '{self.NAME}': batch lacks column(s) {missing} ({wanted}); "
                                  f"it has {sorted(batch)}")

    def process(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = batch_rows(batch)
        if n == 0:
            return batch
        self.check(batch)
        out = self.process(batch)
        if not self.ONE_TO_ONE:
            return out
        for key, values in out.items():
            if len(values) != n:
                raise RuntimeError(f"stage '{self.NAME}': column '{key}' has {len(values)} rows for {n} input rows "
                                   "(a stage must neither drop nor double rows)")
        merged = {k: v for k, v in batch.items() if k not in self.DROP}
        for key, values in out.items():
            merged[key] = column(values)
        return merged


def optional_text(value: Any) -> str | None:
    """A nullable text cell as it comes out of a batch: Ray Data turns a column of nulls into NaN floats."""
    if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return None
    return str(value)


def column(values: Any) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values
    values = list(values)
    arr = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        arr[i] = v
    if not values:
        return arr
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        return arr.astype(bool)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return arr.astype(np.int64)
    if all(isinstance(v, (float, np.floating)) for v in values):
        return arr.astype(np.float64)
    return arr


def deferred(module: str, name: str, stage: str) -> type:
    """A stand-in for the actor stage ``module.name`` that imports its module in the actor, not in the driver: the
    driver maps stages whose modules load torch and diffusers (seconds on every start) without loading them. Not
    importable by name, the class travels by value (cloudpickle); Ray names the stage's actors after it, as after
    the class it stands for; ``stage``: that class's ``NAME``."""
    def __init__(self, **kwargs: Any) -> None:
        self.udf = getattr(importlib.import_module(module), name)(**kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.udf(batch)

    return type(name, (), {"__init__": __init__, "__call__": __call__, "NAME": stage, "__module__": __name__,
                           "__qualname__": name, "__doc__": f"{module}.{name}, imported in the actor"})


def _run_in_task(batch: dict[str, np.ndarray], udf_cls: type[StageUDF],
                 kwargs: dict[str, Any]) -> dict[str, np.ndarray]:
    return udf_cls(**kwargs)(batch)


@dataclass
class StageSpec:
    """How a stage is mapped onto a dataset: actors (``pool`` = (min, max)) hold a model; tasks do not."""

    udf: type[StageUDF]
    ctor_kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 1
    num_cpus: float = 0.25
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per worker
    pool: tuple[int, int] | None = None
    block_rows: int | None = None  # tasks only: blocks of this many rows out (one batch of the next actor stage)
    gather_blocks: bool = False    # with block_rows: blocks of exactly that many rows, gathered across tasks

    @property
    def name(self) -> str:
        return self.udf.NAME

    def apply(self, ds):
        common: dict[str, Any] = dict(batch_size=self.batch_size, batch_format="numpy", num_cpus=self.num_cpus,
                                      zero_copy_batch=False)
        if self.num_gpus:
            common["num_gpus"] = self.num_gpus
        if self.resources:
            common["resources"] = dict(self.resources)
        if self.pool is not None:
            # A pool starts at its largest size; an actor that does not fit waits for a node (a joining one, or one a
            # cluster autoscaler adds for it) and idle ones are released down to the smallest. Grown on demand, a
            # pool whose actor exceeds Ray Data's per-operator CPU share never grew: the elastic bench's 0.5-CPU
            # generator got 0.06-0.44 CPU of budget on 3 CPUs and stayed off a joining node (issue 34).
            strategy = ray.data.ActorPoolStrategy(min_size=self.pool[0], max_size=self.pool[1],
                                                  initial_size=self.pool[1])
            return ds.map_batches(self.udf, fn_constructor_kwargs=self.ctor_kwargs, compute=strategy, **common)
        ds = ds.map_batches(_run_in_task, fn_kwargs={"udf_cls": self.udf, "kwargs": self.ctor_kwargs}, **common)
        return split_blocks(ds, self.block_rows, common, self.gather_blocks) if self.block_rows else ds


def split_blocks(ds, rows: int, remote_args: dict[str, Any], gather: bool = False):
    """``ds`` with blocks of at most ``rows`` rows, split inside the tasks that made them (``gather``: of exactly
    ``rows`` rows but the last, small blocks gathered across tasks in the object store: Ray Data's strict streaming
    repartition, a separate operator).

    An actor task takes a whole block: blocks of many masks would keep a pool at one busy actor (no reason to grow
    onto a joining node) and make a lost node redo all of their masks. Ray's streaming repartition fuses into the
    upstream map only when their remote args match, and ``Dataset.repartition`` gives it the default 1 CPU, which
    a small node's remaining fraction cannot hold: its remote args are set to the map's (Ray is pinned).
    """
    ds = ds.repartition(target_num_rows_per_block=rows, strict=gather)
    args = {k: remote_args[k] for k in ("num_cpus", "num_gpus", "resources") if k in remote_args}
    object.__setattr__(ds._logical_plan.dag, "ray_remote_args", args)
    return ds

"""MRGen-DB on storage: Parquet shards plus ``index.json``, written last.

Layout of a DB at ``URI``::

    URI/index.json                 the current version: shard list with per-shard counts (written last, atomically)
    URI/v<k>/part-<hash>.parquet   shards of version k (a shard holds whole volumes, or numbered parts of one)

A shard's Parquet footer records the volumes it holds (``mrgen.volumes``), so a rerun of a build knows which
volumes are done even when the previous run died before writing the index. New versions (e.g. after
``annotate-regions``) go to a new ``v<k+1>/`` folder and become visible only when ``index.json`` is replaced.
"""
from __future__ import annotations

import collections
import hashlib
import json
import posixpath
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mrgen.datasets.schema import (INDEX_COLUMNS, SCHEMA_VERSION, Column, SchemaError, arrow_schema, decode_organ_map,
                                   validate_slice_table)
from mrgen.platform import storage
# Ray Data where a DB is streamed: most users of this module (db info, the writers, the workers) never need it

INDEX_FILE = "index.json"


class NotADatabaseError(FileNotFoundError):
    pass


@dataclass
class ShardInfo:
    file: str  # relative to the DB root
    rows: int
    volumes: list[str]
    values: dict[str, dict[str, int]]  # column -> value (as string) -> row count
    bytes: int | None = None  # size of the file (None in indexes written before it was recorded)

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "rows": self.rows, "bytes": self.bytes, "volumes": self.volumes,
                "values": self.values}


@dataclass
class DBIndex:
    version: int = 1
    shards: list[ShardInfo] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def counts(self) -> dict[str, dict[str, int]]:
        totals: dict[str, collections.Counter] = {c: collections.Counter() for c in INDEX_COLUMNS}
        for shard in self.shards:
            for column, values in shard.values.items():
                totals.setdefault(column, collections.Counter()).update(values)
        return {c: dict(sorted(v.items())) for c, v in totals.items()}

    @property
    def bytes(self) -> int | None:
        sizes = [s.bytes for s in self.shards]
        return None if None in sizes else sum(sizes)

    def summary(self) -> str:
        """The counts as text: total, version, size, then one block per indexed column."""
        size = f", {self.bytes / 2**30:.2f} GiB" if self.bytes is not None and self.shards else ""
        lines = [f"MRGen-DB version {self.version}: {self.rows} slices in {len(self.shards)} shards{size}"]
        for column, values in self.counts().items():
            lines.append(f"  {column}:")
            width = max((len(v) for v in values), default=0)
            lines.extend(f"    {value:<{width}}  {count}" for value, count in values.items())
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "version": self.version, "rows": self.rows,
                "counts": self.counts(), "extra_columns": self.extra_columns, "meta": self.meta,
                "shards": [s.to_json() for s in self.shards]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DBIndex:
        if data.get("schema_version") != SCHEMA_VERSION:
            raise SchemaError(f"index has schema_version {data.get('schema_version')}, "
                              f"this code reads {SCHEMA_VERSION}")
        return cls(version=data["version"], shards=[ShardInfo(**s) for s in data["shards"]],
                   extra_columns=data.get("extra_columns", []), meta=data.get("meta", {}))


def _value_key(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def shard_stats(table: pa.Table) -> dict[str, dict[str, int]]:
    stats = {}
    for column in INDEX_COLUMNS:
        stats[column] = dict(collections.Counter(_value_key(v) for v in table.column(column).to_pylist()))
    return stats


def load_index(uri: str) -> DBIndex:
    index_uri = storage.join(uri, INDEX_FILE)
    if not storage.exists(index_uri):
        raise NotADatabaseError(f"{uri}: no {INDEX_FILE}: not an MRGen-DB (build one with `mrgen db build` or `mrgen "
                                "db phantom`)")
    return DBIndex.from_json(json.loads(storage.read_text(index_uri)))


def try_load_index(uri: str) -> DBIndex | None:
    try:
        return load_index(uri)
    except NotADatabaseError:
        return None


def write_index(uri: str, index: DBIndex) -> None:
    storage.write_text(storage.join(uri, INDEX_FILE), json.dumps(index.to_json(), indent=1))


class ShardWriter:
    """Writes slice tables as shards of version ``version`` under ``uri``; :meth:`commit` publishes the index.

    Each shard is written atomically under a name derived from its volumes, so a retried write replaces
    the same object instead of adding a duplicate.
    """

    def __init__(self, uri: str, version: int = 1, extra: tuple[Column, ...] = (), keep: Iterable[ShardInfo] = (),
                 meta: dict[str, Any] | None = None):
        self.uri, self.version, self.extra = uri, version, extra
        self.schema = arrow_schema(extra)
        self.shards: list[ShardInfo] = list(keep)
        self.meta = meta or {}

    def write(self, table: pa.Table, volumes: list[str], key: str | None = None) -> ShardInfo:
        """``key`` names the shard (default: a hash of its volumes; a writer whose shards share volumes names
        them)."""
        table = table.select(list(self.schema.names)).cast(self.schema)
        validate_slice_table(table, where=f"shard of {volumes[:3]}")
        key = key or hashlib.sha1("\n".join(volumes).encode()).hexdigest()[:16]
        rel = f"v{self.version}/{part_name(key)}"
        meta = dict(table.schema.metadata or {})
        meta[b"mrgen.volumes"] = json.dumps(volumes).encode()
        table = table.replace_schema_metadata(meta)
        size = storage.write_parquet(storage.join(self.uri, rel), table, compression="zstd", row_group_size=256)
        info = ShardInfo(file=rel, rows=table.num_rows, volumes=volumes, values=shard_stats(table), bytes=size)
        self.shards = [s for s in self.shards if s.file != rel] + [info]
        return info

    def commit(self) -> DBIndex:
        index = DBIndex(version=self.version, shards=sorted(self.shards, key=lambda s: s.file),
                        extra_columns=[c.name for c in self.extra], meta=self.meta)
        write_index(self.uri, index)
        return index


def shard_groups(sizes: Sequence[tuple[int, int]], max_rows: int, max_bytes: int | None = None) -> list[range]:
    """Consecutive items of (rows, bytes) grouped into shards of at most ``max_rows`` rows and ``max_bytes`` bytes;
    an item over a target is a shard of its own (shards hold whole volumes)."""
    groups, start, rows, size = [], 0, 0, 0
    for i, (n, b) in enumerate(sizes):
        if i > start and (rows + n > max_rows or (max_bytes is not None and size + b > max_bytes)):
            groups.append(range(start, i))
            start, rows, size = i, 0, 0
        rows, size = rows + n, size + b
    if start < len(sizes):
        groups.append(range(start, len(sizes)))
    return groups


def part_name(key: str) -> str:
    """The file name of a shard (or an audit part) keyed ``key``."""
    return f"part-{key}.parquet"


def is_part_name(name: str) -> bool:
    """Whether ``name`` is a finished shard's (or audit part's) file name, not a write's leftover."""
    return name.startswith("part-") and name.endswith(".parquet")


def existing_shards(uri: str, version: int = 1) -> list[ShardInfo]:
    """Shards present under ``v<version>/`` (from their footers), whether or not an index lists them."""
    folder = storage.join(uri, f"v{version}")
    shards = []
    for name in storage.listdir(folder):
        if not is_part_name(name):
            continue
        fs, path = storage.filesystem(storage.join(folder, name))
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            volumes = json.loads((pf.schema_arrow.metadata or {}).get(b"mrgen.volumes", b"[]"))
            table = pf.read(columns=list(INDEX_COLUMNS))
        shards.append(ShardInfo(file=f"v{version}/{name}", rows=table.num_rows, volumes=volumes,
                                values=shard_stats(table), bytes=fs.size(path)))
    return shards


# ---------------------------------------------------------------- reading

def _allowed(wanted: Any) -> set[str]:
    return {_value_key(v) for v in (wanted if isinstance(wanted, (list, tuple, set)) else [wanted])}


def _matches(shard: ShardInfo, filters: dict[str, Any]) -> bool:
    return all(column not in shard.values or _allowed(wanted) & set(shard.values[column])
               for column, wanted in filters.items())


def row_filters(shards: list[ShardInfo], **filters: Any) -> dict[str, Any]:
    """Of ``filters``, those the rows of ``shards`` still need: a column whose values in each of these shards (by the
    index) are all wanted is left out, so that reading shards that match whole filters no row."""
    return {column: wanted for column, wanted in filters.items() if wanted is not None and any(
        column not in s.values or set(s.values[column]) - _allowed(wanted) for s in shards)}


# filterable row by row but not by the index (the index keeps no slice ids): a chosen set of slices
ROW_FILTER_COLUMNS = ("slice_id",)


def select_shards(index: DBIndex, **filters: Any) -> list[ShardInfo]:
    """Shards that may hold rows matching ``filters`` (column → value or list of values), by the index alone."""
    unknown = set(filters) - set(INDEX_COLUMNS) - set(ROW_FILTER_COLUMNS)
    if unknown:
        raise ValueError(f"cannot filter on {sorted(unknown)}: filterable columns are "
                         f"{INDEX_COLUMNS + ROW_FILTER_COLUMNS}")
    return [s for s in index.shards if _matches(s, {k: v for k, v in filters.items() if v is not None})]


def _filter_expression(filters: dict[str, Any], field, is_in: str):
    """AND over columns of (column in values [OR column is null]); ``field`` builds a column reference."""
    expr = None
    for column, wanted in filters.items():
        if wanted is None:
            continue
        values = list(wanted) if isinstance(wanted, (list, tuple, set)) else [wanted]
        non_null = [v for v in values if v is not None]
        term = getattr(field(column), is_in)(non_null) if non_null else None
        if None in values:
            term = field(column).is_null() if term is None else term | field(column).is_null()
        expr = term if expr is None else expr & term
    return expr


def row_filter_expression(**filters: Any):
    """The same filters as a pyarrow compute expression, to drop non-matching rows inside selected shards."""
    return _filter_expression(filters, pc.field, "isin")


def shard_uris(uri: str, shards: list[ShardInfo]) -> list[str]:
    return [storage.join(uri, *s.file.split("/")) for s in shards]


def shard_paths(uri: str, shards: list[ShardInfo]):
    """(pyarrow filesystem, paths on it) of ``shards``: what ``ray.data.read_parquet`` and ``pyarrow.dataset`` take."""
    fs, _ = storage.arrow_filesystem(uri)
    return fs, [storage.arrow_filesystem(u)[1] for u in shard_uris(uri, shards)]


def read_table(uri: str, columns: list[str] | None = None, **filters: Any) -> pa.Table:
    """The matching rows as one in-memory pyarrow table (small DBs, tools and tests; jobs use :func:`read_slices`)."""
    index = load_index(uri)
    shards = select_shards(index, **filters)
    expr = row_filter_expression(**row_filters(shards, **filters))
    tables = []
    for shard_uri in shard_uris(uri, shards):
        fs, path = storage.arrow_filesystem(shard_uri)
        tables.append(pq.read_table(path, filesystem=fs, columns=columns, filters=expr))
    if not tables:
        return arrow_schema().empty_table() if columns is None else arrow_schema().empty_table().select(columns)
    return pa.concat_tables(tables, promote_options="default")


def spread(n: int, count: int) -> np.ndarray:
    """``count`` indices (at most ``n``) evenly spread over ``range(n)``, first and last included: how evenly
    spread slices, masks or sheet rows are picked everywhere (every volume and level, not the first few)."""
    if count <= 0 or n <= 0:
        return np.zeros(0, dtype=int)
    return np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int))


def meta_digest(meta: dict[str, Any]) -> str:
    """sha256 of a DB's index ``meta`` (canonical JSON): for a phantom DB, a digest of the config it was built from."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def db_digest(uri: str) -> str:
    return meta_digest(load_index(uri).meta)


def organ_first_ids(uri: str, **filters: Any) -> dict[str, int]:
    """Each organ name in the organ maps of the matching masked slices → its smallest id there ({} when none)."""
    first_id: dict[str, int] = {}
    filters = {**filters, "has_mask": True}
    for text in set(read_table(uri, ["organ_map"], **filters).column("organ_map").to_pylist()):
        for oid, name in decode_organ_map(text).items():
            first_id[name] = min(oid, first_id.get(name, oid))
    return first_id


def rank_organs(*first_ids: dict[str, int]) -> list[str]:
    """Organ names ordered by their smallest id over every mapping, then name: the label order of segmenters and
    the rank order of a generator's organ vocabulary."""
    merged: dict[str, int] = {}
    for ids in first_ids:
        for name, oid in ids.items():
            merged[name] = min(oid, merged.get(name, oid))
    return sorted(merged, key=lambda n: (merged[n], n))


def iter_rows(uri: str, columns: list[str] | None = None, **filters: Any) -> Iterator[dict[str, Any]]:
    yield from read_table(uri, columns, **filters).to_pylist()


def read_slices(uri: str, columns: list[str] | None = None, override_num_blocks: int | None = None,
                num_cpus: float | None = None, shards: Collection[str] | None = None, **filters: Any):
    """A lazy Ray Dataset of the matching slices (``image``/``mask`` still bytes: see ``schema.decode_batch``).

    Shards are pruned with the index before anything is read (and to the files ``shards`` names, when given); rows
    inside them are filtered by Ray Data where the index says that a shard also holds others.
    """
    import ray.data

    index = load_index(uri)
    only = None if shards is None else set(shards)
    shards = [s for s in select_shards(index, **filters) if only is None or s.file in only]
    if not shards:
        raise ValueError(f"{uri}: no shard matches {filters}; the DB holds {index.counts()}")
    fs, paths = shard_paths(uri, shards)
    # Ray Data 2.60 refuses read_parquet(filter=..., columns=...): filter, then project, on the dataset.
    ds = ray.data.read_parquet(paths, filesystem=fs, override_num_blocks=override_num_blocks, num_cpus=num_cpus)
    expr = ray_filter_expression(**row_filters(shards, **filters))
    if expr is not None:
        ds = ds.filter(expr=expr)
    return ds.select_columns(columns) if columns is not None else ds


def ray_filter_expression(**filters: Any):
    """:func:`row_filter_expression` as a Ray Data predicate (``ray.data.expressions``), or None."""
    from ray.data.expressions import col

    return _filter_expression(filters, col, "is_in")


def volume_key(dataset: str, volume_id: str) -> str:
    return posixpath.join(dataset, volume_id)

"""Every location is a URI: a plain path, ``file://`` or ``s3://`` (any fsspec protocol works the same way).

Credentials and endpoint come from :class:`StorageSettings` (config) or the standard AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``).
Writes are atomic: :func:`atomic_write` publishes a file only once it is complete, :func:`publish_dir` a folder.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import Field

from mrgen.platform.config import ConfigBase


class StorageSettings(ConfigBase):
    """Object-storage access; empty fields fall back to the standard AWS environment variables."""

    section = "storage"
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000")
    access_key: str | None = Field(None, description="access key id")
    secret_key: str | None = Field(None, description="secret access key")
    region: str | None = Field(None, description="bucket region")
    anon: bool = Field(False, description="anonymous access")

    @classmethod
    def from_env(cls) -> StorageSettings:
        return cls(
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MRGEN_S3_ENDPOINT"),
            access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            region=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION"),
        )

    def resolved(self) -> StorageSettings:
        env = StorageSettings.from_env()
        return StorageSettings(**{k: getattr(self, k) if getattr(self, k) is not None else getattr(env, k)
                                  for k in type(self).model_fields})

    def s3_options(self) -> dict[str, Any]:
        s = self.resolved()
        opts: dict[str, Any] = {"anon": s.anon}
        if s.access_key:
            opts["key"], opts["secret"] = s.access_key, s.secret_key
        client: dict[str, Any] = {}
        if s.endpoint_url:
            client["endpoint_url"] = s.endpoint_url
        if s.region:
            client["region_name"] = s.region
        if client:
            opts["client_kwargs"] = client
        return opts


def protocol(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def is_local(uri: str) -> bool:
    return protocol(uri) == "file"


def local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def absolute(uri: str) -> str:
    """``uri`` with a relative local path made absolute: Ray workers and Ray Train's controller run in other
    working directories, so a relative path handed to them would point somewhere else."""
    if not is_local(uri):
        return uri
    path = os.path.abspath(os.path.expanduser(local_path(uri)))
    return f"file://{path}" if uri.startswith("file://") else path


def filesystem(uri: str, settings: StorageSettings | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it."""
    proto = protocol(uri)
    if proto == "file":
        return fsspec.filesystem("file"), str(Path(local_path(uri)).absolute())
    if proto in ("s3", "s3a"):
        fs = fsspec.filesystem("s3", **(settings or StorageSettings()).s3_options())
        return fs, uri.split("://", 1)[1]
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def arrow_filesystem(uri: str, settings: StorageSettings | None = None):
    """A pyarrow filesystem (native S3 where possible) and path, for pyarrow and Ray Data readers/writers."""
    proto = protocol(uri)
    if proto == "file":
        return pafs.LocalFileSystem(), str(Path(local_path(uri)).absolute())
    if proto in ("s3", "s3a"):
        s = (settings or StorageSettings()).resolved()
        kwargs: dict[str, Any] = {"anonymous": s.anon}
        if s.access_key:
            kwargs.update(access_key=s.access_key, secret_key=s.secret_key)
        if s.endpoint_url:
            scheme, _, host = s.endpoint_url.partition("://")
            kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        kwargs["region"] = s.region or "us-east-1"
        return pafs.S3FileSystem(**kwargs), uri.split("://", 1)[1]
    fs, path = filesystem(uri, settings)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(uri: str, *parts: str) -> str:
    if is_local(uri):
        return str(Path(local_path(uri)).joinpath(*parts))
    return posixpath.join(uri.rstrip("/"), *parts)


def exists(uri: str, settings: StorageSettings | None = None) -> bool:
    fs, path = filesystem(uri, settings)
    return fs.exists(path)


def makedirs(uri: str, settings: StorageSettings | None = None) -> None:
    fs, path = filesystem(uri, settings)
    if is_local(uri):
        fs.makedirs(path, exist_ok=True)


def listdir(uri: str, settings: StorageSettings | None = None) -> list[str]:
    """Names (not paths) directly under ``uri``; empty when it does not exist."""
    fs, path = filesystem(uri, settings)
    if not fs.exists(path):
        return []
    fs.invalidate_cache(path)
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def read_bytes(uri: str, settings: StorageSettings | None = None) -> bytes:
    fs, path = filesystem(uri, settings)
    with fs.open(path, "rb") as f:
        return f.read()


def read_text(uri: str, settings: StorageSettings | None = None) -> str:
    return read_bytes(uri, settings).decode()


def read_json(uri: str, settings: StorageSettings | None = None) -> Any:
    """The JSON document at ``uri``: FileNotFoundError when there is none, ValueError naming it when invalid."""
    if not exists(uri, settings):
        raise FileNotFoundError(f"no such file {uri}")
    try:
        return json.loads(read_text(uri, settings))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{uri}: not valid JSON ({exc})") from None


def remove(uri: str, settings: StorageSettings | None = None, recursive: bool = False) -> None:
    fs, path = filesystem(uri, settings)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


@contextlib.contextmanager
def atomic_write(uri: str, mode: str = "wb", settings: StorageSettings | None = None) -> Iterator[IO]:
    """Write ``uri`` so that readers see either nothing or the whole file.

    Local files go to a hidden temporary name in the same folder, then ``os.replace``. Remote objects are
    staged in a local temporary file and uploaded in one PUT on success (an S3 object appears only when its
    upload completes); on an exception nothing is uploaded.
    """
    if is_local(uri):
        target = Path(local_path(uri)).absolute()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return
    fs, path = filesystem(uri, settings)
    with tempfile.NamedTemporaryFile(mode, suffix=".part", delete=False) as f:
        tmp_name = f.name
    try:
        with open(tmp_name, mode) as f:
            yield f
        fs.put_file(tmp_name, path)
    finally:
        os.unlink(tmp_name)


def remove_write_leftovers(folder_uri: str, settings: StorageSettings | None = None) -> list[str]:
    """Remove the hidden temporary files that :func:`atomic_write` leaves in ``folder_uri`` when its writer was
    killed (a lost node or driver) before the rename; returns their names. Only call it when no writer runs."""
    left = [n for n in listdir(folder_uri, settings) if n.startswith(".") and n.endswith(".tmp")]
    for name in left:
        remove(join(folder_uri, name), settings)
    return left


def write_bytes(uri: str, data: bytes, settings: StorageSettings | None = None) -> None:
    with atomic_write(uri, "wb", settings) as f:
        f.write(data)


def write_text(uri: str, text: str, settings: StorageSettings | None = None) -> None:
    write_bytes(uri, text.encode(), settings)


def write_parquet(uri: str, table: pa.Table, settings: StorageSettings | None = None, **options: Any) -> int:
    """``table`` (a pyarrow Table) as one Parquet file at ``uri``, atomically; ``options`` go to
    ``pyarrow.parquet.write_table`` (compression, row_group_size, ...). Returns the file's size in bytes."""
    with atomic_write(uri, "wb", settings) as f:
        pq.write_table(table, f, **options)
        return f.tell()


def upload_dir(local_dir: str | Path, uri: str, settings: StorageSettings | None = None) -> None:
    """Copy a local folder to ``uri`` (a folder); each file is written atomically."""
    local_dir = Path(local_dir)
    for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        rel = file.relative_to(local_dir).as_posix()
        write_bytes(join(uri, *rel.split("/")), file.read_bytes(), settings)


@contextlib.contextmanager
def staging_dir(uri: str) -> Iterator[Path]:
    """A fresh local folder to fill and hand to :func:`publish_dir` for ``uri``; removed on exit when still there.

    For a local ``uri`` it is a hidden sibling of the target (same filesystem, so publishing is a rename), for
    object storage a temporary folder.
    """
    if is_local(uri):
        target = Path(local_path(uri)).absolute()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    with tempfile.TemporaryDirectory(prefix="mrgen-publish-") as root:
        yield Path(root)


def publish_dir(folder: str | Path, uri: str, marker: str | None, settings: StorageSettings | None = None) -> None:
    """Publish the finished local ``folder`` as the folder ``uri``, replacing what was there as a whole.

    ``marker`` names the file of ``folder`` whose presence means "complete" (``None`` for a folder that has none,
    such as a copy of a foreign layout: object storage then sees its files appear one by one). Locally the folder is
    moved into place (copied first to a hidden sibling when it lies elsewhere) and swapped with an existing one in
    one ``renameat2(RENAME_EXCHANGE)`` where the filesystem allows, else by renaming the old one aside first; the
    old one is deleted afterwards, never merged with. On object storage the old marker goes first, then the old
    objects; the new files are uploaded and the marker last, so a reader that finds the marker finds it whole.
    """
    folder = Path(folder)
    if marker is not None and not (folder / marker).is_file():
        raise FileNotFoundError(f"{folder}: no {marker}, the file that marks the folder complete")
    if not is_local(uri):
        if marker is not None:
            remove(join(uri, marker), settings)  # the old folder stops being complete first
        remove(uri, settings, recursive=True)
        last = [folder / marker] if marker is not None else []
        for file in sorted(p for p in folder.rglob("*") if p.is_file() and p not in last) + last:
            write_bytes(join(uri, *file.relative_to(folder).parts), file.read_bytes(), settings)
        return
    target = Path(local_path(uri)).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = folder.absolute()
    if staged.parent != target.parent:
        staged = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        shutil.copytree(folder, staged)
    try:
        if not target.exists():
            os.rename(staged, target)
        elif _exchange(staged, target):
            shutil.rmtree(staged, ignore_errors=True)  # now the old folder
        else:
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            try:
                os.rename(staged, target)
            except OSError:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staged != folder.absolute():
            shutil.rmtree(staged, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    return False


def download_dir(uri: str, local_dir: str | Path, settings: StorageSettings | None = None) -> Path:
    """Copy the folder ``uri`` to ``local_dir`` and return it; a local URI is returned as it is."""
    if is_local(uri):
        return Path(local_path(uri))
    fs, path = filesystem(uri, settings)
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    fs.get(path.rstrip("/") + "/", str(local_dir), recursive=True)
    return local_dir

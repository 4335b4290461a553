import pytest

from mrgen.platform import storage


def _uris(tmp_path, s3_server):
    return [str(tmp_path / "local"), f"file://{tmp_path}/f", f"s3://{s3_server['bucket']}/storage-test"]


def test_write_read_list_roundtrip(tmp_path, s3_server):
    for base in _uris(tmp_path, s3_server):
        uri = storage.join(base, "a", "b.bin")
        storage.write_bytes(uri, b"hello")
        assert storage.read_bytes(uri) == b"hello"
        assert storage.exists(uri)
        assert storage.listdir(storage.join(base, "a")) == ["b.bin"]


def test_failed_atomic_write_leaves_nothing_visible(tmp_path, s3_server):
    for base in _uris(tmp_path, s3_server):
        uri = storage.join(base, "partial.bin")
        with pytest.raises(RuntimeError):
            with storage.atomic_write(uri) as f:
                f.write(b"half")
                raise RuntimeError("crash mid-write")
        assert not storage.exists(uri), uri
        assert storage.listdir(base) in ([], ["a"]), storage.listdir(base)


def test_write_killed_mid_way_leaves_a_leftover_that_is_swept(tmp_path):
    """A writer killed before its rename (``os._exit``: no ``finally`` runs, as under SIGKILL) leaves a hidden
    temporary file; :func:`remove_write_leftovers` removes it and nothing else."""
    import subprocess
    import sys

    folder = tmp_path / "out"
    storage.write_text(str(folder / "done.json"), "{}")
    code = ("import os; from mrgen.platform import storage\n"
            f"with storage.atomic_write({str(folder / 'cut.json')!r}) as f:\n    f.write(b'half'); os._exit(9)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    left = [n for n in storage.listdir(str(folder)) if n != "done.json"]
    assert len(left) == 1 and left[0].startswith(".cut.json."), left
    assert storage.remove_write_leftovers(str(folder)) == left
    assert storage.listdir(str(folder)) == ["done.json"]


def test_failed_overwrite_keeps_previous_version(tmp_path, s3_server):
    for base in _uris(tmp_path, s3_server):
        uri = storage.join(base, "keep.txt")
        storage.write_text(uri, "v1")
        with pytest.raises(ValueError):
            with storage.atomic_write(uri) as f:
                f.write(b"v2-partial")
                raise ValueError
        assert storage.read_text(uri) == "v1"


def test_upload_download_dir(tmp_path, s3_server):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "x.txt").write_text("x")
    (src / "sub" / "y.txt").write_text("y")
    uri = f"s3://{s3_server['bucket']}/dirs/one"
    storage.upload_dir(src, uri)
    dst = storage.download_dir(uri, tmp_path / "dst")
    assert (dst / "x.txt").read_text() == "x" and (dst / "sub" / "y.txt").read_text() == "y"


def test_arrow_filesystem_reads_s3(tmp_path, s3_server):
    import pyarrow as pa
    import pyarrow.parquet as pq

    uri = f"s3://{s3_server['bucket']}/arrow/t.parquet"
    fs, path = storage.arrow_filesystem(uri)
    pq.write_table(pa.table({"a": [1, 2, 3]}), path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).column("a").to_pylist() == [1, 2, 3]


def test_settings_from_config_beat_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env:1")
    opts = storage.StorageSettings(endpoint_url="http://cfg:2").s3_options()
    assert opts["client_kwargs"]["endpoint_url"] == "http://cfg:2"
    assert storage.StorageSettings().s3_options()["client_kwargs"]["endpoint_url"] == "http://env:1"


def test_absolute_makes_local_paths_absolute_and_leaves_object_storage(tmp_path, monkeypatch):
    from mrgen.platform.storage import absolute

    monkeypatch.chdir(tmp_path)
    assert absolute("runs/demo") == str(tmp_path / "runs" / "demo")
    assert absolute("file://runs/x") == f"file://{tmp_path}/runs/x"
    assert absolute("/already/absolute") == "/already/absolute"
    assert absolute("s3://bucket/runs/demo") == "s3://bucket/runs/demo"


def _publish(uri, files: dict[str, str], fail: bool = False) -> None:
    with storage.staging_dir(uri) as tmp:
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
        if fail:
            raise RuntimeError("crash before publishing")
        storage.publish_dir(tmp, uri, marker="done.json")


def _tree(uri) -> dict[str, str]:
    fs, path = storage.filesystem(uri)
    fs.invalidate_cache()
    return {p[len(path.rstrip("/")) + 1:]: fs.cat_file(p).decode() for p in fs.find(path)}


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_publish_dir_replaces_whole_folder_and_failure_keeps_previous(tmp_path, s3_server, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(storage, "_exchange", lambda a, b: False)
    for base in _uris(tmp_path, s3_server):
        base = storage.join(base, f"publish-{exchange}")
        uri = storage.join(base, "model")
        _publish(uri, {"a.txt": "v1", "stale/b.txt": "v1", "done.json": "{}"})
        _publish(uri, {"a.txt": "v2", "done.json": "{}"})
        assert _tree(uri) == {"a.txt": "v2", "done.json": "{}"}, uri  # replaced, never merged with
        with pytest.raises(RuntimeError):
            _publish(uri, {"a.txt": "half"}, fail=True)
        assert _tree(uri) == {"a.txt": "v2", "done.json": "{}"}, uri
        assert storage.listdir(base) == ["model"], storage.listdir(base)  # no staging or old folder left


def test_publish_dir_refuses_a_folder_without_its_marker(tmp_path):
    uri = str(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="done.json"):
        with storage.staging_dir(uri) as tmp:
            (tmp / "a.txt").write_text("x")
            storage.publish_dir(tmp, uri, marker="done.json")
    assert not storage.exists(uri) and storage.listdir(str(tmp_path)) == []


def test_publish_dir_copies_a_folder_from_elsewhere(tmp_path):
    src = tmp_path / "work" / "model"
    src.mkdir(parents=True)
    (src / "done.json").write_text("{}")
    uri = str(tmp_path / "out" / "model")
    storage.publish_dir(src, uri, marker="done.json")
    assert _tree(uri) == {"done.json": "{}"} and storage.listdir(str(tmp_path / "out")) == ["model"]

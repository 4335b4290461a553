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

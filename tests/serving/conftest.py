"""Serving fixtures: a tiny random model bundle on disk and Ray Serve on 127.0.0.1 (shared Ray session)."""
from __future__ import annotations

import socket

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def serve_bundle(tmp_path_factory) -> str:
    """`build_random_bundle("tiny")` saved with `ModelBundle.save` (what the generator loads)."""
    from mrgen.models.bundle import build_random_bundle

    path = str(tmp_path_factory.mktemp("serve") / "bundle")
    build_random_bundle("tiny", seed=0).save(path)
    return path


@pytest.fixture(scope="session")
def serve_port(ray_session) -> int:
    from ray import serve

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()

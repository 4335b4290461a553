"""Ctrl-C on `mrgen serve` (a subprocess with its own local Ray): the process ends within seconds, Serve shut
down, and the port is free again."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_ready(url: str, proc: subprocess.Popen, log, timeout_s: float) -> None:
    """Until /readyz answers 200 and `mrgen serve` says it waits for Ctrl-C (the ingress answers while
    ``serve.run`` is still waiting for the other deployments)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "mrgen serve exited before it was ready"
        try:
            if "Ctrl-C stops" in log.read_text() and httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url}/readyz not ready after {timeout_s:.0f} s")


def test_sigint_stops_serve_within_seconds(serve_bundle, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "mrgen.cli", "serve", "--config", "tiny", "--model", serve_bundle,
               "--port", str(port)]
    # RAY_ADDRESS=local: its own Ray even if a `ray start` cluster on this machine left its address file
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "RAY_ADDRESS": "local"})
    try:
        _wait_ready(url, proc, log, timeout_s=300)
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        seconds = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # a second signal ends it at once
            proc.wait(timeout=30)
    text = log.read_text()
    print(f"mrgen serve stopped {seconds:.1f} s after SIGINT (exit code {code})")
    assert seconds <= 15, text[-3000:]
    assert code == 0 and "shutting down" in text and "did not stop within" not in text, text[-3000:]
    assert _port_free(port), f"port {port} still bound after mrgen serve exited"

"""`mrgen serve --model embedded` as a person starts it (a subprocess with its own local Ray): its console names the
log, the model, the filter with its thresholds and the URL, nothing of Ray's; Ctrl-C ends it within seconds, Serve
shut down, and the port is free again."""
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


def test_embedded_serve_console_and_sigint(tmp_path):
    from mrgen.models.manifest import FILTER_THRESHOLDS, embedded_bundle
    from mrgen.models.selection import load_calibration

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    console, log = tmp_path / "console.txt", tmp_path / "serve.log"
    command = [sys.executable, "-m", "mrgen.cli", "serve", "--model", "embedded", "--port", str(port),
               "--log", str(log)]
    # RAY_ADDRESS=local: its own Ray even if a `ray start` cluster on this machine left its address file; the
    # workers' lines forwarded to the driver, as in a person's shell
    with open(console, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "RAY_ADDRESS": "local", "MRGEN_RAY_LOG_TO_DRIVER": "1"})
    try:
        _wait_ready(url, proc, console, timeout_s=300)
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        seconds = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # a second signal ends it at once
            proc.wait(timeout=30)
    text = console.read_text()
    print(f"mrgen serve stopped {seconds:.1f} s after SIGINT (exit code {code}); its console:\n{text}")
    assert seconds <= 15, log.read_text()[-3000:]
    assert code == 0 and "shutting down" in text and "did not stop within" not in text, log.read_text()[-3000:]
    assert _port_free(port), f"port {port} still bound after mrgen serve exited"
    lines = text.splitlines()
    assert len(lines) <= 8 and all(line.startswith("mrgen serve") for line in lines), text
    t = load_calibration(f"{embedded_bundle()}/{FILTER_THRESHOLDS}").thresholds
    for said in (str(log), "model embedded", f"{url} (OpenAPI", "filter medsam", f"organ IoU {t.organ_iou:g}",
                 f"organ conf {t.organ_conf:g}", f"mean IoU {t.mean_iou:g}", f"mean conf {t.mean_conf:g}"):
        assert said in text, (said, text)
    assert "Started Serve" in log.read_text()  # Ray's own lines went to the log

"""`mrgen submit` against a real Ray head started by the test (`ray start --head` on 127.0.0.1)."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest



def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    gcs, dash = free_port(), free_port()
    temp_dir = Path("/tmp") / f"rh{os.getpid()}"  # short: Ray's socket paths have a length limit
    cmd = [str(bin_dir / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true", "--num-cpus=1",
           f"--temp-dir={temp_dir}", f"--dashboard-agent-listen-port={free_port()}", f"--min-worker-port={free_port()}",
           "--max-worker-port=0", "--disable-usage-stats", "--block"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    yield f"http://127.0.0.1:{dash}", env
    os.killpg(proc.pid, signal.SIGTERM)  # only our own head's process group, never `ray stop`
    proc.wait(timeout=60)


def test_submit_runs_an_mrgen_command_as_a_ray_job(ray_head, tiny_db):
    address, env = ray_head
    from ray.job_submission import JobSubmissionClient

    import time

    deadline = time.time() + 120
    while True:  # the dashboard's job server comes up a few seconds after the head
        try:
            JobSubmissionClient(address).list_jobs()
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(1)
    out = subprocess.run([sys.executable, "-m", "mrgen.cli", "submit", "--address", address, "--", "mrgen", "db",
                          "info", tiny_db],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "phantom-src" in out.stdout  # the job's own output, streamed back from the cluster


def test_submit_rejects_a_non_mrgen_entrypoint(capsys):
    from mrgen.cli.main import main

    assert main(["submit", "--address", "http://127.0.0.1:1", "--", "rm", "-rf", "/"]) == 1
    assert "must be an mrgen command" in capsys.readouterr().err

"""`mrgen submit`: run any `mrgen` command as a Ray job on a (remote) cluster through the Ray Jobs API."""
from __future__ import annotations

import argparse
import shlex
import sys
import time

from mrgen.cli.common import EXIT_CONFIG, CliError
from mrgen.platform.cluster import runtime_env_vars


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit an mrgen command as a Ray job (Ray Jobs API)",
                       description="Example: mrgen submit --address http://head:8265 -- mrgen train all --config paper "
                                   "--db s3://b/db --out s3://b/run")
    p.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://127.0.0.1:8265")
    p.add_argument("--working-dir", default=None,
                   help="upload this folder as the job's working_dir (default: use the installed image)")
    p.add_argument("--pip", action="append", default=[], help="extra pip requirement for the job's runtime env")
    p.add_argument("--job-id", default=None, help="submission id (default: generated)")
    p.add_argument("--no-wait", action="store_true", help="return after submitting instead of following the logs")
    p.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- mrgen COMMAND ...")
    p.set_defaults(func=run)


def build_entrypoint(words: list[str]) -> str:
    words = words[1:] if words and words[0] == "--" else words
    if not words or words[0] != "mrgen":
        raise CliError("the entrypoint must be an mrgen command, e.g. `-- mrgen train all ...`", EXIT_CONFIG)
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    from ray.job_submission import JobStatus, JobSubmissionClient  # Ray: not at the CLI's start-up

    entrypoint = build_entrypoint(args.entrypoint)
    runtime_env: dict = {"env_vars": runtime_env_vars()}
    if args.working_dir:
        runtime_env["working_dir"] = args.working_dir
        runtime_env["excludes"] = [".venv", "build", "runs", ".git"]
    if args.pip:
        runtime_env["pip"] = args.pip
    client = JobSubmissionClient(args.address)
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=args.job_id)
    print(f"submitted {job_id}: {entrypoint}", file=sys.stderr)
    if args.no_wait:
        print(job_id)
        return 0
    shown = 0
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        sys.stdout.write(logs[shown:])
        shown = len(logs)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            print(f"job {job_id}: {status.value}", file=sys.stderr)
            return 0 if status == JobStatus.SUCCEEDED else 1
        time.sleep(1.0)

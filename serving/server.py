"""Running the service (`mrgen serve`) and writing it as a Serve config file for `serve deploy` / `serve run`."""
from __future__ import annotations

import os
import signal
import threading
from typing import Any

import ray
import yaml
from ray import serve

from mrgen.models.manifest import resolve_model_uri
from mrgen.platform import storage
from mrgen.platform.cluster import RayConfig, init_ray
from mrgen.platform.console import say
from mrgen.serving.app import build_app_from_config
from mrgen.serving.config import ServeConfig

IMPORT_PATH = "mrgen.serving.app:build_app"


def deploy_config(config: ServeConfig) -> dict[str, Any]:
    """A Serve config (``ray.serve.schema.ServeDeploySchema``) running this service with ``config``."""
    # a literal token never goes into a file: deploy with auth_token_env and the variable set on the cluster
    service = config.model_dump(mode="json", exclude={"model", "auth_token"})
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": config.host, "port": config.port,
                         "request_timeout_s": config.request_timeout_s + 10},
        "applications": [{
            "name": config.app_name,
            "route_prefix": config.route_prefix,
            "import_path": IMPORT_PATH,
            "args": {"model": config.model, "config": service},
        }],
    }


def deploy_config_yaml(config: ServeConfig) -> str:
    header = ("# Ray Serve config for the MRGen generation service; written by `mrgen serve --print-config`.\n"
              "# Run with `serve run FILE` (local) or `serve deploy FILE` (a running cluster).\n")
    return header + yaml.safe_dump(deploy_config(config), sort_keys=False)


def run_service(config: ServeConfig, ray_address: str | None = None, block: bool = True) -> str:
    """Start Serve on ``config.host:port``, deploy the app, and (``block``) wait until Ctrl-C. Returns the URL. Says
    on the running command's console (`platform.console`) the model, the filter in force and the URL."""
    if not config.model:
        raise ValueError("no model bundle: pass --model URI or set serve.model")
    # replicas run in other directories: a relative path means one relative to where `mrgen serve` was started
    name = config.model
    config = config.with_overrides({"model": storage.absolute(resolve_model_uri(name))}).resolved()
    init_ray(RayConfig(address=ray_address))
    serve.start(http_options={"host": config.host, "port": config.port,
                              "request_timeout_s": config.request_timeout_s + 10})
    serve.run(build_app_from_config(config), name=config.app_name, route_prefix=config.route_prefix)
    url = f"http://{config.host}:{config.port}{config.route_prefix.rstrip('/')}"
    say(f"mrgen serve: model {name}" + (f" ({config.model})" if config.model != name else ""))
    for line in config.filter.describe():
        say(f"mrgen serve: {line}")
    say(f"mrgen serve: {url} (OpenAPI: {url}/openapi.json); Ctrl-C stops")
    if not block:
        return url
    wait_for_signal()
    say("mrgen serve: shutting down")
    stop_service(started_ray=ray_address is None)
    return url


SHUTDOWN_TIMEOUT_S = 10.0  # Serve's own shutdown waits for every replica's graceful timeout (request_timeout_s)


def wait_for_signal() -> int:
    """Block until SIGINT or SIGTERM (Ctrl-C, `kill`, a container stop); returns the signal number. A second
    signal while shutting down ends the process at once."""
    received = threading.Event()
    got: list[int] = []

    def handler(signum, _frame):
        if received.is_set():
            os._exit(128 + signum)  # asked twice: do not wait for a clean shutdown
        got.append(signum)
        received.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)
    while not received.wait(timeout=1.0):
        pass
    return got[0]


def stop_service(started_ray: bool) -> None:
    """Shut Serve down (in-flight requests get up to ``SHUTDOWN_TIMEOUT_S``), then the local Ray it started."""
    done = threading.Event()

    def shutdown() -> None:
        try:
            serve.shutdown()
        finally:
            done.set()

    threading.Thread(target=shutdown, daemon=True).start()
    if not done.wait(SHUTDOWN_TIMEOUT_S):
        say(f"mrgen serve: Serve did not stop within {SHUTDOWN_TIMEOUT_S:.0f} s; stopping Ray")
    if started_ray:
        ray.shutdown()


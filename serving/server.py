"""Running the service (`mrgen serve`) and writing it as a Serve config file for `serve deploy` / `serve run`."""
from __future__ import annotations

import time
from typing import Any

import yaml

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
    """Start Serve on ``config.host:port``, deploy the app, and (``block``) wait until Ctrl-C. Returns the URL."""
    from ray import serve

    from mrgen.platform import storage
    from mrgen.platform.cluster import RayConfig, init_ray
    from mrgen.serving.app import build_app_from_config

    if not config.model:
        raise ValueError("no model bundle: pass --model URI or set serve.model")
    # replicas run in other directories: a relative path means one relative to where `mrgen serve` was started
    from mrgen.models.bundle import resolve_model_uri

    config = config.with_overrides({"model": storage.absolute(resolve_model_uri(config.model))})
    init_ray(RayConfig(address=ray_address))
    serve.start(http_options={"host": config.host, "port": config.port,
                              "request_timeout_s": config.request_timeout_s + 10})
    serve.run(build_app_from_config(config), name=config.app_name, route_prefix=config.route_prefix)
    url = f"http://{config.host}:{config.port}{config.route_prefix.rstrip('/')}"
    print(f"mrgen serve: {config.model} at {url} (OpenAPI: {url}/openapi.json); Ctrl-C stops", flush=True)
    if not block:
        return url
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("mrgen serve: shutting down", flush=True)
        serve.shutdown()
        raise


"""The service config, its presets, and the Serve config file (checked against Ray's own schema)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_presets_and_bounds():
    from mrgen.platform.config import ConfigError
    from mrgen.serving.config import ServeConfig

    tiny, paper = ServeConfig.load("tiny"), ServeConfig.load("paper")
    assert tiny.host == "127.0.0.1" and tiny.resources.generator_gpus == 0 and tiny.resources.generator_cpus < 1
    assert paper.resources.generator_gpus == 1 and paper.limits.max_image_size == 512
    assert paper.filter.enabled and paper.filter.kind == "sam2"
    assert tiny.limits.max_n == 20
    with pytest.raises(ConfigError, match="max_replicas"):
        ServeConfig.load("tiny", ["autoscaling.min_replicas=3", "autoscaling.max_replicas=2"])
    with pytest.raises(ConfigError, match="max_n"):
        ServeConfig.load("tiny", ["limits.max_n=21"])
    with pytest.raises(ConfigError, match="max_batch_size"):
        ServeConfig.load("tiny", ["batching.max_batch_size=32"])


def test_token_from_environment(monkeypatch):
    from mrgen.platform.config import ConfigError
    from mrgen.serving.config import ServeConfig

    config = ServeConfig.load("tiny", ["auth_token_env=MRGEN_TEST_SERVE_TOKEN"])
    monkeypatch.delenv("MRGEN_TEST_SERVE_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="MRGEN_TEST_SERVE_TOKEN"):
        config.resolve_token()
    monkeypatch.setenv("MRGEN_TEST_SERVE_TOKEN", "s3cret")
    assert config.resolve_token() == "s3cret"
    assert ServeConfig.load("tiny").resolve_token() is None


def test_infra_file_is_a_valid_serve_config_and_current():
    from ray.serve.schema import ServeDeploySchema

    from mrgen.serving.app import GeneratorAppArgs
    from mrgen.serving.config import ServeConfig
    from mrgen.serving.server import deploy_config

    data = yaml.safe_load((ROOT / "infra" / "serve-tiny.yaml").read_text())
    schema = ServeDeploySchema.model_validate(data)
    app = schema.applications[0]
    assert app.import_path == "mrgen.serving.app:build_app" and app.route_prefix == "/"
    resolved = GeneratorAppArgs.model_validate(app.args).resolve()
    expected = ServeConfig.load("tiny").with_overrides({"model": "runs/demo/bundle"})
    assert resolved == expected
    assert data == deploy_config(expected), "infra/serve-tiny.yaml is stale: regenerate with mrgen serve --print-config"


def test_print_config_command(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    from mrgen.cli.main import main
    from mrgen.serving.app import GeneratorAppArgs

    out = tmp_path / "serve.yaml"
    assert main(["serve", "--model", "s3://bucket/bundle", "--config", "paper", "--port", "9123",
                 "--set", "auth_token=do-not-leak", "--print-config", str(out)]) == 0
    text = out.read_text()
    assert "do-not-leak" not in text
    schema = ServeDeploySchema.model_validate(yaml.safe_load(text))
    assert schema.http_options.port == 9123 and schema.http_options.host == "127.0.0.1"
    config = GeneratorAppArgs.model_validate(schema.applications[0].args).resolve()
    assert config.model == "s3://bucket/bundle" and config.resources.generator_gpus == 1
    assert config.autoscaling.max_replicas == 8


def test_app_args_need_a_model():
    from mrgen.serving.app import GeneratorAppArgs

    with pytest.raises(ValueError, match="no model bundle"):
        GeneratorAppArgs(config="tiny").resolve()
    args = GeneratorAppArgs(model="m", config={"preset": "tiny", "batching": {"max_batch_size": 1}},
                            overrides=["limits.max_steps=7"])
    config = args.resolve()
    assert config.batching.max_batch_size == 1 and config.limits.max_steps == 7 and config.sampling.steps == 2

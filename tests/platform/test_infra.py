"""infra/ holds no logic: manifests call real `mrgen` commands and valid Serve configs, the image installs every
package."""
import re
import shlex
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"


def _manifests():
    return sorted(p for p in INFRA.glob("*.yaml"))


def test_every_manifest_parses_and_has_a_kind_or_is_a_serve_config():
    assert _manifests()
    for path in _manifests():
        doc = yaml.safe_load(path.read_text())
        assert isinstance(doc, dict), path
        assert doc.get("kind") in {"RayCluster", "RayJob", "RayService"} or "applications" in doc, path


@pytest.mark.parametrize("path", [p for p in _manifests() if yaml.safe_load(p.read_text()).get("kind") == "RayJob"],
                         ids=lambda p: p.name)
def test_rayjob_entrypoints_are_valid_mrgen_commands(path):
    from mrgen.cli.main import build_parser

    entry = yaml.safe_load(path.read_text())["spec"]["entrypoint"]
    words = shlex.split(entry)
    assert words[0] == "mrgen"
    args = build_parser().parse_args(words[1:])  # SystemExit on an unknown command or flag
    assert callable(args.func)


def test_serve_configs_follow_rays_schema():
    from ray.serve.schema import ServeDeploySchema

    found = 0
    for path in _manifests():
        doc = yaml.safe_load(path.read_text())
        if doc.get("kind") == "RayService":
            doc = yaml.safe_load(doc["spec"]["serveConfigV2"])
        if "applications" in doc:
            ServeDeploySchema.model_validate(doc) if hasattr(ServeDeploySchema,
                                                             "model_validate") else ServeDeploySchema.parse_obj(doc)
            found += 1
    assert found >= 1


def test_image_copies_every_package_folder():
    setup = (INFRA.parent / "setup.py").read_text()
    roots = re.search(r"ROOTS = \[(.*?)\]", setup).group(1)
    copied = set(re.findall(r"^COPY --chown=\S+ (\S+) ", (INFRA / "Dockerfile").read_text(), re.M))
    for root in re.findall(r'"(\w+)"', roots):
        assert root in copied, f"infra/Dockerfile does not COPY {root}/"

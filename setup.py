"""Maps the repo's top-level folders onto `mrgen.<folder>` (see pyproject.toml)."""
from pathlib import Path

from setuptools import setup

ROOTS = ["platform", "datasets", "models", "jobs", "serving", "cli"]


def _packages() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = [], {}
    for root in ROOTS:
        package_dir[f"mrgen.{root}"] = root
        for folder in [Path(root), *sorted(p for p in Path(root).rglob("*") if p.is_dir())]:
            if "__pycache__" not in folder.parts and any(folder.glob("*.py")):
                packages.append("mrgen." + ".".join(folder.parts))
    return packages, package_dir


packages, package_dir = _packages()
# the embedded trained bundle ships inside mrgen.models (models/embedded/tiny-phantom/**)
setup(packages=packages, package_dir=package_dir,
      package_data={"": ["*.yaml", "*.json"], "mrgen.models": ["embedded/*/*.json", "embedded/*/*/*"]})

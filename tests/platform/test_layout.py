"""The package layout contract: `mrgen.<folder>` imports, nothing shadows `platform` or `datasets`."""
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
ROOTS = ["platform", "datasets", "models", "jobs", "serving", "cli"]


def test_root_folders_are_not_importable_as_top_level_packages():
    for root in ROOTS:
        assert not (REPO / root / "__init__.py").exists(), f"{root}/__init__.py would shadow a top-level module"


def test_import_platform_from_repo_root_is_stdlib():
    code = "import platform, sys; print(platform.__file__); print(platform.python_version())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    path = out.splitlines()[0]
    assert not path.startswith(str(REPO)), path
    assert out.splitlines()[1] == ".".join(map(str, sys.version_info[:3]))


def test_import_datasets_from_repo_root_is_not_ours():
    code = "import importlib.util as u; s = u.find_spec('datasets'); print(s.origin if s and s.origin else s)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()
    # Either PyPI's `datasets` (not installed here) or nothing with a module file: never our folder as a package.
    assert out in ("None",) or not out.startswith(str(REPO / "datasets")), out


# what each folder may import of the package: platform <- datasets <- models <- jobs, serving; only cli reaches both
LAYERS = {"platform": {"platform"}, "datasets": {"platform", "datasets"}, "models": {"platform", "datasets", "models"},
          "jobs": {"platform", "datasets", "models", "jobs"}, "serving": {"platform", "datasets", "models", "serving"},
          "cli": set(ROOTS)}


def test_layers_import_one_way():
    """No import, at the top or inside a function, against the layering (jobs and serving never import each other),
    and no Ray or DeepSpeed in models (pure PyTorch)."""
    import ast

    broken = []
    for root, allowed in LAYERS.items():
        for path in (REPO / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                else:
                    continue
                for name in names:
                    parts = name.split(".")
                    if (parts[0] == "mrgen" and len(parts) > 1 and parts[1] not in allowed
                            or root == "models" and parts[0] in ("ray", "deepspeed")):
                        broken.append(f"{path.relative_to(REPO)}: {name}")
    assert not broken, broken


def test_task_stages_start_without_torch():
    """The synthesis stages that run as Ray tasks (prepare, selection, records, writer) import no torch or diffusers:
    every fresh worker on a node imports its stage's module, and the generator's costs seconds and a GB. Nor does
    the synthesis driver (its actor stages import their modules in the actors: a resumed run's driver started 6 s
    later with them), or the serving client's input check (it reads a bundle's organ vocabulary)."""
    code = ("import sys; import mrgen.jobs.synthesis.stages.prepare, mrgen.jobs.synthesis.stages.writer, "
            "mrgen.jobs.synthesis.stages.selection, mrgen.jobs.synthesis.run, mrgen.serving.inputs; "
            "print(sorted({'torch', 'diffusers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out


def test_deferred_actor_stages_stand_for_their_classes():
    """The synthesis driver maps stand-ins of its actor stages: each carries the name (Ray's actor names and the
    elastic bench's counts) and stage NAME of the class it stands for, and travels by value (nothing for a worker to
    import before the actor runs)."""
    import importlib
    import pickle

    import cloudpickle

    from mrgen.jobs.synthesis import processor

    for module, name in (("generator", "GeneratorUDF"), ("adaptive", "AdaptiveUDF"), ("filter", "FilterUDF")):
        stand_in = getattr(processor, name)
        real = getattr(importlib.import_module(f"mrgen.jobs.synthesis.stages.{module}"), name)
        assert stand_in is not real and (stand_in.__name__, stand_in.NAME) == (real.__name__, real.NAME)
        assert pickle.loads(cloudpickle.dumps(stand_in)).NAME == real.NAME
        assert not hasattr(importlib.import_module(stand_in.__module__), name)  # not importable by name: by value


def test_every_source_folder_is_installed():
    import importlib

    for root in ROOTS:
        for folder in [REPO / root, *(p for p in (REPO / root).rglob("*") if p.is_dir())]:
            if "__pycache__" in folder.parts or not any(folder.glob("*.py")):
                continue
            name = "mrgen." + ".".join(folder.relative_to(REPO).parts)
            assert importlib.util.find_spec(name) is not None, f"{name} not importable: rerun `make env`"


PROBE = """
import json, ray
ray.init(address=ADDRESS, runtime_env={"working_dir": REPO, "excludes": [".venv", "build", "runs", ".git"]},
         log_to_driver=False)

@ray.remote(num_cpus=0.1)
def probe():
    import os, platform
    import mrgen.platform.config  # our package still imports by its full name
    return platform.__file__, platform.system(), os.getcwd()

print(json.dumps(ray.get(probe.remote())))
"""


def test_platform_is_stdlib_inside_ray_task_with_repo_working_dir(ray_session, tmp_path):
    """A job whose working_dir is the repo root (as `ray job submit --working-dir .` does) still gets the stdlib."""
    import json

    address = ray_session.get_runtime_context().gcs_address
    script = PROBE.replace("ADDRESS", repr(address)).replace("REPO", repr(str(REPO)))
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    path, system, cwd = json.loads(out.stdout.strip().splitlines()[-1])
    assert system == "Linux"
    assert (Path(cwd) / "platform" / "config.py").exists(), cwd  # the task really runs in a copy of the repo
    assert not path.startswith(cwd), (path, cwd)

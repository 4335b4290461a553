import pytest
from pydantic import Field

from mrgen.platform.config import ConfigBase, ConfigError, preset


class Demo(ConfigBase):
    section = "demo"
    lr: float = Field(1e-4, gt=0)
    steps: int = Field(10, ge=1)
    name: str = "x"
    nested: dict[str, int] = Field(default_factory=dict)


@preset(Demo, "tiny")
def _tiny():
    return {"lr": 1e-3, "steps": 5}


@preset(Demo, "paper")
def _paper():
    return {"lr": 1e-5, "steps": 200_000}


def test_presets_and_overrides():
    assert Demo.load().steps == 5
    assert Demo.load("paper").lr == 1e-5
    cfg = Demo.load("paper", ["steps=7", "nested.a=3"])
    assert (cfg.steps, cfg.nested) == (7, {"a": 3})
    assert cfg.with_overrides({"steps": None, "name": "y"}).name == "y"


def test_yaml_file_with_section_and_preset(tmp_path):
    path = tmp_path / "all.yaml"
    path.write_text("demo:\n  preset: paper\n  steps: 3\nother:\n  x: 1\n")
    cfg = Demo.load(path)
    assert (cfg.lr, cfg.steps) == (1e-5, 3)
    flat = tmp_path / "flat.yaml"
    flat.write_text("lr: 0.5\n")
    assert Demo.load(flat).lr == 0.5


@pytest.mark.parametrize("override,key", [("steps=0", "steps"), ("lr=-1", "lr"), ("bogus=1", "bogus"),
                                          ("steps=abc", "steps")])
def test_bad_value_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        Demo.load("tiny", [override])


def test_unknown_preset_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="neither a preset"):
        Demo.load("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        Demo.load(bad)


def test_a_file_of_other_sections_only_is_an_error_naming_file_and_sections(tmp_path):
    path = tmp_path / "others.yaml"
    path.write_text("train:\n  lr: 1\nphantom:\n  volumes: 2\n")
    with pytest.raises(ConfigError, match=r"others\.yaml: no 'demo' section .*phantom, train"):
        Demo.load(path)  # never silently the tiny preset
    nested = tmp_path / "nested.yaml"
    nested.write_text("nested:\n  a: 1\n")  # a mapping that is a field of the section: top-level layout
    assert Demo.load(nested).nested == {"a": 1}


def test_round_trip_yaml(tmp_path):
    cfg = Demo.load("paper", ["name=z"])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert Demo.load(path) == cfg

"""One way a command fails: `CliError`, printed once by `main` as `mrgen COMMAND: reason` on stderr with the command's
exit code; a command group that cannot be imported is an error, not a command that silently goes missing."""
from __future__ import annotations

import json

import pytest

from mrgen.cli import main as cli_main
from mrgen.cli.main import build_parser, main


def test_an_input_error_names_the_command_on_stderr_and_exits_2(tmp_path, capsys):
    missing = str(tmp_path / "nothing")
    assert main(["eval", "fid", "--real", missing, "--synthetic", missing]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # a --json command's stdout holds its JSON or nothing
    assert err.startswith("mrgen eval fid: ") and missing in err and err.count("mrgen eval fid") == 1, err


def test_a_refused_flag_combination_exits_with_the_command_s_code(capsys):
    assert main(["train", "vae", "--db", "d", "--out", "o", "--init", "b"]) == 2
    assert capsys.readouterr().err == "mrgen train: --init applies to the unet and controlnet stages, not 'vae'\n"
    assert main(["segment", "eval", "--model", "m", "--test", "t", "--limit", "3"]) == 1
    assert capsys.readouterr().err == "mrgen segment eval: --limit needs --pooled and N >= 1\n"


def test_the_commands_of_every_module_register():
    """The subcommands that other modules add (eval fid / clip, db build / annotate-regions) are all there."""
    parser = build_parser()
    for argv in (["eval", "fid", "--real", "r", "--synthetic", "s"], ["eval", "clip", "--model", "m", "--synthetic",
                 "s"], ["db", "build", "m.jsonl", "--out", "o"], ["db", "annotate-regions", "u"]):
        assert callable(parser.parse_args(argv).func), argv


def test_a_group_that_fails_to_import_is_an_error(monkeypatch):
    monkeypatch.setattr(cli_main, "GROUPS", [*cli_main.GROUPS, "not_installed"])
    with pytest.raises(ModuleNotFoundError, match="not_installed"):
        build_parser()


def test_a_dict_flag_error_is_a_cli_error(tmp_path):
    from mrgen.cli.common import CliError, json_object

    file = tmp_path / "x.json"
    file.write_text(json.dumps([1]))
    with pytest.raises(CliError, match="--organ-map must be a JSON object") as exc:
        json_object(str(file), "--organ-map")
    assert exc.value.code == 1

"""The `asr` entry point: dispatch, help, errors."""

import subprocess
import sys

from asr import cli


def test_help_lists_every_subcommand(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert f"  {name}" in out
    assert cli.main(["data", "--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS["data"]:
        assert f"  {name}" in out


def test_every_registered_module_has_main():
    import importlib

    def walk(table):
        for entry in table.values():
            if isinstance(entry, dict):
                yield from walk(entry)
            else:
                yield entry[0]

    for module_name in walk(cli.COMMANDS):
        assert callable(importlib.import_module(module_name).main), module_name


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "asr", "--help"], capture_output=True, text=True, check=True)
    assert "data" in result.stdout

"""The README documents every command, option and setting, so the docs cannot silently go stale."""

from __future__ import annotations

import re

import typer

from tunelab.cli.main import app
from tunelab.config import Settings
from conftest import ROOT


def commands(group, prefix: str = "tunelab"):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a command group
            yield from commands(command, f"{prefix} {name}")
        else:
            yield f"{prefix} {name}", command


def test_every_command_and_option_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    found = list(commands(typer.main.get_command(app)))
    assert len(found) >= 5
    for name, command in found:
        assert f"`{name}" in readme, f"{name} is not documented in README.md"
        for param in command.params:
            for flag in param.opts:
                if flag.startswith("--") and flag != "--help":
                    assert re.search(rf"(?<![\w-]){flag}(?![\w-])", readme), f"{name} {flag} is not in README.md"


def test_every_setting_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for field in Settings.model_fields:
        assert f"TUNELAB_{field.upper()}" in readme

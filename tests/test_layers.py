"""The layer contract (pyproject.toml, docs/architecture.md) holds: import-linter finds no import up the layers and
none between packages of one layer, and every package of tunelab has its place in the layers."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_no_import_crosses_the_layers():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


def test_every_package_has_a_layer():
    layers = next(c for c in contracts() if c["type"] == "layers")["layers"]
    placed = {name.strip() for layer in layers for name in layer.split("|")}
    packages = {f"tunelab.{p.parent.name}" for p in (ROOT / "tunelab").glob("*/__init__.py")}
    assert packages - placed == set(), "a package outside the layer contract"
    domain = set(next(c for c in contracts() if c["type"] == "forbidden")["source_modules"])
    assert domain == placed - {"tunelab.cli", "tunelab.app", "tunelab.api", "tunelab.web"}

"""The README's package tree names every module of tunelab, and only modules that exist: under each directory's
line (`api/files/`), the `*.py` names up to the next directory's line are exactly that directory's modules."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tree() -> dict[str, set[str]]:
    """Directory (relative to the repository, ending in /) → the module names listed under it."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Package layout", 1)[1].split("```", 2)[1]
    listed: dict[str, set[str]] = {}
    current = None
    for line in block.splitlines():
        first = line.split()[0] if line.split() else ""
        if first.endswith("/"):
            current = first if first.startswith("tunelab/") else f"tunelab/{first}"
            if first.startswith(("examples/", "bench/", "docs/", "tests/")):
                current = None  # beyond the package
            listed.setdefault(current, set())
        if current:
            listed[current] |= set(re.findall(r"\b\w+\.py\b", line))
    listed.pop(None, None)
    return listed


def test_the_readme_tree_lists_every_module():
    modules: dict[str, set[str]] = {}
    for path in (ROOT / "tunelab").rglob("*.py"):
        if path.name != "__init__.py":
            modules.setdefault(f"{path.parent.relative_to(ROOT)}/", set()).add(path.name)
    listed = tree()
    assert sorted(d for d in modules if d not in listed) == [], "directories missing from the README's tree"
    for directory, names in modules.items():
        assert listed[directory] == names, f"{directory}: missing {names - listed[directory]}, " \
                                           f"gone {listed[directory] - names}"

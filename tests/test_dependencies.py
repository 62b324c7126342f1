"""Every third-party package that cl_bench imports is declared in pyproject.toml.

A package that only arrives as someone else's dependency (filelock came with torch) disappears
the day that dependency drops it, and the user gets a bare ModuleNotFoundError.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_level(package: Path) -> dict[str, list[str]]:
    """Top-level module names imported anywhere under ``package`` (absolute imports only),
    each with the files that import it."""
    found: dict[str, list[str]] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], []).append(str(path.relative_to(ROOT)))
    return found


def _declared() -> set[str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(meta["dependencies"])
    for extra in meta.get("optional-dependencies", {}).values():
        specs += extra
    return {_canonical(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]) for spec in specs}


def test_every_imported_third_party_package_is_declared():
    imported = _imported_top_level(ROOT / "cl_bench")
    third_party = {m: files for m, files in imported.items()
                   if m not in sys.stdlib_module_names and m != "cl_bench"}
    # sanity: the walk sees the stack (a broken walk must not pass by finding nothing)
    assert {"torch", "hydra", "lightning", "peft", "monai", "filelock"} <= set(third_party)
    dists = packages_distributions()
    declared = _declared()
    missing = {}
    for module, files in sorted(third_party.items()):
        candidates = {_canonical(d) for d in dists.get(module, [])}
        assert candidates, f"{module} (imported by {files[0]}) is not installed"
        if not candidates & declared:
            missing[module] = (sorted(candidates), files[:3])
    assert not missing, ("imported but not declared in pyproject.toml "
                         f"(module: distributions, importing files): {missing}")


def test_filelock_is_declared():
    assert "filelock" in _declared()

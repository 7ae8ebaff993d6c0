"""Declared dependencies are honest: what the packages import is declared, and environment.yml agrees."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import yaml

try:
    import tomllib
except ImportError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"shards", "preprocess", "train", "tests", "bench"}
# Import name -> distribution name, where they differ.
DISTRIBUTION = {"yaml": "pyyaml", "sklearn": "scikit-learn", "tensorboardX": "tensorboardx"}
# Distribution name -> conda-forge name, where they differ.
CONDA_NAME = {"torch": "pytorch", "soundfile": "pysoundfile", "soxr": "soxr-python"}
DEV_TOOLS = {"pytest", "pytest-timeout", "ruff", "scikit-learn", "threadpoolctl"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _declared(extras: bool) -> set[str]:
    project = _pyproject()
    names = {_name(r) for r in project["dependencies"]}
    if extras:
        names |= {
            _name(r)
            for reqs in project["optional-dependencies"].values()
            for r in reqs
            if not r.startswith("fma-genre")
        }
    return names


def _imports(package: str) -> set[str]:
    """Top-level names of the third-party modules imported anywhere in ``package``."""
    found = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {n for n in found if n not in sys.stdlib_module_names and n not in FIRST_PARTY}


def test_everything_the_packages_import_is_declared():
    declared = _declared(extras=True)
    for package in ("shards", "preprocess", "train"):
        missing = {DISTRIBUTION.get(n, n).lower() for n in _imports(package)} - declared
        assert not missing, f"{package}/ imports {sorted(missing)}, not declared in pyproject.toml"


def test_runtime_code_needs_no_dev_tool():
    for package in ("shards", "preprocess", "train"):
        used = {DISTRIBUTION.get(n, n).lower() for n in _imports(package)}
        assert not used & DEV_TOOLS, f"{package}/ imports dev-only {sorted(used & DEV_TOOLS)}"


def test_environment_yml_lists_the_same_packages_from_conda_forge_only():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda, pip = set(), set()
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            pip |= {_name(r) for r in entry["pip"]}
        else:
            conda.add(_name(entry))
    assert "pytorch-cuda" not in conda
    listed = conda | pip
    expected = {CONDA_NAME.get(n, n) for n in _declared(extras=True) - DEV_TOOLS}
    assert expected - listed == set(), f"in pyproject.toml, missing from environment.yml: {expected - listed}"
    extra = listed - expected - {"python", "pip", "libsndfile"}
    assert extra == set(), f"in environment.yml, not in pyproject.toml: {extra}"

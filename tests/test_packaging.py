"""Every dependency floor in pyproject.toml is a version the suite has run against: the
version docker/constraints.txt records as tested. An older floor would let pip install a
release nobody ran, such as a Ray that starts without token auth."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    for name, extra in project["optional-dependencies"].items():
        if name != "dev":  # test tools: not installed by users, not in the image
            found += [Requirement(r) for r in extra]
    return found


def _tested() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "docker" / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _floor_problems(requirements: list[Requirement], tested: dict[str, Version]) -> list[str]:
    problems = []
    for req in requirements:
        floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
        pin = tested.get(canonicalize_name(req.name))
        if not floors:
            problems.append(f"{req}: no floor")
        elif pin is None:
            problems.append(f"{req}: not in docker/constraints.txt, so never recorded as tested")
        elif pin not in req.specifier:
            problems.append(f"{req}: the tested {pin} is outside it")
        elif max(floors) != pin:
            problems.append(f"{req}: floor {max(floors)} is not the tested {pin}")
    return problems


def test_each_floor_is_a_tested_release_line():
    assert _floor_problems(_requirements(), _tested()) == []
    ray = next(r for r in _requirements() if r.name == "ray")
    assert Version("2.59.9") not in ray.specifier, "a Ray without token auth by default would install"


def test_the_check_catches_an_old_floor_and_an_untested_dependency():
    tested = {"ray": Version("2.60.0"), "optuna": Version("5.1.0")}
    assert _floor_problems([Requirement("ray[tune]>=2.40")], tested) == [
        "ray[tune]>=2.40: floor 2.40 is not the tested 2.60.0"
    ]
    assert _floor_problems([Requirement("ray[tune]>=2.60")], tested) == [], "2.60 is 2.60.0"
    assert _floor_problems([Requirement("optuna>=5.1.0"), Requirement("ray>=2.60.0,<3")], tested) == []
    assert _floor_problems([Requirement("optuna>=5.0.9")], tested) == [
        "optuna>=5.0.9: floor 5.0.9 is not the tested 5.1.0"
    ]
    assert _floor_problems([Requirement("optuna>=5.2")], tested) == [
        "optuna>=5.2: the tested 5.1.0 is outside it"
    ]
    assert _floor_problems([Requirement("optuna")], tested) == ["optuna: no floor"]
    assert _floor_problems([Requirement("boto3>=1.0")], tested) == [
        "boto3>=1.0: not in docker/constraints.txt, so never recorded as tested"
    ]

"""The locks build.py installs from (locks/*.txt) agree with the ranges users install with (pyproject.toml).

A lock that pinned a version outside a range, or left a dependency unpinned, would make the tests run on
versions no user gets, or let a new upstream release reach CI unannounced.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("tbsd_build_locks", REPO / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)


def read_lock(path: Path) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert match, f"{path.name}: '{line}' is not an exact pin (name==version)"
        pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in project["dependencies"] + extras["test"] + extras["ray"]]


def test_backend_lock_pins_every_dependency_inside_its_range() -> None:
    pins = read_lock(build.BACKEND_LOCK)
    for req in project_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a dependency but locks/backend.txt does not pin it"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"locks/backend.txt pins {req.name}=={pins[name]}, outside pyproject.toml's range '{req.specifier}'")
    assert str(pins["torch"]).split("+")[0] == build.TORCH.split("==")[1]


@pytest.mark.parametrize("key", list(build.BLENDERS))
def test_each_blender_lock_pins_its_bpy_and_says_which_python(key: str) -> None:
    blender = build.BLENDERS[key]
    lock = build._blender_lock(blender.pin)
    pins = read_lock(lock)
    assert str(pins["bpy"]) == blender.pin.split("==")[1]
    assert "with Python {}.{}".format(*blender.python) in lock.read_text().splitlines()[0]


def test_every_lock_file_belongs_to_a_blender_build_py_sets_up() -> None:
    # A lock left behind after a pin moved would look maintained while nothing installs from it.
    wanted = {build._blender_lock(b.pin).name for b in build.BLENDERS.values()}
    assert {p.name for p in build.LOCKS.glob("blender-*.txt")} == wanted


@pytest.mark.skipif(Path(sys.prefix).resolve() != build.VENV.resolve(),
                    reason="only build.py's own .venv is installed from the lock")
def test_the_environment_running_the_tests_is_the_locked_one() -> None:
    # build.py test installs with `-c locks/backend.txt`; any drift (a manual upgrade, a stale .venv) shows here.
    pins = read_lock(build.BACKEND_LOCK)
    for req in project_requirements():
        name = canonicalize_name(req.name)
        installed = Version(metadata.version(req.name))
        assert installed == pins[name], f"{req.name} {installed} is installed; the lock says {pins[name]}"


def test_a_pin_outside_the_range_is_caught(tmp_path: Path) -> None:
    bad = tmp_path / "backend.txt"
    bad.write_text("numpy==1.0\n")
    req = Requirement("numpy>=1.24")
    assert not req.specifier.contains(read_lock(bad)["numpy"])
    bad.write_text("numpy>=1.24\n")
    with pytest.raises(AssertionError, match="not an exact pin"):
        read_lock(bad)

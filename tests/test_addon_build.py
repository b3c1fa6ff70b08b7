"""The Blender extension zip (`python build.py addon`) and helpers the other add-on tests import.

The zip is built once per test session by build.py itself; every Blender-side test installs that zip as an
extension into a fresh $BLENDER_USER_RESOURCES, exactly as a user would, so what is tested is what ships.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import blender_support  # tests/ helper (pytest puts tests/ on sys.path)

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "blender"
MANIFEST = tomllib.loads((REPO / "blender_addon" / "blender_manifest.toml").read_text())
_spec = importlib.util.spec_from_file_location("tbsd_build", REPO / "build.py")
BUILD = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(BUILD)
# Blender's extension tool inside a bpy wheel (bpy/<major.minor>/...), the same code "Install from Disk" runs.
BL_PKG_CLI = "bpy/{}/scripts/addons_core/bl_pkg/cli/blender_ext.py"


@pytest.fixture(scope="session")
def addon_zip() -> Path:
    proc = subprocess.run([sys.executable, str(REPO / "build.py"), "addon"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"build.py addon failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    path = REPO / "dist" / f"{MANIFEST['id']}-{MANIFEST['version']}.zip"
    assert path.exists(), proc.stdout
    return path


def blender_python_of(key: str) -> Path:
    """The interpreter of build.BLENDERS[key]'s environment (fails the test, naming the set-up, if missing)."""
    blender = BUILD.BLENDERS[key]
    return blender_support.blender_python(blender.env_var, BUILD._venv_python(blender.venv))


def run_blender_script(script: str, *args: str | Path, tmp_path: Path, timeout: float = 300,
                       env: dict[str, str] | None = None, python: Path | None = None) -> dict:
    """Run tests/blender/<script> with a bpy wheel's Python (the default Blender's unless ``python``) and a fresh
    user-resources folder; its JSON."""
    resources = tmp_path / "blender_user"
    resources.mkdir(exist_ok=True)
    full_env = dict(blender_support._clean_env(), BLENDER_USER_RESOURCES=str(resources), **(env or {}))
    cmd = [str(python or blender_support.blender_python()), str(SCRIPTS / script), *map(str, args)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{script} timed out after {timeout} s\nstderr:\n{(exc.stderr or b'')[-4000:]!r}") from exc
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    report = json.loads(lines[-1]) if lines else None
    if proc.returncode != 0 or report is None or "error" in report:
        error = report.get("traceback", report.get("error")) if report else "no JSON line on stdout"
        raise AssertionError(f"{script} failed (exit {proc.returncode}): {error}\n"
                             f"command: {' '.join(cmd)}\nstderr:\n{proc.stderr[-6000:]}")
    report["stderr"] = proc.stderr
    return report


def test_manifest_is_an_extension_for_blender_4_2_to_5_3():
    assert MANIFEST["schema_version"] == "1.0.0"
    assert MANIFEST["type"] == "add-on"
    assert MANIFEST["blender_version_min"] == "4.2.0"
    assert MANIFEST["blender_version_max"] == "5.4.0"  # exclusive: every 5.3.x
    # The bounds are the tested range: the oldest and newest Blender build.py sets up are inside them.
    tested = sorted(tuple(map(int, key.split("."))) for key in BUILD.BLENDERS)
    assert tested[0] == (4, 2) and tested[-1] < (5, 4)
    assert sorted(MANIFEST["platforms"]) == ["linux-x64", "macos-arm64", "macos-x64", "windows-x64"]
    assert set(MANIFEST["permissions"]) == {"network", "files"}
    assert all(reason and reason[-1].isalnum() for reason in MANIFEST["permissions"].values())


def test_wheels_cover_every_tested_blender_python_on_every_platform_with_one_pyzmq():
    tags = [BUILD._wheel_tags(Path(w).name) for w in MANIFEST["wheels"]]
    assert len({(dist, version) for dist, version, _, _ in tags}) == 1  # one pyzmq version for every Blender
    pythons = {"{}.{}".format(*b.python) for b in BUILD.BLENDERS.values()}
    assert pythons == {"3.11", "3.13"}
    for python in pythons:
        plats = " ".join(p for _, _, py, ps in tags if py == python for p in ps)
        assert "manylinux" in plats and "win_amd64" in plats and "universal2" in plats, (python, plats)
    # Blender drops an abi3 wheel when a version-specific one is listed: only cpXY-cpXY wheels.
    assert not any("abi3" in w for w in MANIFEST["wheels"])


def test_wheel_python_version_comes_from_the_file_name():
    assert BUILD._wheel_tags("pyzmq-26.4.0-cp313-cp313-win_amd64.whl") == ("pyzmq", "26.4.0", "3.13", ["win_amd64"])
    assert BUILD._wheel_tags("pyzmq-26.4.0-cp311-cp311-manylinux_2_26_x86_64.manylinux_2_28_x86_64.whl")[2:] == (
        "3.11", ["manylinux_2_26_x86_64", "manylinux_2_28_x86_64"])
    with pytest.raises(SystemExit, match="CPython-specific"):
        BUILD._wheel_tags("pyzmq-27.3.0-py3-none-any.whl")


def test_zip_holds_addon_shared_and_pyzmq_wheels_for_two_pythons_and_four_platforms(addon_zip):
    with zipfile.ZipFile(addon_zip) as zf:
        names = set(zf.namelist())
        assert "blender_manifest.toml" in names and "__init__.py" in names
        assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
        # The product's shared package as a subpackage of the add-on: the same text, with its absolute
        # imports of itself made relative (and nothing else changed).
        for path in (REPO / "shared").glob("*.py"):
            vendored = zf.read(f"_vendor/shared/{path.name}").decode()
            assert "from shared" not in vendored and "import shared" not in vendored, path.name
            assert vendored == BUILD.vendored_source(path.read_text()), path.name
            assert len(vendored.splitlines()) == len(path.read_text().splitlines())
        wheels = sorted(n for n in names if n.startswith("wheels/"))
        # Each is a real wheel for the Python its name says (its WHEEL metadata agrees).
        for name in wheels:
            python_tag = name.split("-")[2]
            wheel_meta = next(n for n in zipfile.ZipFile(zf.open(name)).namelist() if n.endswith(".dist-info/WHEEL"))
            assert f"Tag: {python_tag}-{python_tag}-" in zipfile.ZipFile(zf.open(name)).read(wheel_meta).decode()
    listed = sorted(w.removeprefix("./") for w in MANIFEST["wheels"])
    assert wheels == listed
    assert {w.split("-")[2] for w in wheels} == {"cp311", "cp313"}


@pytest.mark.parametrize("key", ["4.5", "5.3"])
def test_blenders_own_validator_accepts_the_zip(addon_zip, key):
    py = blender_python_of(key)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, env=blender_support._clean_env()).stdout.strip()
    proc = subprocess.run([str(py), os.path.join(site, BL_PKG_CLI.format(key)), "validate", str(addon_zip)],
                          capture_output=True, text=True, env=blender_support._clean_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout


def test_find_python_uses_pyenv_installs_and_names_what_to_install_when_there_is_none(tmp_path, monkeypatch):
    # A pyenv tree whose 3.13 is a real interpreter (the one build.py found for bpy 5.3), with nothing on PATH.
    real = BUILD.find_python(BUILD.BLENDERS["5.3"].python)[0]
    (tmp_path / "versions" / "3.13.1" / "bin").mkdir(parents=True)
    (tmp_path / "versions" / "3.13.1" / "bin" / "python3.13").symlink_to(real)
    (tmp_path / "versions" / "3.13.0rc1" / "bin").mkdir(parents=True)  # no interpreter in it: skipped
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert BUILD.find_python((3, 13)) == [str(tmp_path / "versions" / "3.13.1" / "bin" / "python3.13")]
    with pytest.raises(SystemExit, match=r"Python 3\.99 not found .* Install CPython 3\.99 \(`pyenv install 3\.99`"):
        BUILD.find_python((3, 99))

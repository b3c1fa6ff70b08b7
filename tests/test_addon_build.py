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
BL_PKG_CLI = "bpy/4.5/scripts/addons_core/bl_pkg/cli/blender_ext.py"


@pytest.fixture(scope="session")
def addon_zip() -> Path:
    proc = subprocess.run([sys.executable, str(REPO / "build.py"), "addon"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"build.py addon failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    path = REPO / "dist" / f"{MANIFEST['id']}-{MANIFEST['version']}.zip"
    assert path.exists(), proc.stdout
    return path


def run_blender_script(script: str, *args: str | Path, tmp_path: Path, timeout: float = 300,
                       env: dict[str, str] | None = None) -> dict:
    """Run tests/blender/<script> with the bpy wheel's Python and a fresh user-resources folder; its JSON."""
    resources = tmp_path / "blender_user"
    resources.mkdir(exist_ok=True)
    full_env = dict(blender_support._clean_env(), BLENDER_USER_RESOURCES=str(resources), **(env or {}))
    cmd = [str(blender_support.blender_python()), str(SCRIPTS / script), *map(str, args)]
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


def test_manifest_is_an_extension_for_blender_4_2_to_5_0():
    assert MANIFEST["schema_version"] == "1.0.0"
    assert MANIFEST["type"] == "add-on"
    assert MANIFEST["blender_version_min"] == "4.2.0"
    assert MANIFEST["blender_version_max"] == "5.1.0"  # exclusive: every 5.0.x
    assert set(MANIFEST["permissions"]) == {"network", "files"}
    assert all(reason and reason[-1].isalnum() for reason in MANIFEST["permissions"].values())


def test_zip_holds_addon_shared_and_pyzmq_wheels_for_three_platforms(addon_zip):
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
    listed = sorted(w.removeprefix("./") for w in MANIFEST["wheels"])
    assert wheels == listed
    tags = " ".join(wheels)
    assert all("cp311" in w for w in wheels)
    assert "manylinux" in tags and "win_amd64" in tags and ("universal2" in tags or "arm64" in tags)


def test_blenders_own_validator_accepts_the_zip(addon_zip):
    py = blender_support.blender_python()
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, env=blender_support._clean_env()).stdout.strip()
    proc = subprocess.run([str(py), os.path.join(site, BL_PKG_CLI), "validate", str(addon_zip)],
                          capture_output=True, text=True, env=blender_support._clean_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout

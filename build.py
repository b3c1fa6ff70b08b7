#!/usr/bin/env python3
"""One entry point for the project: set up, run the demo, run the tests.

    python build.py demo   # the main job end to end on the embedded procedural prior
    python build.py test   # the test suite
    python build.py setup  # only set up both environments
    python build.py addon  # the Blender extension zip, dist/<id>-<version>.zip
    python build.py lock   # re-resolve the newest versions pyproject.toml allows; rewrites locks/*.txt

Each command sets itself up from nothing: a virtual environment in .venv with the CPU build of
torch (torch==2.13.0, from the local disk on these machines) and the project with its test extras, at the
exact versions in locks/backend.txt (pyproject.toml keeps the ranges users install with; the lock is what
the tests last passed with, so a new release upstream cannot turn a green CI red without a change here).
`test` and `setup` also make .venv-blender, a separate environment holding Blender's Python API (the bpy
wheel, Blender 4.5 LTS), which the tests use to import our GLB files with Blender's own glTF importer; it is
kept apart from .venv because bpy pins numpy<2 and weighs ~370 MB download / ~820 MB installed.
Only the standard library is used here, so a bare Python 3.11 can run it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
TORCH = "torch==2.13.0"
BLENDER_VENV = ROOT / ".venv-blender"
# Blender 4.5 LTS as a Python module; its wheels are built for CPython 3.11 only.
BPY = "bpy==4.5.15"
BPY_PYTHON = (3, 11)
# The tests find the Blender environment's interpreter through this variable (see tests/blender_support.py).
BLENDER_PYTHON_ENV_VAR = "TBSD_BLENDER_PYTHON"


def _venv_python(venv_dir: Path) -> Path:
    return venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _python() -> Path:
    return _venv_python(VENV)


def blender_python() -> Path:
    """The interpreter of .venv-blender (which may not exist yet)."""
    return _venv_python(BLENDER_VENV)


def _run(cmd: list[str], **kwargs) -> None:
    print("+ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


LOCKS = ROOT / "locks"
BACKEND_LOCK = LOCKS / "backend.txt"


def _blender_lock(bpy_pin: str) -> Path:
    return LOCKS / f"blender-{bpy_pin.replace('==', '-')}.txt"


def _fingerprint(*paths: Path, extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        digest.update(path.read_bytes() if path.exists() else b"<missing>")
    return digest.hexdigest()


def _constraints(lock: Path) -> list[str]:
    """pip arguments that hold an install to the lock (none while the lock is being made)."""
    return ["-c", str(lock)] if lock.exists() else []


def ensure_env(lock: Path | None = BACKEND_LOCK, venv_dir: Path = VENV) -> Path:
    """Create ``venv_dir`` and install the project into it at the locked versions; skipped when neither
    pyproject.toml nor the lock has changed. ``lock=None`` installs the newest versions the ranges allow."""
    stamp = venv_dir / ".installed"
    py = _venv_python(venv_dir)
    wanted = _fingerprint(ROOT / "pyproject.toml", *([lock] if lock else []), extra=TORCH)
    if stamp.exists() and stamp.read_text() == wanted and py.exists():
        return py
    if not py.exists():
        print(f"creating {venv_dir}", flush=True)
        venv.EnvBuilder(with_pip=True).create(venv_dir)
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    constraints = _constraints(lock) if lock else []
    _run(pip + [TORCH] + constraints)
    _run(pip + ["-e", f"{ROOT}[test]"] + constraints)
    stamp.write_text(wanted)
    return py


def _freeze(py: Path, header: str) -> str:
    """``pip freeze`` of an environment without the project itself and pip's own tools."""
    out = subprocess.run([str(py), "-m", "pip", "freeze", "--disable-pip-version-check", "--exclude-editable"],
                         check=True, capture_output=True, text=True).stdout
    lines = sorted((ln for ln in out.splitlines() if ln and not ln.startswith(("-e ", "tbsd-studio"))),
                   key=str.lower)
    return header + "\n".join(lines) + "\n"


def cmd_lock(extra: list[str]) -> int:
    """Resolve afresh in throw-away environments and write the locks the set-up installs from."""
    import tempfile

    LOCKS.mkdir(exist_ok=True)
    made = time.strftime("%Y-%m-%d")
    with tempfile.TemporaryDirectory(prefix="tbsd-lock-") as tmp:
        py = ensure_env(lock=None, venv_dir=Path(tmp) / "backend")
        BACKEND_LOCK.write_text(_freeze(py, f"# Made by `python build.py lock` on {made} with Python "
                                            f"{platform.python_version()}: the backend's and tests' exact versions.\n"))
        print(f"wrote {BACKEND_LOCK}", flush=True)
        bpy_py = ensure_blender_env(lock=None, venv_dir=Path(tmp) / "blender")
        lock = _blender_lock(BPY)
        lock.write_text(_freeze(bpy_py, f"# Made by `python build.py lock` on {made}: {BPY} and what it needs.\n"))
        print(f"wrote {lock}", flush=True)
    return 0


def _python_for_bpy() -> list[str]:
    """A command that runs a CPython of the version the bpy wheels are built for."""
    if sys.version_info[:2] == BPY_PYTHON:
        return [sys.executable]
    name = "python{}.{}".format(*BPY_PYTHON)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(
            f"error: {BPY} needs Python {name[6:]} (it ships wheels for that version only); "
            f"run build.py with {name}, or put {name} on PATH"
        )
    return [found]


def ensure_blender_env(lock: Path | None = _blender_lock(BPY), venv_dir: Path = BLENDER_VENV) -> Path:
    """Create ``venv_dir`` with Blender's Python module (bpy) in it at the locked versions; skipped when the pin
    and the lock have not changed.

    Returns that environment's interpreter. Separate from .venv: bpy pins numpy<2, and it is large.
    """
    stamp = venv_dir / ".installed"
    py = _venv_python(venv_dir)
    wanted = _fingerprint(*([lock] if lock else []), extra=BPY)
    if stamp.exists() and stamp.read_text() == wanted and py.exists():
        return py
    if not py.exists():
        print(f"creating {venv_dir}", flush=True)
        base = _python_for_bpy()
        if base == [sys.executable]:
            venv.EnvBuilder(with_pip=True).create(venv_dir)
        else:
            _run(base + ["-m", "venv", venv_dir])
    print(f"installing {BPY} into {venv_dir} (about 370 MB to download, 820 MB installed)", flush=True)
    _run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q", BPY] + (_constraints(lock) if lock else []))
    # bpy imports only on the Python it was built for, with its own libraries; check once, here.
    _run([py, "-c", "import bpy; print('bpy', bpy.app.version_string)"])
    stamp.write_text(wanted)
    return py


def cmd_setup(extra: list[str]) -> int:
    ensure_env()
    ensure_blender_env()
    return 0


def cmd_test(extra: list[str]) -> int:
    py = ensure_env()
    blender_py = ensure_blender_env()
    env = dict(os.environ, **{BLENDER_PYTHON_ENV_VAR: str(blender_py)})
    proc = subprocess.run([str(py), "-m", "pytest", *extra], cwd=ROOT, env=env)
    if proc.returncode == 5:
        print("error: pytest collected no tests", file=sys.stderr)
        return 1
    return proc.returncode


def cmd_demo(extra: list[str]) -> int:
    """The artist's path end to end: the built extension installed in headless Blender (bpy wheel) drives a
    backend process on the procedural prior through its real operators and timers, streams the object into
    the scene, saves a .blend and renders a PNG. Optional: a prompt, then a JSON object of settings."""
    py = ensure_env()
    blender_py = ensure_blender_env()
    zip_path = build_addon()
    out = ROOT / "demo_out"
    # bpy's own Python must not see the project's environment variables meant for .venv.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([str(blender_py), str(ROOT / "tests" / "blender" / "addon_demo.py"), str(zip_path),
                           str(py), str(ROOT), str(out), *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          text=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:])
        return proc.returncode
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"demo: scene saved to {report['blend']}\n      render of the object: {report['png']}")
    print(f"      (the 2D comparison of every method: {py} -m backend.demo --out demo_out/methods)")
    return 0


# --- the Blender add-on (an extension zip) ---------------------------------------------------------------
ADDON_SRC = ROOT / "blender_addon"
WHEEL_CACHE = ROOT / ".cache" / "wheels"
DIST = ROOT / "dist"
# Not shipped from the add-on folder: build products and the copies build_addon puts in the zip itself.
_ADDON_SKIP = {"__pycache__", "_vendor", "wheels", ".gitignore"}


def _wheel_tags(filename: str) -> tuple[str, str, list[str]]:
    """(distribution, version, platform tags) of a wheel file name (PEP 427)."""
    parts = filename[: -len(".whl")].split("-")
    return parts[0], parts[1], parts[-1].split(".")


def fetch_wheels(wheels: list[str], python_version: str = "3.11") -> list[Path]:
    """Download each wheel named in the manifest into .cache/wheels (kept between builds); returns their paths.

    The manifest's file names say which distribution, version and platform to ask pip for, so the manifest is
    the one place the pin lives.
    """
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    paths = []
    for entry in wheels:
        name = Path(entry).name
        path = WHEEL_CACHE / name
        if not path.exists():
            dist, version, platforms = _wheel_tags(name)
            # pip of this interpreter, else of .venv (a bare Python may come without pip).
            pip_python = sys.executable if importlib.util.find_spec("pip") else ensure_env()
            cmd = [pip_python, "-m", "pip", "download", "--disable-pip-version-check", "-q",
                   f"{dist}=={version}", "--only-binary=:all:", "--no-deps", "--python-version", python_version,
                   "-d", WHEEL_CACHE]
            for platform in platforms:
                cmd += ["--platform", platform]
            _run(cmd)
            if not path.exists():
                raise SystemExit(f"error: pip did not download {name} (the manifest names a wheel PyPI does not have)")
        paths.append(path)
    return paths


def vendored_source(text: str) -> str:
    """A shared/ module as it goes into the add-on: ``from shared.x import`` becomes ``from .x import``.

    Inside Blender the package is ``<extension>._vendor.shared``, never a top-level ``shared`` (an extension
    must not put names on sys.path that another add-on could shadow), so absolute imports of it are made relative.
    """
    import re

    return re.sub(r"^(\s*)from shared((?:\.\w+)*) import ", lambda m: f"{m[1]}from .{m[2][1:]} import ",
                  text, flags=re.MULTILINE)


def build_addon() -> Path:
    """Write dist/<id>-<version>.zip: the add-on, shared/ as _vendor/shared, and the manifest's wheels."""
    import tomllib
    import zipfile

    manifest = tomllib.loads((ADDON_SRC / "blender_manifest.toml").read_text(encoding="utf-8"))
    wheels = fetch_wheels(manifest.get("wheels", []))
    DIST.mkdir(exist_ok=True)
    out = DIST / f"{manifest['id']}-{manifest['version']}.zip"
    tmp = out.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(ADDON_SRC.rglob("*")):
            rel = path.relative_to(ADDON_SRC)
            if path.is_file() and not _ADDON_SKIP.intersection(rel.parts) and path.suffix != ".pyc":
                zf.write(path, rel.as_posix())
        zf.writestr("_vendor/__init__.py", "# Packages of the product vendored into the add-on by build.py.\n")
        for path in sorted((ROOT / "shared").rglob("*.py")):
            if "__pycache__" not in path.parts:
                zf.writestr(("_vendor/shared" / path.relative_to(ROOT / "shared")).as_posix(),
                            vendored_source(path.read_text(encoding="utf-8")))
        for wheel in wheels:
            zf.write(wheel, f"wheels/{wheel.name}")
    tmp.replace(out)
    print(f"add-on: {out}", flush=True)
    return out


def cmd_addon(extra: list[str]) -> int:
    build_addon()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("demo", "test", "setup", "addon", "lock"))
    args, extra = parser.parse_known_args()
    return {"demo": cmd_demo, "test": cmd_test, "setup": cmd_setup, "addon": cmd_addon,
            "lock": cmd_lock}[args.command](extra)


if __name__ == "__main__":
    sys.exit(main())

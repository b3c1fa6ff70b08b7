#!/usr/bin/env python3
"""One entry point for the project: set up, run the demo, run the tests.

    python build.py demo   # the main job end to end on the embedded procedural prior
    python build.py test   # the test suite
    python build.py setup  # only set up the environments
    python build.py setup --gpu [--model M] [--dry-run]  # the backend's CUDA environment (.venv-gpu) for the add-on
    python build.py addon  # the Blender extension zip, dist/<id>-<version>.zip
    python build.py lock   # re-resolve the newest versions pyproject.toml allows; rewrites locks/*.txt

Each command sets itself up from nothing: a virtual environment in .venv with the CPU build of
torch (torch==2.13.0, from the local disk on these machines) and the project with its test and ray extras, at the
exact versions in locks/backend.txt (pyproject.toml keeps the ranges users install with; the lock is what
the tests last passed with, so a new release upstream cannot turn a green CI red without a change here).
`test` and `setup` also make .venv-blender, a separate environment holding Blender's Python API (the bpy
wheel, Blender 4.5 LTS), which the tests use to import our GLB files with Blender's own glTF importer and to run
the add-on; it is kept apart from .venv because bpy pins numpy<2 and weighs ~370 MB download / ~820 MB
installed. They also make .venv-blender-4.2, -5.0 (Python 3.11) and -5.3 (Python 3.13, found on PATH or in
pyenv) for the add-on's smoke tests on the rest of its supported range (BLENDERS below).
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
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
TORCH = "torch==2.13.0"


class Blender(NamedTuple):
    """One Blender release as a Python module (the bpy wheel) the tests run the add-on on."""

    pin: str  # "bpy==4.5.15"
    python: tuple[int, int]  # bpy wheels exist for exactly one CPython: the one that Blender release embeds
    venv: Path
    env_var: str  # how build.py tells the tests where that environment's interpreter is


# The Blenders the extension is tested on, its whole supported range: 4.2 LTS (the manifest's minimum), 4.5 LTS,
# 5.0 (the last on Python 3.11) and the newest 5.x (Python 3.13; found with `pip index versions bpy` run by a
# Python 3.13). The first is the default: the demo and the full add-on suite run on it; every one runs the smoke
# and lifecycle tests, the newest the generate tests too (tests/test_addon_*.py), which keeps CI's time in budget.
BLENDERS: dict[str, Blender] = {
    "4.5": Blender("bpy==4.5.15", (3, 11), ROOT / ".venv-blender", "TBSD_BLENDER_PYTHON"),
    "4.2": Blender("bpy==4.2.23", (3, 11), ROOT / ".venv-blender-4.2", "TBSD_BLENDER_PYTHON_4_2"),
    "5.0": Blender("bpy==5.0.1", (3, 11), ROOT / ".venv-blender-5.0", "TBSD_BLENDER_PYTHON_5_0"),
    "5.3": Blender("bpy==5.3.0", (3, 13), ROOT / ".venv-blender-5.3", "TBSD_BLENDER_PYTHON_5_3"),
}
DEFAULT_BLENDER = BLENDERS["4.5"]
BLENDER_VENV = DEFAULT_BLENDER.venv
BPY = DEFAULT_BLENDER.pin
# The tests find the default Blender environment's interpreter through this variable (tests/blender_support.py).
BLENDER_PYTHON_ENV_VAR = DEFAULT_BLENDER.env_var


# What making one environment takes on disk at its peak, measured on Linux: the installed tree plus pip's cached
# copy of the wheels (pip keeps them, so a second clone on the machine downloads nothing). A bpy environment is
# ~850 MB installed from a ~400 MB wheel; the backend's is ~1.7 GB, most of it torch.
BACKEND_ENV_BYTES = 2_500 * 2**20
BLENDER_ENV_BYTES = 1_400 * 2**20


def _existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def require_free_space(needs: dict[Path, int]) -> None:
    """Stop before installing when a filesystem lacks the room: pip's own "No space left on device" comes after
    minutes of downloads and names neither the environment nor the amount. ``needs`` maps a path about to be
    written to the bytes it will take; paths on one filesystem add up."""
    by_device: dict[int, tuple[Path, int]] = {}
    for path, size in needs.items():
        path = _existing(path)
        dev = path.stat().st_dev
        seen, total = by_device.get(dev, (path, 0))
        by_device[dev] = (seen, total + size)
    for path, size in by_device.values():
        free = shutil.disk_usage(path).free
        if free < size:
            raise SystemExit(
                f"error: setting up the environments needs about {size / 2**30:.1f} GB free on the filesystem of "
                f"{path}, and {free / 2**30:.1f} GB is free. Free some space (each clone's .venv* folders take "
                f"about {(BACKEND_ENV_BYTES + len(BLENDERS) * BLENDER_ENV_BYTES) / 2**30:.0f} GB) and run "
                f"build.py again")


def _venv_python(venv_dir: Path) -> Path:
    return venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


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
        require_free_space({venv_dir: BACKEND_ENV_BYTES})
        print(f"creating {venv_dir}", flush=True)
        venv.EnvBuilder(with_pip=True).create(venv_dir)
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    constraints = _constraints(lock) if lock else []
    _run(pip + [TORCH] + constraints)
    # The ray extra too: CI runs the Ray executor's tests on a real local Ray instance.
    _run(pip + ["-e", f"{ROOT}[test,ray]"] + constraints)
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
        for key, blender in BLENDERS.items():
            write_blender_lock(blender, Path(tmp) / f"blender-{key}", made)
            shutil.rmtree(Path(tmp) / f"blender-{key}")  # ~800 MB each: one at a time on disk
    return 0


def write_blender_lock(blender: Blender, venv_dir: Path, made: str) -> Path:
    """Install ``blender.pin`` unconstrained into ``venv_dir`` and write its lock from what pip chose."""
    py = ensure_blender_env(blender, lock=None, venv_dir=venv_dir)
    lock = _blender_lock(blender.pin)
    lock.write_text(_freeze(py, f"# Made by `python build.py lock` on {made} with Python "
                                f"{'.'.join(map(str, blender.python))}: {blender.pin} and what it needs.\n"))
    print(f"wrote {lock}", flush=True)
    return lock


def _pyenv_pythons(version: tuple[int, int]) -> list[Path]:
    """pyenv's installs of ``version``, newest patch release first. pyenv's shim on PATH runs only the versions
    `pyenv global` names, yet every installed one is usable by its full path."""
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    dotted = "{}.{}".format(*version)
    if os.name == "nt":  # pyenv-win
        found = (root / "pyenv-win" / "versions").glob(f"{dotted}.*/python.exe")
    else:
        found = (root / "versions").glob(f"{dotted}.*/bin/python{dotted}")

    def patch(path: Path) -> int:
        tail = path.parent.name if os.name == "nt" else path.parent.parent.name
        last = tail.split(".")[-1]
        return int(last) if last.isdigit() else -1  # a pre-release sorts last

    return sorted((p for p in found if p.is_file()), key=patch, reverse=True)


def find_python(version: tuple[int, int]) -> list[str]:
    """A command that runs CPython ``version``: this interpreter, ``pythonX.Y`` on PATH, the Windows launcher
    (``py -X.Y``) or a pyenv install. Each candidate is run once to check, since a pyenv shim or a stale link can
    be on PATH and fail."""
    if sys.version_info[:2] == version:
        return [sys.executable]
    dotted = "{}.{}".format(*version)
    candidates: list[list[str]] = []
    if shutil.which(f"python{dotted}"):
        candidates.append([shutil.which(f"python{dotted}")])
    if os.name == "nt" and shutil.which("py"):
        candidates.append([shutil.which("py"), f"-{dotted}"])
    candidates += [[str(p)] for p in _pyenv_pythons(version)]
    for cmd in candidates:
        try:
            out = subprocess.run(cmd + ["-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=60).stdout.strip()
        except OSError:
            continue
        if out == dotted:
            return cmd
    raise SystemExit(
        f"error: Python {dotted} not found (looked for python{dotted} on PATH"
        + (", `py -{dotted}`" if os.name == "nt" else "")
        + f" and pyenv's versions/{dotted}.*). Install CPython {dotted} (`pyenv install {dotted}`, python.org, "
        f"or your package manager, e.g. `apt install python{dotted} python{dotted}-venv`) and run build.py again"
    )


def ensure_blender_env(blender: Blender = DEFAULT_BLENDER, lock: Path | None | bool = True,
                       venv_dir: Path | None = None) -> Path:
    """Create ``blender``'s environment with Blender's Python module (bpy) in it at the locked versions
    (``lock=True``: locks/blender-bpy-<version>.txt; None: unconstrained, for `lock`); skipped when the pin and
    the lock have not changed.

    Returns that environment's interpreter. Separate from .venv: bpy pins numpy<2, and it is large.
    """
    lock_path = _blender_lock(blender.pin) if lock is True else lock or None
    venv_dir = venv_dir or blender.venv
    stamp = venv_dir / ".installed"
    py = _venv_python(venv_dir)
    wanted = _fingerprint(*([lock_path] if lock_path else []), extra=blender.pin)
    if stamp.exists() and stamp.read_text() == wanted and py.exists():
        return py
    if lock_path is not None and not lock_path.exists():
        raise SystemExit(f"error: {lock_path.relative_to(ROOT)} is missing; `python build.py lock` writes it")
    if not py.exists():
        require_free_space({venv_dir: BLENDER_ENV_BYTES})
        print(f"creating {venv_dir}", flush=True)
        base = find_python(blender.python)
        if base == [sys.executable]:
            venv.EnvBuilder(with_pip=True).create(venv_dir)
        else:
            _run(base + ["-m", "venv", venv_dir])
    print(f"installing {blender.pin} into {venv_dir} (about 400 MB to download, 850 MB installed)", flush=True)
    _run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q", blender.pin]
         + (_constraints(lock_path) if lock_path else []))
    # bpy imports only on the Python it was built for, with its own libraries; check once, here.
    _run([py, "-c", "import bpy; print('bpy', bpy.app.version_string)"])
    stamp.write_text(wanted)
    return py


def ensure_blender_envs() -> dict[str, Path]:
    """Every tested Blender's environment; the variables that tell the tests where each interpreter is."""
    # Checked once for all of them, so a short disk stops the set-up before the first download, not the third.
    require_free_space({b.venv: BLENDER_ENV_BYTES for b in BLENDERS.values() if not _venv_python(b.venv).exists()})
    return {blender.env_var: str(ensure_blender_env(blender)) for blender in BLENDERS.values()}


def cmd_setup(extra: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="build.py setup")
    parser.add_argument("--gpu", action="store_true",
                        help="make .venv-gpu, the backend's CUDA environment for the Blender add-on (Linux, Windows)")
    parser.add_argument("--model", default="procedural",
                        help="the model the backend serves by default; the check says whether it is here")
    parser.add_argument("--dry-run", action="store_true", help="with --gpu: print the plan, change nothing")
    args = parser.parse_args(extra)
    if args.gpu:
        return setup_gpu(args.model, args.dry_run)
    ensure_env()
    ensure_blender_envs()
    return 0


# --- `setup --gpu`: the backend on an artist's NVIDIA GPU ------------------------------------------------------
GPU_VENV = ROOT / ".venv-gpu"
# PyPI's torch for Linux x86_64 is the CUDA build (the CUDA libraries come as nvidia-* wheels); for Windows PyPI
# has only the CPU build, so there the CUDA build comes from PyTorch's own index (CUDA 13.0, driver 580+).
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu130"
# gsplat compiles its CUDA kernels on first use (minutes); doing it here keeps that out of the first job.
GSPLAT_COMPILE = "from gsplat.cuda._backend import _C; assert _C is not None, 'gsplat kernels did not build'"


def detect_gpus() -> list[str]:
    """NVIDIA GPUs as nvidia-smi (the driver's own tool, on Linux and Windows) lists them; [] when there is none."""
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()] if proc.returncode == 0 else []


def gpu_plan(system: str, model: str, venv_dir: Path = GPU_VENV) -> list[tuple[str, list[str]]]:
    """(what, command) for each step of `setup --gpu` on ``system`` ("Linux" or "Windows"); commands run in order.

    The environment gets the locked versions of everything but torch (the lock holds the CPU build).
    """
    py = str(venv_dir / ("Scripts/python.exe" if system == "Windows" else "bin/python"))
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check"]
    torch = pip + [TORCH] + (["--index-url", TORCH_CUDA_INDEX] if system == "Windows" else [])
    return [
        ("create the environment", [sys.executable, "-m", "venv", str(venv_dir)]),
        ("install the CUDA build of torch", torch),
        ("install the project with its CUDA extras (gsplat)",
         pip + ["-e", f"{ROOT}[cuda]", "-c", str(venv_dir / "constraints.txt")]),
        ("compile gsplat's CUDA kernels once (several minutes; needs the CUDA toolkit's nvcc and a C++ compiler)",
         [py, "-c", GSPLAT_COMPILE]),
        ("check the GPU, its memory and the model", [py, "-m", "backend.gpu_check", model]),
    ]


def setup_gpu(model: str, dry_run: bool) -> int:
    system = platform.system()
    if system not in ("Linux", "Windows"):
        print(f"error: `setup --gpu` makes a CUDA environment, which {system} does not have; run the backend on a "
              "Linux or Windows machine with an NVIDIA GPU and point the add-on's Backend address at it",
              file=sys.stderr)
        return 1
    plan = gpu_plan(system, model)
    if dry_run:
        for i, (what, cmd) in enumerate(plan, 1):
            print(f"{i}. {what}:\n   {subprocess.list2cmdline(cmd)}")
        print(f"{len(plan) + 1}. record {_venv_python(GPU_VENV)} for the add-on's Start local backend")
        return 0
    gpus = detect_gpus()
    if not gpus:
        print("error: no NVIDIA GPU found (`nvidia-smi` is missing or lists none), so `setup --gpu` stops here: it "
              "makes a CUDA environment. Install the NVIDIA driver (it brings nvidia-smi) if this machine has an "
              "NVIDIA card; otherwise `python build.py setup` makes the CPU environment, or run the backend on a "
              "GPU machine and point the add-on's Backend address at it.", file=sys.stderr)
        return 1
    print("GPU: " + "; ".join(gpus), flush=True)
    venv_dir = GPU_VENV
    venv_dir.mkdir(exist_ok=True)
    # The lock's versions for everything but torch and its CUDA libraries (the lock holds torch's CPU build).
    (venv_dir / "constraints.txt").write_text("".join(
        line + "\n" for line in BACKEND_LOCK.read_text().splitlines() if not line.startswith(("torch==", "nvidia-"))))
    for i, (what, cmd) in enumerate(plan, 1):
        if i == 1 and _venv_python(venv_dir).exists():
            continue
        print(f"[{i}/{len(plan)}] {what}", flush=True)
        _run(cmd, cwd=ROOT)
    sys.path.insert(0, str(ROOT))
    from shared import backend_config

    arguments = "-m backend serve --device cuda" + (f" --model {model}" if model != "procedural" else "")
    path = backend_config.write(str(_venv_python(venv_dir)), str(ROOT), arguments)
    print(f"recorded in {path}: the add-on's Start local backend uses {_venv_python(venv_dir)} when its "
          "preferences leave Python empty", flush=True)
    return 0


def cmd_test(extra: list[str]) -> int:
    py = ensure_env()
    env = dict(os.environ, **ensure_blender_envs())
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


def _wheel_tags(filename: str) -> tuple[str, str, str, list[str]]:
    """(distribution, version, Python version, platform tags) of a wheel file name (PEP 427).

    The Python version comes from the wheel's own CPython tag ("cp313" -> "3.13"): the add-on carries wheels for
    several Blender Pythons, and pip must be asked for each with the version it was built for.
    """
    parts = filename[: -len(".whl")].split("-")
    if len(parts) not in (5, 6):
        raise SystemExit(f"error: {filename!r} is not a wheel file name (name-version-python-abi-platform.whl)")
    python_tag = parts[-3]
    if not (python_tag.startswith("cp3") and python_tag[3:].isdigit()):
        raise SystemExit(f"error: wheel {filename!r} has Python tag {python_tag!r}; the add-on needs CPython-specific "
                         "wheels such as cp311 or cp313 (Blender reads its supported Pythons from these tags)")
    return parts[0], parts[1], f"3.{python_tag[3:]}", parts[-1].split(".")


def fetch_wheels(wheels: list[str]) -> list[Path]:
    """Download each wheel named in the manifest into .cache/wheels (kept between builds); returns their paths.

    The manifest's file names say which distribution, version, Python and platform to ask pip for, so the manifest
    is the one place the pin lives.
    """
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    paths = []
    for entry in wheels:
        name = Path(entry).name
        path = WHEEL_CACHE / name
        if not path.exists():
            dist, version, python_version, platforms = _wheel_tags(name)
            # pip of this interpreter, else of .venv (a bare Python may come without pip).
            pip_python = sys.executable if importlib.util.find_spec("pip") else ensure_env()
            cmd = [pip_python, "-m", "pip", "download", "--disable-pip-version-check", "-q",
                   f"{dist}=={version}", "--only-binary=:all:", "--no-deps", "--implementation", "cp",
                   "--python-version", python_version, "-d", WHEEL_CACHE]
            for platform_tag in platforms:
                cmd += ["--platform", platform_tag]
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

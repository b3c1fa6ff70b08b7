#!/usr/bin/env python3
"""One entry point for the project: set up, run the demo, run the tests.

    python build.py demo   # the main job end to end on the embedded procedural prior
    python build.py test   # the test suite

Each command sets itself up from nothing: a virtual environment in .venv with the CPU build of
torch (torch==2.13.0, from the local disk on these machines) and the project with its test extras.
Only the standard library is used here, so a bare Python 3.11 can run it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
TORCH = "torch==2.13.0"


def _python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _run(cmd: list[str], **kwargs) -> None:
    print("+ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def ensure_env() -> Path:
    """Create .venv and install the project into it; skipped when pyproject.toml has not changed."""
    stamp = VENV / ".installed"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted and _python().exists():
        return _python()
    if not _python().exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    py = _python()
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    _run(pip + [TORCH])
    _run(pip + ["-e", f"{ROOT}[test]"])
    stamp.write_text(wanted)
    return py


def cmd_test(extra: list[str]) -> int:
    py = ensure_env()
    proc = subprocess.run([str(py), "-m", "pytest", *extra], cwd=ROOT)
    if proc.returncode == 5:
        print("error: pytest collected no tests", file=sys.stderr)
        return 1
    return proc.returncode


def cmd_demo(extra: list[str]) -> int:
    py = ensure_env()
    out = ROOT / "demo_out"
    proc = subprocess.run([str(py), "-m", "backend.demo", "--out", str(out), *extra], cwd=ROOT)
    return proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("demo", "test", "setup"))
    args, extra = parser.parse_known_args()
    if args.command == "setup":
        ensure_env()
        return 0
    return {"demo": cmd_demo, "test": cmd_test}[args.command](extra)


if __name__ == "__main__":
    sys.exit(main())

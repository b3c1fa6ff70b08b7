"""Run the Khronos glTF-Validator (npm package ``gltf-validator``) on files, through node.

The package is installed once into ``<repo>/.cache/node`` (git-ignored) with npm. Every ``2.x`` release of it
is a pre-release (``2.0.0-dev.*``), which the range ``@2`` does not match, so the version is pinned.
Failures to find node/npm or to install raise ``ValidatorUnavailable`` with the reason: tests that need the
validator then fail loudly rather than skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREFIX = REPO / ".cache" / "node"
PACKAGE = "gltf-validator"
VERSION = "2.0.0-dev.3.10"
SCRIPT = Path(__file__).with_name("validate_gltf.mjs")


class ValidatorUnavailable(RuntimeError):
    """node, npm or the gltf-validator package could not be made available."""


def ensure_installed() -> Path:
    """Install ``gltf-validator`` into the cache folder if it is not there; return the npm prefix."""
    if shutil.which("node") is None:
        raise ValidatorUnavailable("node is not on PATH: the glTF validator runs on Node.js (>= 14)")
    if (PREFIX / "node_modules" / PACKAGE / "package.json").exists():
        return PREFIX
    npm = shutil.which("npm")
    if npm is None:
        raise ValidatorUnavailable("npm is not on PATH: it is needed once to install the glTF validator")
    PREFIX.mkdir(parents=True, exist_ok=True)
    cmd = [npm, "install", "--prefix", str(PREFIX), "--no-audit", "--no-fund", f"{PACKAGE}@{VERSION}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        raise ValidatorUnavailable(f"`{' '.join(cmd)}` timed out (no access to the npm registry?)") from exc
    if proc.returncode != 0 or not (PREFIX / "node_modules" / PACKAGE).exists():
        raise ValidatorUnavailable(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}); is the npm registry reachable?\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    return PREFIX


def validate(*paths: str | Path) -> list[dict]:
    """One report per file: ``numErrors``, ``numWarnings``, ``numInfos`` and ``messages`` (code, message,
    severity 0 error .. 3 hint, pointer)."""
    prefix = ensure_installed()
    cmd = ["node", str(SCRIPT), str(prefix), *[str(p) for p in paths]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"the glTF validator failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def format_messages(report: dict) -> str:
    """The report's messages, one per line."""
    names = {0: "error", 1: "warning", 2: "info", 3: "hint"}
    return "\n".join(
        f"{names.get(m.get('severity'), m.get('severity'))} {m.get('code')} at {m.get('pointer', '')}: "
        f"{m.get('message')}"
        for m in report["messages"]
    )

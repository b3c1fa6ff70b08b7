"""Run Blender's Python API (the bpy wheel in .venv-blender) from the tests, in a subprocess.

The backend's environment cannot hold bpy (bpy pins numpy<2 and is large), so ``python build.py setup`` (and
``python build.py test``) makes a separate environment .venv-blender; build.py passes its interpreter to pytest
as $TBSD_BLENDER_PYTHON. Without either, tests that need Blender fail with the command to run, not skip.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV_VAR = "TBSD_BLENDER_PYTHON"
DEFAULT = REPO / ".venv-blender" / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
IMPORT_SCRIPT = Path(__file__).resolve().parent / "blender" / "import_glb.py"
TIMEOUT_S = 300


def blender_python(env_var: str = ENV_VAR, default: Path = DEFAULT) -> Path:
    """The interpreter with bpy: $<env_var>, else ``default`` (<repo>/.venv-blender's); fails the test if neither.

    The default Blender (4.5 LTS) runs everything; the other supported releases (build.BLENDERS) have their own
    environment and variable, e.g. $TBSD_BLENDER_PYTHON_5_3 and .venv-blender-5.3.
    """
    value = os.environ.get(env_var)
    if value:
        path = Path(value)
        if path.exists():
            return path
        pytest.fail(f"${env_var} is {value!r}, which does not exist; run `python build.py setup` "
                    f"to create {default.parents[1].name} (Blender's bpy module)", pytrace=False)
    if default.exists():
        return default
    pytest.fail(f"no Python with Blender's bpy module: ${env_var} is unset and {default} does not exist; "
                f"run `python build.py setup` to create {default.parents[1].name}", pytrace=False)


def _clean_env() -> dict[str, str]:
    # The backend's PYTHONPATH/PYTHONHOME (numpy 2, torch) must not leak into Blender's interpreter.
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}


def import_in_blender(glb_path: str | Path, timeout: float = TIMEOUT_S) -> dict:
    """Import ``glb_path`` with Blender's glTF importer (tests/blender/import_glb.py); return its JSON report.

    Raises AssertionError with Blender's output when the script fails or prints no JSON.
    """
    cmd = [str(blender_python()), str(IMPORT_SCRIPT), str(Path(glb_path).resolve())]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_clean_env(), cwd=REPO)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"Blender import timed out after {timeout} s: {' '.join(cmd)}") from exc
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    report = json.loads(lines[-1]) if lines else None
    if proc.returncode != 0 or report is None or "error" in report:
        error = report.get("error") if report else "no JSON line on stdout"
        raise AssertionError(
            f"Blender import failed (exit {proc.returncode}): {error}\n"
            f"command: {' '.join(cmd)}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    report["stderr"] = proc.stderr
    return report

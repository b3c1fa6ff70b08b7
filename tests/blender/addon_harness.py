"""Shared by the tests/blender/addon_*.py scripts, which run BY the Python of .venv-blender (the bpy wheel).

Each script installs the built extension zip into a fresh user-resources folder (the pytest side points
$BLENDER_USER_RESOURCES at a temporary directory, so nothing touches the real Blender configuration), runs its
checks and prints exactly one JSON line on stdout: the results, or {"error": ...} with exit status 1.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any, Callable

# Keep stdout for the JSON line: Blender prints to fd 1 from C and Python alike.
_RESULT = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr

import bpy  # noqa: E402 - after the redirect, so bpy's own start-up output goes to stderr too

ADDON_ID = "tbsd_studio"
REPO = "user_default"
MODULE = f"bl_ext.{REPO}.{ADDON_ID}"


def install(zip_path: str) -> Any:
    """Install the zip as an extension in the user repository and enable it; returns the add-on's package."""
    result = bpy.ops.extensions.package_install_files(filepath=os.path.abspath(zip_path), repo=REPO,
                                                     enable_on_install=True)
    if "FINISHED" not in result:
        raise RuntimeError(f"package_install_files returned {sorted(result)}")
    return package()


def package() -> Any:
    return sys.modules.get(MODULE)


def enabled() -> bool:
    return MODULE in bpy.context.preferences.addons


def enable() -> Any:
    import addon_utils

    mod = addon_utils.enable(MODULE, default_set=True, handle_error=_raise)
    if mod is None:
        raise RuntimeError(f"could not enable {MODULE}")
    return mod


def disable() -> None:
    import addon_utils

    addon_utils.disable(MODULE, default_set=True, handle_error=_raise)


def _raise(exc: BaseException) -> None:
    raise exc


def run(main: Callable[[list[str]], dict]) -> None:
    """Call ``main(argv)``, print its dict (or the error) as the JSON line, exit 0 or 1."""
    try:
        out, status = main(sys.argv[1:]), 0
    except BaseException as exc:  # noqa: BLE001 - every failure becomes the JSON error line
        traceback.print_exc(file=sys.stderr)
        out, status = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}, 1
    # os._exit below skips atexit: stop a backend the add-on started, whatever happened, so none is left behind.
    for name, module in list(sys.modules.items()):
        if name.endswith(".local_backend") and name.startswith("bl_ext.") and hasattr(module, "stop"):
            try:
                module.stop()
            except Exception:  # noqa: BLE001 - best effort on the way out
                traceback.print_exc(file=sys.stderr)
    _RESULT.write(json.dumps(out, default=str) + "\n")
    _RESULT.flush()
    # bpy's atexit handlers can take seconds and print; the result is out, so leave now.
    os._exit(status)


def submodule(name: str) -> Any:
    """One of the installed add-on's modules (imported the way the add-on imports it)."""
    import importlib

    return importlib.import_module(f"{MODULE}.{name}")


def point_at_local_backend(backend_python: str, repo: str, port: str, results_dir: str, models_dir: str = "") -> None:
    """Set the add-on's preferences for a CPU backend it starts itself from ``repo``, serving on ``port``."""
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.address = f"tcp://127.0.0.1:{port}"
    prefs.python = backend_python
    prefs.arguments = "-m backend serve --device cpu"
    prefs.working_dir = repo
    prefs.results_dir = results_dir
    if models_dir:
        prefs.models_dir = models_dir


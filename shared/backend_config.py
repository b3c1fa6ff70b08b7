"""Where `python build.py setup --gpu` records the backend environment it made, for the Blender add-on to start.

The add-on's preferences may name the backend's Python themselves; when they leave it empty, "Start local
backend" uses this record, so an artist who ran the one set-up command has nothing to type. Standard library
only: build.py (a bare Python) writes it and the add-on (Blender's Python) reads it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

# Overrides the location (tests; a portable install).
ENV_VAR = "TBSD_STUDIO_CONFIG"
KEYS = ("python", "working_dir", "arguments")


def config_path() -> Path:
    """$TBSD_STUDIO_CONFIG, else the platform's per-user configuration folder's tbsd-studio/backend.json."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "tbsd-studio" / "backend.json"


def read() -> dict[str, str] | None:
    """The recorded backend (python, working_dir, arguments), or None when there is none or it is unreadable."""
    try:
        data: Any = json.loads(config_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in KEYS):
        return None
    return {k: data[k] for k in KEYS}


def write(python: str, working_dir: str, arguments: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"python": python, "working_dir": working_dir, "arguments": arguments}, indent=2)
                    + "\n", encoding="utf-8")
    return path

"""Start and stop a backend process on this machine from Blender (no threads: Popen + poll)."""

from __future__ import annotations

import atexit
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

_process: subprocess.Popen | None = None
_log_path: Path | None = None
_address: str | None = None  # the --bind address of the process we started


def command(python: str, arguments: str, address: str, results_dir: str, models_dir: str = "") -> list[str]:
    """The backend's command line: the preferences' Python and arguments plus --bind, --results, --models-dir."""
    if not python:
        raise ValueError("set the backend's Python in the add-on preferences to start a local backend")
    cmd = [python, *shlex.split(arguments, posix=os.name != "nt"), "--bind", address]
    if results_dir:
        cmd += ["--results", results_dir]
    if models_dir:
        cmd += ["--models-dir", models_dir]
    return cmd


def start(cmd: list[str], cwd: str | None = None) -> subprocess.Popen:
    """Start the backend (stopping one we started before); its output goes to a log file, never a pipe
    (a full pipe would stall the backend, and reading it would need a thread)."""
    global _process, _log_path, _address
    stop()
    _address = cmd[cmd.index("--bind") + 1] if "--bind" in cmd else None
    _log_path = Path(tempfile.gettempdir()) / f"tbsd_backend_{os.getpid()}.log"
    log = open(_log_path, "wb")  # noqa: SIM115 - handed to the child, closed below
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    try:
        _process = subprocess.Popen(cmd, cwd=cwd or None, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env,
                                    creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform == "win32" else 0)
    finally:
        log.close()
    # Blender quitting does not unregister add-ons: stop the backend we started with the interpreter.
    atexit.unregister(stop)
    atexit.register(stop)
    return _process


def address() -> str | None:
    return _address if _process is not None else None


def forget() -> None:
    """Drop the record of a process that has exited (its log stays readable through exit_text until the next start)."""
    global _process
    if _process is not None and _process.poll() is not None:
        _process = None


def running() -> bool:
    return _process is not None and _process.poll() is None


def exit_code() -> int | None:
    return None if _process is None else _process.poll()


def exit_text() -> str:
    """How the process we started ended, in words, with the last line of its log (usually the error)."""
    code = exit_code()
    how = f"was killed (signal {-code})" if code is not None and code < 0 else f"exited with code {code}"
    lines = [line for line in log_tail().splitlines() if line.strip()]
    last = f'; its log ends: "{lines[-1][-200:]}"' if lines and code else ""
    return f"the local backend {how}{last} (log: {_log_path})"


def log_tail(chars: int = 2000) -> str:
    if _log_path is None or not _log_path.exists():
        return ""
    return _log_path.read_text(errors="replace")[-chars:]


def stop(timeout: float = 3.0) -> None:
    """Terminate the process we started; kill it if it has not exited after ``timeout`` seconds."""
    global _process
    proc, _process = _process, None
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def shutdown() -> None:
    """Stop our backend and drop the exit hook (the add-on is being disabled; its module may be reloaded)."""
    stop()
    atexit.unregister(stop)

"""Durable file writes: every output is written under a temporary name, fsynced, then renamed into place.

A reader (or a server restarted after a crash) therefore sees either the old file or the complete new one,
never a torn one, and a record that names a file is only published after the file itself is on disk.

Test hook: a job worker started with ``TBSD_TEST_KILL_AT_PUBLISH=N`` (or ``N+``) arms ``arm_kill_hook`` at the
start of each job's first run: that job's N-th ``publish`` SIGKILLs the server (its parent) and itself just before
the rename (``N+``: just after it), so a test can stop the server at every write of a job. ``N@R`` applies to a
job's R-th resumption by a restarted server instead (``3+,5@1``: both); a run no point names is not killed. Only
a worker arms it (backend/jobs/worker.py), and only from an environment variable a test sets; nothing on the
wire reaches it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

_publish_count = 0
_kill_at: tuple[int, bool] | None = None  # (n-th publish, after the rename?)


def arm_kill_hook(spec: str | None) -> None:
    """Count publishes from now and kill at ``spec``'s (None: disarmed)."""
    global _kill_at, _publish_count
    _publish_count = 0
    _kill_at = None if spec is None else (int(spec.rstrip("+")), spec.endswith("+"))


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (the directory entry itself is data too)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _test_kill_hook(after: bool) -> None:
    global _publish_count
    if _kill_at is None:
        return
    _publish_count += 0 if after else 1
    if (_publish_count, after) == _kill_at:
        os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


def publish(tmp: Path, final: Path) -> Path:
    """fsync ``tmp`` and rename it to ``final`` (atomic on one file system), then fsync the folder."""
    _fsync_file(tmp)
    _test_kill_hook(after=False)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    _test_kill_hook(after=True)
    return final


def tmp_name(final: Path) -> Path:
    # The pid keeps two writers (a dead worker's leftovers, a new one) from sharing a temporary name.
    return final.with_name(f".{final.name}.{os.getpid()}.tmp")


def write_bytes(final: Path, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``final`` durably; ``mode`` (e.g. 0o600) is set before any byte is written."""
    tmp = tmp_name(final)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    try:
        if mode is not None:
            os.fchmod(fd, mode)  # the umask may have narrowed it; never widened beyond ``mode``
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return publish(tmp, final)


def write_json(final: Path, value: Any) -> Path:
    """``value`` as indented JSON, durably. Raises (and leaves the old file) if it cannot be serialised."""
    return write_bytes(final, json.dumps(value, indent=2, default=str, allow_nan=False).encode("utf-8"))


def publish_folder(staging: Path, out_dir: Path) -> list[str]:
    """Move every file of ``staging`` (written there in place by the exporters) into ``out_dir`` durably, then
    remove ``staging``. Returns the names, in the order published."""
    names = sorted(p.name for p in staging.iterdir() if p.is_file())
    for name in names:
        publish(staging / name, out_dir / name)
    shutil.rmtree(staging, ignore_errors=True)
    return names


def remove_leftovers(folder: Path) -> None:
    """Temporary files and staging folders a killed writer left behind."""
    for p in folder.glob(".*"):
        if p.is_dir() and p.name.startswith(".staging"):
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)


__all__ = ["publish", "write_bytes", "write_json", "publish_folder", "remove_leftovers", "fsync_dir", "tmp_name"]

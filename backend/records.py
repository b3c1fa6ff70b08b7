"""A job's record (job.json): the one place it is built and the one place it is written.

Whoever writes a record (the CLI's ``generate``, the server's worker, the server itself when no worker can,
the batch runner) builds it here and writes it here, so its keys, their order and the file's name cannot
drift between writers. The write is durable (backend/files.py: temporary name, fsync, rename) and, for a
finished job, made last, after every file the record names. The status vocabulary is shared/status.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backend.files import write_json
from shared.status import JobStatus

RECORD_FILE = "job.json"
CHECKPOINT_FILE = "checkpoint.pt"  # beside it: what a stopped, refined or restarted job continues from


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def job_record(status: JobStatus, *, job: str, owner: str, prompt: str, parent: str | None, created: str,
               settings: Mapping[str, Any], stream: Mapping[str, Any], prior_loaded: Any = None,
               head: Mapping[str, Any] | None = None, process: Mapping[str, Any] | None = None,
               **extra: Any) -> dict[str, Any]:
    """A served job's record. ``head`` goes first (a Ray actor's name, the attempt), ``process`` after the
    method (the worker's device and pid), ``extra`` last (ended, error, steps_done, ...): the key order every
    writer has always produced, so job.json stays the same bytes."""
    return {**(head or {}), "job": job, "owner": owner, "status": status, "prompt": prompt, "parent": parent,
            "created": created, "settings": settings, "stream": stream,
            "representation": settings.get("representation"), "method": settings.get("method"),
            **(process or {}), "model": settings.get("model"), "prior_loaded": prior_loaded, **extra}


def finished_record(known: Mapping[str, Any] | None, *, prompt: str, settings: Mapping[str, Any], device: str,
                    steps_done: int, total: int) -> dict[str, Any]:
    """The head of a finished job's record; ``known`` (a served job's `job_record`, or the CLI's timings) is
    laid over it and the caller appends the export's figures."""
    return {"prompt": prompt, "status": JobStatus.FINISHED, "settings": settings, "device": device,
            "steps_done": steps_done, "total": total, **dict(known or {})}


def write_record(folder: Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as ``folder``/job.json, durably; the folder is created if missing."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_json(folder / RECORD_FILE, record)


def read_record(folder: Path) -> dict[str, Any] | None:
    """``folder``'s record, or None when it is missing, unreadable or not a JSON object."""
    try:
        record = json.loads((folder / RECORD_FILE).read_text())
    except (ValueError, OSError):
        return None
    return record if isinstance(record, dict) else None


__all__ = ["CHECKPOINT_FILE", "RECORD_FILE", "finished_record", "job_record", "now", "read_record", "write_record"]

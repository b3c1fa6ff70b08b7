"""The results folder: one folder per job id holding job.json, the meshes, preview.png and checkpoint.pt.

Every file is written durably (backend/files.py: temporary name, fsync, rename) and job.json last, by the
worker process that ran the job; the server writes a record itself only when no worker can: the job is queued
or cancelled before a worker took it (``queued``, ``cancelled``), its worker died (``failed``), or a dead server
left it live and it cannot be resumed (``lost``, at start-up: backend/jobs/recovery.py). A folder whose job.json
does not say ``finished`` never offers a mesh, whatever a killed writer left behind, so list and fetch agree with
the disk.
A restarted server reads the folder once into an index that answers ``list`` without touching the disk.
Records are built and written by backend/records.py; the store only says which folder, and keeps the index.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from backend import records
from backend.files import remove_leftovers
from shared.protocol import ID_PATTERN
from shared.status import LIVE_STATUSES, JobStatus

SUMMARY_KEYS = ("job", "status", "prompt", "parent", "created", "ended", "steps_done", "total", "error",
                "representation", "method")
# What a job that did not finish may keep: its record and its (atomically written) checkpoint.
UNFINISHED_KEEP = (records.RECORD_FILE, records.CHECKPOINT_FILE)


class ResultsRefused(ValueError):
    """The results folder cannot be used; the text names the path and what is wrong."""


class ResultStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        check_results_folder(self.root)
        self.index: dict[str, dict[str, Any]] = {}  # job id -> summary (with "owner"), for list

    def job_dir(self, job_id: str) -> Path:
        if not ID_PATTERN.match(job_id):
            raise ValueError(f"job id {job_id!r} is not a valid id")
        return self.root / job_id

    def write_record(self, job_id: str, record: dict[str, Any]) -> Path:
        path = records.write_record(self.job_dir(job_id), record)
        self.refresh(job_id, record)
        return path

    def read_record(self, job_id: str) -> dict[str, Any] | None:
        try:
            folder = self.job_dir(job_id)
        except ValueError:
            return None
        return records.read_record(folder)

    def is_texture_chain(self, record: dict[str, Any]) -> bool:
        """Whether the job of ``record``, or the first job of its chain of refines, is a texture job: its checkpoint
        holds a user's mesh, so what it streams and returns is that mesh's geometry (no intermediate meshes)."""
        seen: set[str] = set()
        current: dict[str, Any] | None = record
        while current is not None:
            if current.get("input_mesh") is not None:
                return True
            parent = current.get("parent")
            if not parent or parent in seen:  # a chain that loops (a hand-edited record) ends here
                return False
            seen.add(parent)
            current = self.read_record(parent)
        return False

    def refresh(self, job_id: str, record: dict[str, Any] | None = None) -> None:
        """Re-read one job's record into the index (after its worker wrote it)."""
        record = record if record is not None else self.read_record(job_id)
        if record is not None:
            self.index[job_id] = {**summary(job_id, record, self.job_dir(job_id)), "owner": record.get("owner")}

    def fail_unfinished(self, job_id: str, record: dict[str, Any]) -> None:
        """Record a job that ended without finishing (failed, lost) and remove what its killed writer left, so
        the folder holds exactly what the record says: the record and, if one was completed, the checkpoint."""
        folder = self.job_dir(job_id)
        if folder.is_dir():
            remove_leftovers(folder)
            for p in folder.iterdir():
                if p.is_file() and p.name not in UNFINISHED_KEEP:
                    p.unlink(missing_ok=True)
        self.write_record(job_id, record)

    def load(self) -> dict[str, dict[str, Any]]:
        """Build the index from the folder. Returns the records a dead server left live (queued or running), by
        job id, for backend/jobs/recovery.py to resume or call lost; the rest are indexed as they are."""
        live = {}
        for folder in sorted(self.root.iterdir()):
            if not (folder.is_dir() and ID_PATTERN.match(folder.name)):
                continue
            record = self.read_record(folder.name)
            if record is None:
                continue
            if record.get("status") in LIVE_STATUSES:
                live[folder.name] = record
            else:
                self.refresh(folder.name, record)
        return live

    def mark_lost(self, job_id: str, record: dict[str, Any], why: str) -> None:
        """A job a dead server left live that cannot be resumed: ``lost``, with what it kept (its checkpoint)."""
        was = record.get("status")
        self.fail_unfinished(job_id, {**record, "status": JobStatus.LOST,
                                      "error": f"the server stopped while this job was {was} (killed or crashed) "
                                               f"and it cannot be resumed: {why}; no final mesh"})

    def summaries(self, owner: str) -> list[dict[str, Any]]:
        """Summaries of ``owner``'s jobs, oldest first (from the index)."""
        out = [{k: v for k, v in s.items() if k != "owner"} for s in self.index.values() if s.get("owner") == owner]
        out.sort(key=lambda s: s.get("created") or "")
        return out


def check_results_folder(root: Path) -> None:
    """Create ``root`` if needed and prove it writable, or raise ResultsRefused saying what is wrong."""
    if root.exists() and not root.is_dir():
        raise ResultsRefused(f"--results {root} is a file, not a folder; pass a folder for the job results "
                             "(it is created if missing)")
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise ResultsRefused(f"--results {root} is not a writable folder ({exc.strerror}); the server writes each "
                             "job's files there: pass a folder this user can write") from None


def summary(job_id: str, record: dict[str, Any], folder: Path | None) -> dict[str, Any]:
    s = {k: record.get(k) for k in SUMMARY_KEYS if record.get(k) is not None}
    s["job"] = job_id
    if folder is not None:
        # Only a finished record vouches for its mesh: a killed job's leftovers are never offered.
        s["has_mesh"] = record.get("status") == JobStatus.FINISHED and (folder / "mesh.glb").is_file()
        s["has_checkpoint"] = (folder / "checkpoint.pt").is_file()
    return s


__all__ = ["ResultStore", "ResultsRefused", "check_results_folder", "summary"]

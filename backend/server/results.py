"""The results folder: one folder per job id holding job.json, the meshes, preview.png and checkpoint.pt.

job.json is written atomically (temporary file, then rename), so a reader or a crash never sees half a record.
A restarted server reads this folder to answer list and fetch; a record left "running" by a server that died
is reported as "lost".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from shared.protocol import ID_PATTERN

LIVE_STATUSES = ("running",)
SUMMARY_KEYS = ("job", "status", "prompt", "parent", "created", "ended", "steps_done", "total", "error",
                "representation", "method")


class ResultStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_id: str) -> Path:
        if not ID_PATTERN.match(job_id):
            raise ValueError(f"job id {job_id!r} is not a valid id")
        return self.root / job_id

    def write_record(self, job_id: str, record: dict[str, Any]) -> Path:
        folder = self.job_dir(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "job.json"
        tmp = folder / "job.json.tmp"
        tmp.write_text(json.dumps(record, indent=2, default=str))
        os.replace(tmp, path)
        return path

    def read_record(self, job_id: str) -> dict[str, Any] | None:
        try:
            path = self.job_dir(job_id) / "job.json"
            record = json.loads(path.read_text())
        except (ValueError, OSError):
            return None
        return record if isinstance(record, dict) else None

    def mark_lost(self) -> list[str]:
        """Records a dead server left "running" become "lost" (called once at start-up, before any job runs)."""
        lost = []
        for job_id, record in self._records():
            if record.get("status") in LIVE_STATUSES:
                record["status"] = "lost"
                record["error"] = "the server stopped while this job ran (killed or crashed); no final mesh"
                self.write_record(job_id, record)
                lost.append(job_id)
        return lost

    def _records(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for folder in sorted(self.root.iterdir()):
            if folder.is_dir() and ID_PATTERN.match(folder.name):
                record = self.read_record(folder.name)
                if record is not None:
                    out.append((folder.name, record))
        return out

    def summaries(self, owner: str) -> list[dict[str, Any]]:
        """Summaries of ``owner``'s jobs on disk, oldest first."""
        out = []
        for job_id, record in self._records():
            if record.get("owner") != owner:
                continue
            out.append(summary(job_id, record, self.job_dir(job_id)))
        out.sort(key=lambda s: s.get("created") or "")
        return out


def summary(job_id: str, record: dict[str, Any], folder: Path | None) -> dict[str, Any]:
    s = {k: record.get(k) for k in SUMMARY_KEYS if record.get(k) is not None}
    s["job"] = job_id
    if folder is not None:
        s["has_mesh"] = (folder / "mesh.glb").is_file()
        s["has_checkpoint"] = (folder / "checkpoint.pt").is_file()
    return s


__all__ = ["ResultStore", "summary"]

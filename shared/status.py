"""A job's status: the one vocabulary of job.json's ``status``, the wire's (``finished``'s ``status``, ``list``'s
summaries), the server's, the batch runner's and the add-on's.

A ``StrEnum``, so a member *is* its string: ``json.dumps`` writes ``"queued"``, ``str()`` and f-strings give
``queued``, and a status read back from disk or the wire (a plain ``str``) compares equal to its member.
Standard library only: Blender's bundled Python (3.11+) imports this as the add-on's ``_vendor.shared``.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"  # accepted, on disk, waiting for a worker
    RUNNING = "running"  # a worker holds it
    FINISHED = "finished"  # every file it lists is on disk
    CANCELLED = "cancelled"  # stopped by its owner (cancel, or refine); the checkpoint is kept
    INTERRUPTED = "interrupted"  # stopped by a server shutdown; the checkpoint is kept
    FAILED = "failed"  # raised, or its worker died or went silent
    LOST = "lost"  # the server died while it was queued or running and it cannot run again (backend/jobs/recovery.py;
    # in the add-on: the backend went silent)


# On disk at a restart these mean the server that had them died: a restarted server queues them again.
LIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)

__all__ = ["JobStatus", "LIVE_STATUSES"]

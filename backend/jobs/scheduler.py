"""The queue in front of an executor: jobs wait in order and start when the executor has room.

The server and ``batch`` both schedule through this, over the same ``Executor`` interface (backend/jobs/
executor.py), so the order jobs start in, the rule that a refine waits for its running source, and the
bookkeeping of what is running have one definition. Who may queue what (ownership, queue limits, records) stays
with the caller.
"""

from __future__ import annotations

import collections
from typing import Any

import zmq

from backend.jobs.executor import Ended, Event, Executor, JobSpec, ProcessExecutor
from backend.jobs.results import ResultStore


class Scheduler:
    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.pending: collections.deque[JobSpec] = collections.deque()
        self.running: dict[str, JobSpec] = {}  # an executor with several workers runs several at once

    def add(self, spec: JobSpec, first: bool = False) -> None:
        if first:
            self.pending.appendleft(spec)
        else:
            self.pending.append(spec)

    def remove(self, job: str) -> JobSpec | None:
        """Take a job out of the queue (not one already running); None when it is not queued."""
        spec = next((s for s in self.pending if s.id == job), None)
        if spec is not None:
            self.pending.remove(spec)
        return spec

    def is_queued(self, job: str) -> bool:
        return any(s.id == job for s in self.pending)

    def position(self, job: str) -> int:
        """Jobs ahead of ``job`` in the queue (0 when it is not queued)."""
        return next((i for i, s in enumerate(self.pending) if s.id == job), 0)

    def dispatch(self) -> list[JobSpec]:
        """Start queued jobs while the executor has room; returns those started."""
        started = []
        while self.pending and self.executor.idle():
            # A refine of a running job waits for it to stop and write the checkpoint it continues (with several
            # workers a free one would otherwise start it first).
            spec = next((s for s in self.pending if s.parent not in self.running), None)
            if spec is None:
                break
            self.pending.remove(spec)
            self.running[spec.id] = spec
            self.executor.submit(spec)
            started.append(spec)
        return started

    def cancel(self, job: str, reason: str, refined_by: str | None = None, requested_step: int | None = None) -> None:
        """Ask a running job to stop after its step (it answers through ``events``)."""
        if job in self.running:
            self.executor.cancel(job, reason, refined_by, requested_step)

    def events(self) -> list[Event | Ended]:
        return self._ended(self.executor.events())

    def sockets(self) -> list[zmq.Socket]:
        return self.executor.sockets()

    def start(self) -> None:
        self.executor.start()

    def shutdown(self, grace_s: float) -> list[Event | Ended]:
        """Stop the running jobs (the executor records them ``interrupted``); the queue is the caller's."""
        return self._ended(self.executor.shutdown(grace_s))

    def _ended(self, events: list[Event | Ended]) -> list[Event | Ended]:
        for event in events:
            if isinstance(event, Ended):
                self.running.pop(event.job, None)
        return events


class PoolExecutor:
    """Several executors as one (``--jobs-per-gpu N`` of serve and batch: N local worker processes): a job goes to
    a member with room, and its cancel to the member running it."""

    def __init__(self, members: list[Any]) -> None:
        self.members = members
        self._member: dict[str, Any] = {}

    def start(self) -> None:
        for member in self.members:
            member.start()

    def idle(self) -> bool:
        return any(m.idle() for m in self.members)

    def capacity(self) -> int:
        return sum(m.capacity() for m in self.members)

    def submit(self, spec: JobSpec) -> None:
        member = next(m for m in self.members if m.idle())
        self._member[spec.id] = member
        member.submit(spec)

    def cancel(self, job: str, reason: str, refined_by: str | None = None, requested_step: int | None = None) -> None:
        member = self._member.get(job)
        if member is not None:
            member.cancel(job, reason, refined_by, requested_step)

    def events(self) -> list[Event | Ended]:
        return self._forget([e for m in self.members for e in m.events()])

    def sockets(self) -> list[zmq.Socket]:
        return [s for m in self.members for s in m.sockets()]

    def shutdown(self, grace_s: float) -> list[Event | Ended]:
        return self._forget([e for m in self.members for e in m.shutdown(grace_s)])

    def _forget(self, events: list[Event | Ended]) -> list[Event | Ended]:
        for event in events:
            if isinstance(event, Ended):
                self._member.pop(event.job, None)
        return events


def local_pool(ctx: zmq.Context, store: ResultStore, device: str, jobs: int,
               silence_timeout_s: float = 900.0) -> PoolExecutor:
    """The local executor of serve and batch: ``jobs`` worker processes on ``device``, each running one job
    (``jobs`` from ``--jobs-per-gpu``, backend/jobs/slots.py)."""
    return PoolExecutor([ProcessExecutor(ctx, store, device, silence_timeout_s) for _ in range(jobs)])


__all__ = ["PoolExecutor", "Scheduler", "local_pool"]

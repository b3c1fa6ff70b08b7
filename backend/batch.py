"""Many prompts, one command: ``python -m backend batch PROMPTS --out DIR [--executor local|ray]``.

Each row runs as a job through the server's scheduler and executors (backend/jobs/scheduler.py, executor.py):
``local`` runs ``--jobs-per-gpu`` worker processes on this machine, ``ray`` one actor per GPU of a Ray cluster. Both
run the worker's own job code (backend/jobs/runner.py), so a row's folder holds exactly what a server job's does
(mesh.glb, mesh.obj, mesh.ply, preview.png, checkpoint.pt, job.json last, all written atomically). A row is finished only when its job.json says
``finished`` for the same prompt and settings and every file it lists exists; a rerun skips those, so an
interrupted batch continues where it stopped. At the end (and after an interrupt) ``summary.json``,
``summary.md`` and ``contact_sheet.png`` describe every row (backend/batch_report.py).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from backend import records
from backend.batch_input import Row
from backend.jobs.executor import Ended, Event, Executor, JobSpec
from backend.jobs.results import ResultStore
from backend.jobs.scheduler import Scheduler, local_pool
from shared import protocol as P
from shared.status import JobStatus

# Nothing watches a batch's jobs while they train: no streamed previews, one progress beat per step.
STREAM = P.check_stream({"progress_every": 1000, "preview_size": 16, "preview_views": 1, "mesh_every": 0})


def finished_record(folder: Path, row: Row) -> dict[str, Any] | None:
    """The row's job.json when it is finished for this prompt and these settings with every file on disk."""
    record = records.read_record(folder)
    if record is None or record.get("status") != JobStatus.FINISHED or record.get("prompt") != row.prompt:
        return None
    done = record.get("settings") or {}
    if any(done.get(k) != v for k, v in row.settings.items()):
        return None  # the row was edited since: it runs again
    files = record.get("all_files") or []
    return record if files and all((folder / name).is_file() for name in files) else None


@dataclass
class Outcome:
    """What happened to one row in this run."""

    row: Row
    # "pending" (not a job status: no job exists for the row yet), then its job's status
    status: JobStatus | str = "pending"
    skipped: bool = False  # finished by an earlier run
    wall_seconds: float | None = None
    error: str | None = None
    started: float = 0.0
    step: int = 0
    messages: list[str] = field(default_factory=list)


class ProgressBar:
    """One bar over every step of the rows still to run, with rows done and the ETA, on stderr."""

    def __init__(self, total_steps: int, rows: int, quiet: bool) -> None:
        self.rows, self.done = rows, 0
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, unit="step", file=sys.stderr, desc="batch", dynamic_ncols=True)
            self._postfix()

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.done}/{self.rows} rows")

    def steps(self, n: int) -> None:
        if self.bar is not None and n > 0:
            self.bar.update(n)

    def row_done(self) -> None:
        self.done += 1
        self._postfix()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_rows(rows: list[Row], store: ResultStore, executor: Executor, quiet: bool = False,
             on_end: Callable[[Outcome], None] | None = None) -> tuple[list[Outcome], bool]:
    """Run every unfinished row on ``executor`` (started here, shut down at the end or on a Ctrl-C), scheduled as
    the server schedules its jobs (backend/jobs/scheduler.py). Returns each row's outcome and whether the run was
    interrupted."""
    outcomes = {row.name: Outcome(row) for row in rows}
    todo: list[Row] = []
    for row in rows:
        if finished_record(store.job_dir(row.name), row) is not None:
            outcomes[row.name].status, outcomes[row.name].skipped = JobStatus.FINISHED, True
        else:
            todo.append(row)
    if todo:
        print(f"batch: {len(todo)} of {len(rows)} rows to run ({len(rows) - len(todo)} finished earlier)",
              file=sys.stderr)
    bar = ProgressBar(sum(r.settings["steps"] for r in todo), len(todo), quiet or not todo)
    queue = Scheduler(executor)
    interrupted = False
    try:
        if todo:  # nothing to run: no worker, no Ray instance
            queue.start()
        for row in todo:
            spec = _spec(row)
            # On disk before a worker can take it, as a server's queued job is.
            store.write_record(row.name, spec.record(JobStatus.QUEUED, ended=None))
            queue.add(spec)
        while queue.pending or queue.running:
            for spec in queue.dispatch():
                outcome = outcomes[spec.id]
                outcome.status, outcome.started, outcome.step = JobStatus.RUNNING, time.monotonic(), 0
            for event in queue.events():
                outcome = outcomes.get(event.job)
                if outcome is None:
                    continue
                if isinstance(event, Ended):
                    _ended(outcome, event, store)
                    bar.row_done()
                    if on_end is not None:
                        on_end(outcome)
                else:
                    _event(outcome, event, bar)
            time.sleep(0.02)
    except KeyboardInterrupt:
        print("\nbatch: interrupted; the rows in progress are stopped (a rerun continues from there)",
              file=sys.stderr)
        interrupted = True
    finally:
        bar.close()
        if todo:
            for event in queue.shutdown(0.0):
                stopped = outcomes.get(event.job)
                if isinstance(event, Ended) and stopped is not None and stopped.status == JobStatus.RUNNING:
                    stopped.status = event.status
        for name in queue.running:
            if outcomes[name].status == JobStatus.RUNNING:
                outcomes[name].status = JobStatus.INTERRUPTED
    return [outcomes[row.name] for row in rows], interrupted


def _spec(row: Row) -> JobSpec:
    return JobSpec(row.name, "batch", row.prompt, row.settings, dict(STREAM),
                   time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def _event(outcome: Outcome, event: Event, bar: ProgressBar) -> None:
    kind = event.header.get("type")
    if kind in ("_beat", "progress"):
        step = int(event.header.get("step", 0))
        bar.steps(step - outcome.step)  # a retried job starts again from 0: its steps are not counted twice
        outcome.step = max(outcome.step, step)
    elif kind == "error":
        outcome.messages.append(str(event.header.get("message")))
        if event.header.get("fatal"):
            outcome.error = str(event.header.get("message"))


def _ended(outcome: Outcome, event: Ended, store: ResultStore) -> None:
    outcome.status = event.status
    outcome.wall_seconds = time.monotonic() - outcome.started
    if event.status != JobStatus.FINISHED and outcome.error is None:
        record = store.read_record(outcome.row.name) or {}
        outcome.error = record.get("error")


def make_executor(kind: str, store: ResultStore, device: str, jobs: int = 1,
                  ray: dict[str, Any] | None = None) -> Executor:
    """``jobs`` local worker processes as one executor (``--jobs-per-gpu``), or a Ray executor (its actors are
    its workers)."""
    if kind == "ray":
        from backend.jobs.ray_executor import RayExecutor

        return RayExecutor(store, device, **(ray or {}))
    import zmq

    return local_pool(zmq.Context.instance(), store, device, jobs)


__all__ = ["run_rows", "finished_record", "make_executor", "Outcome", "STREAM"]

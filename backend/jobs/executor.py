"""Where jobs run: the executor interface the server's loop uses, and its one implementation, a spawned worker
process (backend/jobs/worker.py).

The interface is small so that another executor (a Ray actor pool, say) can stand in: ``submit`` a JobSpec
when ``idle()``, ``cancel`` it, drain ``events()`` (the client events of its jobs, already encoded as wire
frames, and ``Ended`` when a job is over), ``shutdown``. The server keeps the queue, ownership and the
clients; the executor keeps the GPU work away from the server's process.

ProcessExecutor runs one job at a time in a child process (one GPU), talking over a ROUTER socket bound to an
ipc endpoint in a private (0700) temporary folder. A worker that exits, is killed, segfaults or sends nothing
for ``silence_timeout_s`` fails only its job (the server writes the ``failed`` record the worker could not)
and is replaced at once, so the next job finds a warm worker.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import zmq

from backend import records
from backend.jobs.results import ResultStore
from shared import protocol as P
from shared.status import JobStatus

ROOT = Path(__file__).resolve().parents[2]
# Client events a worker may send; anything else from it is dropped (a worker is trusted, but a bug in it
# must not put arbitrary message types on the wire). Message types, not a JobStatus, though two share a word.
CLIENT_EVENTS = ("started", "progress", "preview", "mesh", "finished", "cancelled", "error")

if TYPE_CHECKING:
    from backend.jobs.runner import JobPlan

log = logging.getLogger("backend.jobs")


@dataclass
class JobSpec:
    """Everything a worker needs to run a job; JSON only (it crosses a process boundary)."""

    id: str
    owner: str
    prompt: str
    settings: dict[str, Any]
    stream: dict[str, int]
    created: str
    parent: str | None = None
    source_checkpoint: str | None = None  # a refine continues this checkpoint ...
    refine_steps: int = 0  # ... for this many steps
    resume_checkpoint: str | None = None  # a job a restarted server resumes: its own checkpoint
    recovered: int = 0  # restarts of the server this job has been resumed after
    attempt: int = 1  # a Ray actor's attempt at it (backend/jobs/ray_executor.py retries a dead actor's job)
    input_mesh: str | None = None  # a texture job: its mesh's file in the job's folder (backend/jobs/mesh_input.py)
    reference_image: str | None = None  # an image-prompt job's reference sent with its submit, in the job's folder

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "JobSpec":
        return cls(**payload)

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def plan(self, folder: Path) -> "JobPlan":
        """What the runner runs for this spec in ``folder``: progress every step (the worker beats on each, and
        sends ``progress`` at the stream's rate), previews and intermediate meshes as the stream asks."""
        from backend.jobs.runner import JobPlan  # torch and the trainer: the worker's, not the server's imports

        s = self.stream
        plan = JobPlan(self.prompt, self.settings, folder, cadence={
            "progress_every": 1, "preview_views": s["preview_views"], "preview_size": s["preview_size"],
            "mesh_every": s["mesh_every"]})
        if self.reference_image is not None:
            plan.reference, plan.reference_name = folder / self.reference_image, "sent with the submit"
        if self.resume_checkpoint is not None:
            # First, a texture job's too: its checkpoint holds its mesh, UVs and fit (TexturedMesh.extra_state), and
            # the runner refuses a mesh file beside a checkpoint.
            plan.resume = Path(self.resume_checkpoint)
        elif self.input_mesh is not None:
            plan.mesh = folder / self.input_mesh
        elif self.source_checkpoint is not None:
            # A refine's settings are complete (validated over its source's), so all of them are laid over.
            plan.source, plan.overrides = Path(self.source_checkpoint), self.settings
            plan.more_steps = self.refine_steps
        return plan

    def record(self, status: JobStatus, *, prior_loaded: Any = None, head: dict[str, Any] | None = None,
               process: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        """This job's record (backend/records.py ``job_record``); ``ended`` is now unless given. Its ``settings``
        are the job's as its message gave them, so ``steps`` keeps the message's meaning (a refine's: how many
        more); the cumulative count is ``total``/``steps_done``. It carries what a restarted server needs to run
        the job again (backend/jobs/recovery.py)."""
        restart: dict[str, Any] = {}
        if self.source_checkpoint is not None:
            restart.update(source_checkpoint=self.source_checkpoint, refine_steps=self.refine_steps)
        if self.recovered:
            restart["recovered"] = self.recovered
        if self.input_mesh is not None:
            restart["input_mesh"] = self.input_mesh
        if self.reference_image is not None:
            restart["reference_image"] = self.reference_image
        return records.job_record(status, job=self.id, owner=self.owner, prompt=self.prompt, parent=self.parent,
                                  created=self.created, settings=self.settings, stream=self.stream,
                                  prior_loaded=prior_loaded, head=head, process=process,
                                  **{"ended": records.now(), **extra, **restart})


@dataclass
class Event:
    """A client event of job ``job``: its decoded ``header`` and the raw ``frames`` (header + arrays) to forward."""

    job: str
    header: dict[str, Any]
    frames: list[Any] = field(default_factory=list)


@dataclass
class Ended:
    """Job ``job`` is over; ``status`` is what its record says."""

    job: str
    status: JobStatus | str  # a member, or the string a worker's "finished" event carried


class Executor(Protocol):
    def start(self) -> None: ...
    def idle(self) -> bool: ...
    def capacity(self) -> int: ...  # jobs it runs at once (hello's job_slots)
    def submit(self, spec: JobSpec) -> None: ...
    def cancel(self, job: str, reason: str, refined_by: str | None, requested_step: int | None) -> None: ...
    def events(self) -> list[Event | Ended]: ...
    def sockets(self) -> list[zmq.Socket]: ...
    def shutdown(self, grace_s: float) -> list[Event | Ended]: ...


def interrupted(store: ResultStore, job: JobSpec, message: str) -> list[Event | Ended]:
    """A job whose worker was killed at shutdown: its ``interrupted`` record (unless it finished) and the client's
    ``cancelled`` event."""
    store.fail_unfinished(job.id, job.record(JobStatus.INTERRUPTED, stop_reason="shutdown", error=message))
    header = {"type": "cancelled", "job": job.id, "step": 0, "reason": "shutdown"}
    return [Event(job.id, header, P.encode(header)), Ended(job.id, JobStatus.INTERRUPTED)]


def cancelled_before_start(store: ResultStore, job: JobSpec, reason: str,
                           refined_by: str | None = None) -> list[Event | Ended]:
    """A job cancelled while no worker held it: the record and ``cancelled`` event a worker stopping it at step
    0 would have written and sent (``interrupted`` when the server is shutting down)."""
    status = JobStatus.INTERRUPTED if reason == "shutdown" else JobStatus.CANCELLED
    try:
        store.fail_unfinished(job.id, job.record(status, stop_reason=reason, steps_done=0))
    except OSError as exc:  # the client still hears it ended; a restarted server will call it lost
        log.warning("could not record job %s as %s: %s", job.id, status, exc)
    header: dict[str, Any] = {"type": "cancelled", "job": job.id, "step": 0, "reason": reason}
    if refined_by:
        header["refined_by"] = refined_by
    return [Event(job.id, header, P.encode(header)), Ended(job.id, status)]


def _signal_name(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        what = {"SIGSEGV": "a segmentation fault", "SIGKILL": "SIGKILL (killed, e.g. by the out-of-memory killer)",
                "SIGABRT": "an abort"}.get(name, name)
        return f"it died from {what}"
    return f"it exited with code {code}"


class ProcessExecutor:
    def __init__(self, ctx: zmq.Context, store: ResultStore, device: str, silence_timeout_s: float = 900.0) -> None:
        self.ctx = ctx
        self.store = store
        self.device = device
        self.silence_timeout_s = silence_timeout_s
        self._dir = Path(tempfile.mkdtemp(prefix="tbsd-workers-"))  # 0700: only this user can connect
        self.endpoint = f"ipc://{self._dir}/workers.sock"
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.endpoint)
        self.generation = 0
        self.proc: subprocess.Popen | None = None
        self.ready = False
        self.running: JobSpec | None = None
        self.last_heard = 0.0
        self._waiting: JobSpec | None = None  # submitted before the worker said _ready
        self._out: list[Event | Ended] = []

    # --- the worker process ----------------------------------------------------------------------------
    def start(self) -> None:
        self.generation += 1
        self.ready = False
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend.jobs.worker", self.endpoint, self._identity().decode(),
             str(self.store.root), str(self.device), str(os.getpid())], cwd=ROOT, env=env, stdin=subprocess.DEVNULL)

    def _identity(self) -> bytes:
        return f"worker-{self.generation}".encode()

    def _send(self, header: dict[str, Any]) -> None:
        self.sock.send_multipart([self._identity(), *P.encode(header)])

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def _replace(self, why: str) -> None:
        """The worker is gone or useless: fail its job (the record it could not write) and start a fresh one."""
        self._kill()
        job = self.running
        self.running = None
        if job is not None:
            message = f"job {job.id} failed: its worker process {why}; the job's state is lost, the next job runs " \
                      "in a fresh worker"
            try:
                self.store.fail_unfinished(job.id, job.record(JobStatus.FAILED, error=message))
            except OSError as exc:
                message += f" (its record could not be written: {exc})"
            header = P.error_header("job_failed", message, job=job.id, fatal=True)
            self._out.append(Event(job.id, header, P.encode(header)))
            self._out.append(Ended(job.id, JobStatus.FAILED))
        self.start()

    # --- the interface ---------------------------------------------------------------------------------------
    def idle(self) -> bool:
        return self.running is None and self._waiting is None

    def capacity(self) -> int:
        return 1

    def submit(self, spec: JobSpec) -> None:
        assert self.idle(), "one job at a time"
        self._waiting = spec
        self._dispatch()

    def _dispatch(self) -> None:
        if self._waiting is not None and self.ready:
            spec, self._waiting = self._waiting, None
            self.running = spec
            self.last_heard = time.monotonic()
            self._send({"type": "run", "spec": spec.to_json()})

    def cancel(self, job: str, reason: str, refined_by: str | None = None, requested_step: int | None = None) -> None:
        if self._waiting is not None and self._waiting.id == job:
            # Not yet handed over (the worker is not ready): the worker never saw it, so its "queued" record is
            # ours to replace, as the worker would have.
            spec, self._waiting = self._waiting, None
            self._out += cancelled_before_start(self.store, spec, reason, refined_by)
            return
        if self.running is not None and self.running.id == job:
            self._send({"type": "stop", "job": job, "reason": reason, "refined_by": refined_by,
                        "requested_step": requested_step})

    def sockets(self) -> list[zmq.Socket]:
        return [self.sock]

    def events(self) -> list[Event | Ended]:
        for _ in range(1000):  # bounded: the clients' requests are not starved by a chatty job
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            if frames[0].bytes != self._identity():
                continue  # a replaced worker's last words
            self._on_worker_message(frames[1:])
        self._check_health()
        out, self._out = self._out, []
        return out

    def _on_worker_message(self, frames: list[Any]) -> None:
        header = json.loads(frames[0].bytes)
        self.last_heard = time.monotonic()
        kind = header.get("type")
        if kind == "_ready":
            self.ready = True
            self._dispatch()
            return
        job = header.get("job")
        if self.running is None or job != self.running.id:
            return
        if kind == "_done":
            self.running = None
            self._out.append(Ended(job, header.get("status", JobStatus.FAILED)))
            self.store.refresh(job)
            if header.get("restart"):
                self._replace_idle()
        elif kind in CLIENT_EVENTS:
            self._out.append(Event(job, header, [f.buffer for f in frames]))
        elif kind == "_beat":
            self._out.append(Event(job, header))

    def _replace_idle(self) -> None:
        # The worker exits by itself after a GPU out-of-memory; wait briefly so it is not killed mid-goodbye.
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._replace("asked to be replaced")

    def _check_health(self) -> None:
        if self.proc is None:
            return
        code = self.proc.poll()
        if code is not None:
            self.events_after_death()
            self._replace(_signal_name(code))
        elif self.running is not None and time.monotonic() - self.last_heard > self.silence_timeout_s:
            self._replace(f"sent nothing for {self.silence_timeout_s:g} s (hung, or one step or export took "
                          "longer than --job-silence-timeout) and was killed")
        else:
            self._dispatch()

    def events_after_death(self) -> None:
        """Messages the dead worker sent before it died are still worth forwarding (e.g. its last progress)."""
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if frames[0].bytes == self._identity():
                self._on_worker_message(frames[1:])

    def shutdown(self, grace_s: float) -> list[Event | Ended]:
        """Stop the running job (it checkpoints and records ``interrupted``), wait at most ``grace_s``, then
        kill the worker; a job still running then is recorded ``interrupted`` by the server."""
        if self.running is not None:
            self.cancel(self.running.id, "shutdown")
        deadline = time.monotonic() + grace_s
        out: list[Event | Ended] = []
        while self.running is not None and time.monotonic() < deadline and self.proc and self.proc.poll() is None:
            if self.sock.poll(100):
                out += self.events()
        out += self.events() if self.running is not None else []
        if self.proc is not None and self.proc.poll() is None:
            try:
                self._send({"type": "exit"})
                self.proc.wait(2 if self.running is None else 0.1)
            except (subprocess.TimeoutExpired, zmq.ZMQError):
                pass
        self._kill()
        job = self.running
        if job is not None:
            out += interrupted(self.store, job, f"the server stopped and its worker was killed after the {grace_s:g} s "
                               "shutdown grace (the job was still in its final export); the last periodic "
                               "checkpoint, if any, is kept")
            self.running = None
        self.sock.close(linger=0)
        shutil.rmtree(self._dir, ignore_errors=True)
        return out


__all__ = ["Executor", "ProcessExecutor", "JobSpec", "Event", "Ended", "CLIENT_EVENTS", "cancelled_before_start"]

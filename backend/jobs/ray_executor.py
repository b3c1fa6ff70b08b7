"""Jobs on a Ray cluster: one actor per GPU (``num_gpus`` each, 1 by default), each running the same job code as
the local worker process (backend/jobs/worker.py ``WorkerProcess``) and keeping its prior warm between jobs, so
a model loads once per GPU, not once per job.

The executor implements the server's Executor interface (backend/jobs/executor.py), so the ROUTER loop, the
queue, ownership and the wire stay as they are: it runs as many jobs at once as it has free actors. An actor
runs a job in one thread of a threaded actor and buffers its events (already encoded as wire frames); the
executor long-polls each busy actor (``take``, at most ``TAKE_WAIT_S``) so progress, previews and meshes reach
the client within a fraction of a second. Ray's own serialization carries those frames between the actor and
the server: that is Ray's internal transport among trusted cluster nodes (docs/SCALE.md), never a client-facing
socket.

Deaths: an actor that dies (killed, segfault, its node lost) fails only its job's attempt. The job is retried
from the start on another actor ``max_retries`` times (default 1: a lost node or a preempted machine is worth a
second try, a job that kills its worker twice is probably the cause); after that it fails with ``job_failed``
like a dead local worker. Each retry is announced to the client as a non-fatal ``job_retry`` error, and the job
sends ``started`` again from step 0. The dead actor is replaced. An actor silent past ``silence_timeout_s`` is
killed and its job failed without a retry (a hang tends to repeat).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from backend.jobs.executor import CLIENT_EVENTS, ROOT, Ended, Event, JobSpec, cancelled_before_start, interrupted
from backend.jobs.results import ResultStore
from shared import protocol as P
from shared.status import JobStatus

log = logging.getLogger("backend.jobs.ray")

INSTALL_HINT = "pip install 'tbsd-studio[ray]' (or: pip install ray) in the backend's environment"
RAY_NAMESPACE = "tbsd-studio"  # actors are named (job.json "worker") and found in this namespace
RESTART_DELAY_S = 5.0  # between attempts to start an actor that failed to start (say, a node lacking the project)
TAKE_WAIT_S = 0.5  # an actor holds a take this long for events: the client sees them at once, idle costs little
TAKE_MAX_BYTES = 64 * 1024 * 1024  # one take's frames at most (one Ray object), beyond one big mesh per take
# Environment the actors inherit from the process that starts them (thread counts, the test hooks).
PASSED_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TBSD_TEST_WORKER_FAULTS", "TBSD_TEST_FAULT_DIR",
              "HF_HOME", "HF_HUB_OFFLINE")


class RayMissing(RuntimeError):
    """Ray is not installed; the message says how to install it."""


class RayUnusable(RuntimeError):
    """The Ray cluster cannot run any actor as asked (no GPUs, say); the message names what to change."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayMissing(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


class QueueChannel:
    """The worker's Channel inside an actor: events wait in ``take``'s buffer, control messages in an inbox."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._out: list[list[bytes]] = []
        self._control: list[dict[str, Any]] = []

    def send(self, frames: list[Any]) -> None:
        with self._cond:
            self._out.append([bytes(f) for f in frames])
            self._cond.notify_all()

    def receive(self, timeout_ms: int) -> list[dict[str, Any]]:
        with self._cond:
            if timeout_ms > 0:
                self._cond.wait_for(lambda: self._control, timeout_ms / 1000)
            out, self._control = self._control, []
            return out

    def put_control(self, header: dict[str, Any]) -> None:
        with self._cond:
            self._control.append(header)
            self._cond.notify_all()

    def take(self, timeout_s: float) -> list[list[bytes]]:
        with self._cond:
            self._cond.wait_for(lambda: self._out, timeout_s)
            batch, size = [], 0
            while self._out and (not batch or size + sum(map(len, self._out[0])) <= TAKE_MAX_BYTES):
                frames = self._out.pop(0)
                size += sum(map(len, frames))
                batch.append(frames)
            return batch


class RayWorker:
    """The body of a GPU actor: a WorkerProcess fed through a QueueChannel (wrapped by ray.remote at start)."""

    def __init__(self, results: str, device: str, name: str, env: dict[str, str]) -> None:
        os.environ.update(env)
        from backend.jobs.worker import WorkerProcess

        self.channel = QueueChannel()
        self.runner = WorkerProcess(self.channel, Path(results), device, name=name)

    def ready(self) -> dict[str, Any]:
        import ray

        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "device": str(self.runner.device)}

    def run(self, spec: dict[str, Any]) -> bool:
        return self.runner.run_job(spec)

    def take(self, timeout_s: float) -> list[list[bytes]]:
        return self.channel.take(timeout_s)

    def control(self, header: dict[str, Any]) -> None:
        self.channel.put_control(header)


@dataclass
class Slot:
    """One actor's place: the actor (replaced when it dies) and the job it runs."""

    index: int
    generation: int = 0
    actor: Any = None
    name: str = ""
    ready_ref: Any = None
    ready: bool = False
    job: JobSpec | None = None
    run_ref: Any = None
    take_ref: Any = None
    last_heard: float = 0.0
    restart_at: float | None = None  # when an actor that failed to start is tried again


class RayExecutor:
    def __init__(self, store: ResultStore, device: str, address: str = "local", gpus_per_actor: float = 1.0,
                 actors: int | None = None, cpus_per_actor: float = 1.0, max_retries: int = 1,
                 silence_timeout_s: float = 900.0) -> None:
        self.store = store
        self.device = device
        self.address = address
        self.gpus_per_actor = gpus_per_actor
        self.actor_count = actors
        self.cpus_per_actor = cpus_per_actor
        self.max_retries = max_retries
        self.silence_timeout_s = silence_timeout_s
        self.ray = import_ray()
        self.slots: list[Slot] = []
        self.retry: collections.deque[JobSpec] = collections.deque()  # jobs whose actor died, to run again first
        self.attempts: dict[str, int] = {}
        self._owns_ray = False
        self._prefix = f"tbsd-{uuid.uuid4().hex[:8]}"  # actor names unique per executor on a shared cluster
        self._out: list[Event | Ended] = []

    # --- actors ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            # "local" starts a Ray instance on this machine; an address ("auto", "host:6379") joins a cluster.
            ray.init(address=None if self.address == "local" else self.address, include_dashboard=False,
                     log_to_driver=True, configure_logging=False)
            self._owns_ray = True
        count = self.actor_count if self.actor_count is not None else self._actors_that_fit()
        if count < 1:
            raise RayUnusable("no actor fits the Ray cluster: it has "
                              f"{ray.cluster_resources().get('GPU', 0):g} GPUs and each actor asks for "
                              f"{self.gpus_per_actor:g}; start the cluster's nodes with GPUs, or pass "
                              "--ray-gpus-per-actor 0 --ray-actors N to run N actors on CPUs")
        self.slots = [Slot(i) for i in range(count)]
        for slot in self.slots:
            self._start_actor(slot)
        log.info("Ray executor: %d actors, %g GPU and %g CPU each (cluster %s)", count, self.gpus_per_actor,
                 self.cpus_per_actor, ray.cluster_resources())

    def _actors_that_fit(self) -> int:
        resources = self.ray.cluster_resources()
        if self.gpus_per_actor > 0:
            return int(resources.get("GPU", 0) / self.gpus_per_actor + 1e-9)
        return int(resources.get("CPU", 0) / max(self.cpus_per_actor, 1e-9) + 1e-9)

    def _start_actor(self, slot: Slot) -> None:
        slot.generation += 1
        slot.name = f"{self._prefix}-{slot.index}-{slot.generation}"
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        # Each node imports the project from the same path (docs/SCALE.md); PYTHONPATH makes that so for
        # an editable or an unpacked checkout alike.
        runtime_env = {"env_vars": {**env, "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}}
        actor_class = self.ray.remote(RayWorker)
        slot.actor = actor_class.options(
            name=slot.name, namespace=RAY_NAMESPACE, num_gpus=self.gpus_per_actor, num_cpus=self.cpus_per_actor,
            max_concurrency=4, max_restarts=0, runtime_env=runtime_env,
        ).remote(str(self.store.root.resolve()), self.device, slot.name, env)
        slot.ready_ref = slot.actor.ready.remote()
        slot.ready = False

    def _kill(self, slot: Slot) -> None:
        if slot.actor is not None:
            try:
                self.ray.kill(slot.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - it may be gone already; either way it is not ours any more
                pass
        slot.actor, slot.ready, slot.run_ref, slot.take_ref, slot.ready_ref = None, False, None, None, None

    # --- the interface ---------------------------------------------------------------------------------------
    def idle(self) -> bool:
        free = sum(1 for s in self.slots if s.ready and s.job is None)
        return free > len(self.retry)

    def capacity(self) -> int:
        return len(self.slots)  # its actors, once started

    def submit(self, spec: JobSpec) -> None:
        assert self.idle(), "submit only while idle()"
        slot = next(s for s in self.slots if s.ready and s.job is None)
        self._run(slot, spec)

    def _run(self, slot: Slot, spec: JobSpec) -> None:
        slot.job = spec
        slot.last_heard = time.monotonic()
        payload = {**spec.to_json(), "attempt": self.attempts.get(spec.id, 0) + 1}
        slot.run_ref = slot.actor.run.remote(payload)
        slot.take_ref = slot.actor.take.remote(TAKE_WAIT_S)

    def cancel(self, job: str, reason: str, refined_by: str | None = None, requested_step: int | None = None) -> None:
        for spec in list(self.retry):
            if spec.id == job:  # between attempts: no actor has it; report it as a worker would
                self.retry.remove(spec)
                self._out += cancelled_before_start(self.store, spec, reason, refined_by)
                return
        for slot in self.slots:
            if slot.job is not None and slot.job.id == job and slot.actor is not None:
                slot.actor.control.remote({"type": "stop", "job": job, "reason": reason, "refined_by": refined_by,
                                           "requested_step": requested_step})

    def sockets(self) -> list[zmq.Socket]:
        return []  # Ray has no socket to poll: the server's loop wakes every 100 ms and calls events()

    def events(self) -> list[Event | Ended]:
        for slot in self.slots:
            self._poll(slot)
        for slot in self.slots:
            if self.retry and slot.ready and slot.job is None:
                self._run(slot, self.retry.popleft())
        out, self._out = self._out, []
        return out

    # --- the actors' news --------------------------------------------------------------------------------------
    def _done(self, ref: Any) -> bool:
        return ref is not None and bool(self.ray.wait([ref], timeout=0)[0])

    def _poll(self, slot: Slot) -> None:
        ray = self.ray
        if slot.ready_ref is not None and self._done(slot.ready_ref):
            ref, slot.ready_ref = slot.ready_ref, None
            try:
                info = ray.get(ref)
                slot.ready = True
                log.info("actor %s ready: %s", slot.name, info)
            except Exception as exc:  # noqa: BLE001 - an actor that cannot start is replaced
                log.warning("actor %s did not start (%s); trying again in %g s", slot.name, exc, RESTART_DELAY_S)
                self._kill(slot)
                slot.restart_at = time.monotonic() + RESTART_DELAY_S  # not in a tight loop, not blocking the loop
            return
        if slot.restart_at is not None and time.monotonic() >= slot.restart_at:
            slot.restart_at = None
            self._start_actor(slot)
            return
        if slot.job is None:
            return
        if self._done(slot.take_ref):
            ref, slot.take_ref = slot.take_ref, None
            try:
                batch = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the actor died (killed, crashed, its node lost)
                self._died(slot, _death(exc))
                return
            for frames in batch:
                self._on_message(slot, frames)
            if slot.job is not None and slot.actor is not None:
                slot.take_ref = slot.actor.take.remote(TAKE_WAIT_S)
            return
        if self._done(slot.run_ref):
            try:
                ray.get(slot.run_ref)
            except Exception as exc:  # noqa: BLE001
                self._died(slot, _death(exc))
                return
        if slot.job is not None and time.monotonic() - slot.last_heard > self.silence_timeout_s:
            self._died(slot, f"sent nothing for {self.silence_timeout_s:g} s (hung, or one step or export took "
                             "longer than --job-silence-timeout) and was killed", retry=False)

    def _on_message(self, slot: Slot, frames: list[bytes]) -> None:
        header = json.loads(frames[0])
        slot.last_heard = time.monotonic()
        job = header.get("job")
        if slot.job is None or job != slot.job.id:
            return
        kind = header.get("type")
        if kind == "_done":
            slot.job, slot.run_ref = None, None
            self.attempts.pop(job, None)
            self._out.append(Ended(job, header.get("status", JobStatus.FAILED)))
            self.store.refresh(job)
            if header.get("restart"):  # after a GPU out-of-memory: a fresh process for the next job
                self._kill(slot)
                self._start_actor(slot)
        elif kind in CLIENT_EVENTS:
            self._out.append(Event(job, header, frames))
        elif kind == "_beat":
            self._out.append(Event(job, header))

    def _died(self, slot: Slot, why: str, retry: bool = True) -> None:
        job = slot.job
        self._kill(slot)
        slot.job = None
        self._start_actor(slot)
        if job is None:
            return
        self.attempts[job.id] = attempts = self.attempts.get(job.id, 0) + 1
        if retry and attempts <= self.max_retries:
            message = (f"job {job.id}: its Ray actor {why}; retrying it from the start on another actor "
                       f"(attempt {attempts + 1} of {self.max_retries + 1})")
            log.warning("%s", message)
            # The dead attempt's files go; the record says queued until the next actor takes it.
            self.store.fail_unfinished(job.id, job.record(JobStatus.QUEUED, ended=None, error=message))
            header = P.error_header("job_retry", message, job=job.id, fatal=False)
            self._out.append(Event(job.id, header, P.encode(header)))
            self.retry.append(job)
            return
        self.attempts.pop(job.id, None)
        message = f"job {job.id} failed: its Ray actor {why}" + (
            f" (attempt {attempts} of {self.max_retries + 1})" if retry else "") + "; the next job runs on a fresh actor"
        try:
            self.store.fail_unfinished(job.id, job.record(JobStatus.FAILED, error=message, attempts=attempts))
        except OSError as exc:
            message += f" (its record could not be written: {exc})"
        header = P.error_header("job_failed", message, job=job.id, fatal=True)
        self._out += [Event(job.id, header, P.encode(header)), Ended(job.id, JobStatus.FAILED)]

    # --- the end -------------------------------------------------------------------------------------------------
    def shutdown(self, grace_s: float) -> list[Event | Ended]:
        """Stop the running jobs (they checkpoint and record ``interrupted``), wait at most ``grace_s``, then kill
        the actors; a job still running then is recorded ``interrupted`` here."""
        for spec in list(self.retry):
            self.cancel(spec.id, "shutdown")
        for slot in self.slots:
            if slot.job is not None:
                self.cancel(slot.job.id, "shutdown")
        deadline = time.monotonic() + grace_s
        out: list[Event | Ended] = []
        while any(s.job is not None for s in self.slots) and time.monotonic() < deadline:
            out += self.events()
            time.sleep(0.05)
        out += self.events()
        self.retry.clear()
        for slot in self.slots:
            job = slot.job
            self._kill(slot)
            slot.job = None
            if job is not None:
                out += interrupted(self.store, job, f"the server stopped and its Ray actor was killed after the "
                                   f"{grace_s:g} s shutdown grace; the last periodic checkpoint, if any, is kept")
        if self._owns_ray:
            self.ray.shutdown()
        return out


def _death(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"died ({type(exc).__name__}: {text[:300]})"


__all__ = ["RAY_NAMESPACE", "RayExecutor", "RayWorker", "QueueChannel", "RayMissing", "RayUnusable", "import_ray", "INSTALL_HINT"]

"""The job worker: a separate process (``python -m backend.jobs.worker``) that runs one job at a time.

Jobs never run in the server's process: whatever a job does (hold the GIL in xatlas for seconds, segfault in
an extension, exhaust GPU memory, hang) the server's ROUTER loop keeps answering, and the server kills and
replaces a worker that died or went silent (backend/jobs/executor.py). The worker talks to the server over a
DEALER socket (``ZmqChannel``; a Ray actor gives the same runner an in-process ``Channel`` instead) on a private
ipc endpoint with the wire's own framing (JSON header + raw array frames; nothing is pickled). It runs each job
through the one runner (backend/jobs/runner.py) and writes every file of its job, job.json last. It holds the
priors: the last job's stays loaded, and a job whose ``model`` setting names another switches to it
(backend/jobs/models.py ``PriorCache``); the server only checks that the model is on the machine.

Messages from the server: ``run`` (``spec``: a JobSpec as JSON), ``stop`` (``job``, ``reason``, ``refined_by``,
``requested_step``), ``exit``. To the server: ``_ready``, the client events of the job (``started``,
``progress``, ``preview``, ``mesh``, ``finished``, ``cancelled``, ``error``), ``_beat`` after every step and
``_done`` (``status``, ``restart``) when the job is over.

Test hook (never reachable from the wire): ``TBSD_TEST_WORKER_FAULTS="oom@2,segv@1,hang@1,..."`` with
``TBSD_TEST_FAULT_DIR``: the n-th job any worker of that server starts gets the n-th fault at that step
(``oom`` raises torch.cuda.OutOfMemoryError, ``cuda_oom`` asks the GPU for 64 TiB, ``segv`` dereferences NULL,
``hang`` sleeps forever). ``TBSD_TEST_KILL_AT_PUBLISH`` (backend/files.py) kills the server at a job's N-th write.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zmq

from backend import records
from backend.jobs.executor import JobSpec
from backend.records import CHECKPOINT_FILE
from shared import protocol as P
from shared.status import JobStatus

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: the kernel SIGKILLs this process when the server dies, so no orphan keeps the GPU."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # elsewhere the poll loop's parent check ends it


class Stop(Exception):
    """Raised inside a sink when the server asked the job to stop."""


class Channel(Protocol):
    """How a job runner talks to whoever drives it: the server over ipc (``ZmqChannel``, this process) or a Ray
    executor in the same process (backend/jobs/ray_executor.py). Frames are the wire's (P.encode)."""

    def send(self, frames: list[Any]) -> None: ...
    def receive(self, timeout_ms: int) -> list[dict[str, Any]]: ...


class ZmqChannel:
    """A DEALER socket on the server's private ipc endpoint."""

    def __init__(self, endpoint: str, identity: bytes) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 2000)  # the last job's events leave before exit
        self.sock.setsockopt(zmq.ROUTING_ID, identity)
        self.sock.connect(endpoint)

    def send(self, frames: list[Any]) -> None:
        self.sock.send_multipart(frames, copy=False)

    def receive(self, timeout_ms: int) -> list[dict[str, Any]]:
        out = []
        while self.sock.poll(timeout_ms):
            timeout_ms = 0
            out.append(P.decode(self.sock.recv_multipart(), P.MAX_SERVER_INBOUND_BYTES).header)
        return out

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


class WorkerProcess:
    """Runs jobs one at a time and reports them over ``channel``; ``name`` (a Ray actor's) goes into job.json."""

    def __init__(self, channel: Channel, results: Path, device: str, name: str | None = None,
                 parent: int | None = None) -> None:
        from backend.jobs.models import PriorCache
        from backend.jobs.results import ResultStore
        from backend.priors import load_prior, resolve_device

        self.channel = channel
        self.name = name
        self.results = ResultStore(results)
        self.device = resolve_device(device)
        self.parent = parent if parent is not None else os.getppid()  # whose death ends this process
        # Each job names its model (settings["model"], filled in by the server); the last one stays loaded for the
        # next job, and a job naming another drops it first (backend/jobs/models.py).
        self.priors = PriorCache(load_prior, self.device)
        self.prior_loaded: bool | None = None  # whether the running job loaded its prior (False: kept)
        self.job: JobSpec | None = None
        self.stop: dict[str, Any] | None = None
        self.fault: tuple[str, int] | None = None

    # --- plumbing ----------------------------------------------------------------------------------------
    def send(self, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
        if self.job is not None and "job" not in header:
            header = {**header, "job": self.job.id}
        self.channel.send(P.encode(header, arrays))

    def _read_control(self, timeout_ms: int = 0) -> list[dict[str, Any]]:
        return self.channel.receive(timeout_ms)

    def _note_stops(self, messages: list[dict[str, Any]]) -> None:
        for m in messages:
            if m["type"] == "stop" and self.job is not None and m.get("job") == self.job.id and self.stop is None:
                self.stop = m
            elif m["type"] == "exit":
                raise SystemExit(0)

    def should_stop(self, step: int) -> bool:
        self._note_stops(self._read_control())
        self._fault_at(step)
        return self.stop is not None

    def serve(self) -> int:
        self.send({"type": "_ready", "pid": os.getpid()})
        while True:
            messages = self._read_control(1000)
            if os.getppid() != self.parent:
                return 0  # the server is gone (where PDEATHSIG is not available)
            for m in messages:
                if m["type"] == "exit":
                    return 0
                if m["type"] == "run":
                    if not self.run_job(m["spec"]):
                        return 0  # a fresh process for the next job (after a GPU out-of-memory)

    # --- one job -------------------------------------------------------------------------------------------
    def _load_prior(self, model: str, procedural_resolution: int, ip_adapter: str = "") -> Any:
        prior, self.prior_loaded = self.priors.get(model, procedural_resolution, ip_adapter)
        return prior

    def base_record(self, spec: JobSpec, status: JobStatus, **extra: Any) -> dict[str, Any]:
        # A Ray actor's name, and the attempt when an earlier one's actor died (backend/jobs/ray_executor.py).
        head: dict[str, Any] = {"worker": self.name} if self.name else {}
        if spec.attempt > 1:
            head["attempt"] = spec.attempt
        return spec.record(status, prior_loaded=self.prior_loaded, head=head,
                           process={"device": str(self.device), "worker_pid": os.getpid()}, **extra)

    def run_job(self, payload: dict[str, Any]) -> bool:
        """Run one job to its end; False when this process should be replaced afterwards."""
        import torch

        from backend.jobs.runner import JobRun

        spec = JobSpec.from_json(payload)
        self.job, self.stop, self.prior_loaded = spec, None, None
        self._claim_fault(spec)
        folder = self.results.job_dir(spec.id)
        run: JobRun | None = None
        status, restart = JobStatus.FAILED, False
        try:
            # Written first, so a server killed mid-job leaves a record a restarted server resumes from.
            self.results.write_record(spec.id, self.base_record(spec, JobStatus.RUNNING, ended=None))
            run = JobRun(spec.plan(folder), self.device, self._load_prior)
            trainer = run.prepare()
            self.send({"type": "started", "step": trainer.step, "total": trainer.total})
            if run.train(self._events(spec, folder)):
                self._finish(spec, run)
                status = JobStatus.FINISHED
            else:
                status = self._stopped(spec, trainer, folder)
        except Exception as exc:  # noqa: BLE001 - any failure ends this job only
            restart = isinstance(exc, torch.cuda.OutOfMemoryError)
            self._failed(spec, run.trainer if run is not None else None, exc)
        finally:
            self.send({"type": "_done", "status": status, "restart": restart})
            self.job = None
        return not restart

    def _events(self, spec: JobSpec, folder: Path) -> Any:
        from backend.train import TrainEvents

        stream = spec.stream

        def on_progress(p: Any) -> None:
            self.send({"type": "_beat", "step": p.step})
            if p.step % stream["progress_every"] == 0 or p.step == p.total:
                loss = p.loss
                self.send({"type": "progress", "step": p.step, "total": p.total,
                           "loss": loss if np.isfinite(loss) else None, "seconds": round(p.seconds, 3),
                           "eta_seconds": round(p.eta_seconds, 3)})

        def on_preview(step: int, strip: Any) -> None:
            image = (strip.permute(1, 2, 0).clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
            self.send({"type": "preview", "step": step, "views": stream["preview_views"]}, {"image": image})

        def on_mesh(step: int, trainer: Any) -> None:
            self._send_intermediate(spec, trainer, step, folder)

        step = {"n": 0}

        def should_stop() -> bool:
            step["n"] += 1
            return self.should_stop(step["n"])

        return TrainEvents(on_progress=on_progress, on_preview=on_preview, on_mesh=on_mesh,
                           should_stop=should_stop, checkpoint_path=folder / CHECKPOINT_FILE)

    def _send_intermediate(self, spec: JobSpec, trainer: Any, step: int, folder: Path) -> None:
        import shutil

        from backend.files import publish_folder
        from backend.jobs.finish import export_result

        out = folder / "intermediate"
        out.mkdir(parents=True, exist_ok=True)
        # Written in a staging folder and renamed in, like the final files: a kill mid-write leaves no torn GLB
        # (remove_leftovers clears the job folder's .staging-* at restart).
        staging = folder / f".staging-intermediate-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        stream = spec.stream
        name = f"step_{step:06d}.glb"
        try:
            result = export_result(trainer, staging, formats=("glb",), stem=f"step_{step:06d}",
                                   mesh_resolution=stream["mesh_resolution"], texture_size=stream["mesh_texture_size"])
            publish_folder(staging, out)
        except Exception as exc:  # noqa: BLE001 - early in a run the field may hold no surface yet
            shutil.rmtree(staging, ignore_errors=True)
            self.send({"type": "error", "code": "mesh_failed", "fatal": False,
                       "message": f"intermediate mesh at step {step} failed: {exc}"})
            return
        for old in out.glob("step_*.glb"):  # keep only the newest intermediate on disk
            if old.name != name:
                old.unlink(missing_ok=True)
        # On disk first, then sent: the arrays the GLB was written from, not the file read back.
        self.send({"type": "mesh", "step": step, "final": False}, result["export"]["arrays"])

    def _stopped(self, spec: JobSpec, trainer: Any, folder: Path) -> JobStatus:
        trainer.save_checkpoint(folder / CHECKPOINT_FILE)
        stop = self.stop or {}
        reason = stop.get("reason") or "cancel"
        status = JobStatus.INTERRUPTED if reason == "shutdown" else JobStatus.CANCELLED
        record = self.base_record(spec, status, steps_done=trainer.step, total=trainer.total,
                                  stop_reason=reason, refined_by=stop.get("refined_by"), checkpoint=CHECKPOINT_FILE)
        self.results.write_record(spec.id, record)
        header: dict[str, Any] = {"type": "cancelled", "step": trainer.step, "reason": reason}
        if stop.get("refined_by"):
            header["refined_by"] = stop["refined_by"]
        if stop.get("requested_step") is not None:
            header["requested_step"] = stop["requested_step"]
        self.send(header)
        return status

    def _finish(self, spec: JobSpec, run: Any) -> None:
        assert run.trainer is not None
        # Checkpoint, meshes, preview, then job.json: all on disk before the client hears "finished".
        done = run.finish(self.base_record(spec, JobStatus.FINISHED))
        self.send({"type": "mesh", "step": run.trainer.step, "final": True}, done.arrays)
        record = done.record
        summary = {k: record[k] for k in ("steps_done", "total", "seconds", "mesh", "figures") if k in record}
        files = sorted([*record["all_files"], records.RECORD_FILE])
        self.send({"type": "finished", "status": JobStatus.FINISHED, "record": summary, "files": files})

    def _failed(self, spec: JobSpec, trainer: Any, exc: BaseException) -> None:
        import torch

        text = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            text = ("GPU out of memory: " + text + " (try fewer views_per_step, a lower render resolution or "
                    "quality draft); the worker process is restarted for the next job")
        record = self.base_record(spec, JobStatus.FAILED, error=text, traceback=traceback.format_exc()[-4000:],
                                  steps_done=trainer.step if trainer is not None else 0)
        try:
            self.results.fail_unfinished(spec.id, record)
        except (OSError, ValueError) as write_error:
            # The client must know the record is missing too; the server writes one when it hears _done.
            text += f" (and its record could not be written: {write_error})"
        self.send({"type": "error", "code": "job_failed", "fatal": True, "message": f"job {spec.id} failed: {text}"})

    # --- test hook -----------------------------------------------------------------------------------------
    def _claim_fault(self, spec: JobSpec) -> None:
        self.fault = None
        kill_at = os.environ.get("TBSD_TEST_KILL_AT_PUBLISH")
        if kill_at:  # backend/files.py: "N[+][@R]", comma-separated: the publish to kill at in a job's R-th resumption
            from backend.files import arm_kill_hook

            points = {}
            for item in kill_at.split(","):
                point, _, run = item.partition("@")
                points[int(run or 0)] = point
            arm_kill_hook(points.get(spec.recovered))
        faults, folder = os.environ.get("TBSD_TEST_WORKER_FAULTS"), os.environ.get("TBSD_TEST_FAULT_DIR")
        if not faults or not folder:
            return
        for i, item in enumerate(faults.split(",")):
            try:  # the first fault no earlier job claimed (O_EXCL: claimed once, whichever worker asks)
                os.close(os.open(os.path.join(folder, f"fault-{i}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            kind, _, at = item.partition("@")
            self.fault = (kind, int(at or 1))
            return

    def _fault_at(self, step: int) -> None:
        if self.fault is None or step != self.fault[1]:
            return
        kind = self.fault[0]
        if kind == "oom":
            import torch

            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (test hook)")
        if kind == "cuda_oom":  # a real one from the caching allocator: 64 TiB fits on no GPU
            import torch

            torch.empty(1 << 46, dtype=torch.uint8, device="cuda")
        if kind == "segv":
            ctypes.string_at(0)
        if kind == "hang":
            while True:
                time.sleep(60)


def main(argv: list[str]) -> int:
    endpoint, identity, results, device, server_pid = argv
    _die_with_parent()
    if os.getppid() != int(server_pid):
        # The server died while this process was still importing, before it could ask to die with it: nobody
        # would ever send it a job, and it would stay forever (reparented, holding its share of the GPU).
        return 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the terminal goes to the server, which decides
    try:
        os.nice(2)  # the server's loop (and the desktop) first; the GPU does not care
    except OSError:
        pass
    channel = ZmqChannel(endpoint, identity.encode())
    try:
        return WorkerProcess(channel, Path(results), device, parent=int(server_pid)).serve()
    finally:
        channel.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

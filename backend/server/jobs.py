"""Jobs and the worker thread that runs them, one at a time.

The worker owns torch (prior, trainer); it never touches the ROUTER socket, because zmq sockets are not
thread-safe. Everything it has to say goes into ``outbox`` as ``(job, header, arrays)`` and a byte on an
inproc PAIR socket wakes the main thread, which does all sending. The main thread talks to the worker only
through ``Job.stop_reason`` (polled by the trainer between steps, so a cancel lands within one step) and
the worker's inbox queue.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from backend.server.meshfile import read_glb
from backend.server.models import PriorCache
from backend.server.results import ResultStore

WAKE_ENDPOINT = "inproc://tbsd-server-wake"


@dataclass(eq=False)  # identity semantics: a job is itself, whatever its fields
class Job:
    id: str
    owner: str  # the client token that owns it (hello's "client", else the connection's identity)
    identity: bytes  # ROUTER identity its events go to (updated when the owner reconnects)
    prompt: str
    settings: dict[str, Any]  # complete, validated (for a refine: the source's settings with the changes)
    stream: dict[str, int]
    parent: str | None = None  # the job a refine continues
    source_checkpoint: Path | None = None
    refine_steps: int = 0
    status: str = "queued"  # queued, running, finished, cancelled, failed, interrupted
    # Set by the main thread, read by the worker between steps: "cancel", "refined" or "shutdown".
    stop_reason: str | None = None
    refined_by: str | None = None
    step: int = 0
    stop_requested_step: int | None = None  # job.step when the main thread asked it to stop
    prior_loaded: bool | None = None  # whether this job loaded its prior (False: kept from the previous job)
    created: str = field(default_factory=lambda: _now())


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Worker(threading.Thread):
    """Runs jobs handed to ``inbox`` (None stops it); reports through ``outbox`` and the wake socket."""

    def __init__(self, ctx: zmq.Context, store: ResultStore, device: Any) -> None:
        from backend.priors import load_prior

        super().__init__(name="tbsd-job-worker", daemon=True)
        self.ctx = ctx
        self.store = store
        self.device = device
        self.inbox: queue.Queue[Job | None] = queue.Queue()
        self.outbox: queue.Queue[tuple[Job, dict[str, Any], dict[str, np.ndarray]]] = queue.Queue()
        # Each job names its model (settings["model"]); the last one stays loaded for the next job.
        self.priors = PriorCache(load_prior, device)
        self._wake: zmq.Socket | None = None

    # --- plumbing ----------------------------------------------------------------------------------------
    def emit(self, job: Job, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
        header = {**header, "job": job.id}
        self.outbox.put((job, header, arrays or {}))
        assert self._wake is not None
        self._wake.send(b"", zmq.NOBLOCK)

    def run(self) -> None:
        # The PAIR end is created in this thread and used only here.
        self._wake = self.ctx.socket(zmq.PAIR)
        self._wake.setsockopt(zmq.LINGER, 0)
        self._wake.connect(WAKE_ENDPOINT)
        try:
            while True:
                job = self.inbox.get()
                if job is None:
                    break
                self.run_job(job)
        finally:
            self._wake.close(linger=0)

    # --- one job ---------------------------------------------------------------------------------------------
    def base_record(self, job: Job, status: str) -> dict[str, Any]:
        return {"job": job.id, "owner": job.owner, "status": status, "prompt": job.prompt, "parent": job.parent,
                "created": job.created, "settings": job.settings, "stream": job.stream,
                "representation": job.settings.get("representation"), "method": job.settings.get("method"),
                "device": str(self.device), "server_pid": os.getpid(), "model": job.settings.get("model"),
                "prior_loaded": job.prior_loaded}

    def run_job(self, job: Job) -> None:
        job.status = "running"
        folder = self.store.job_dir(job.id)
        trainer = None
        try:
            # Written first, so a server killed mid-job leaves a record a restarted server reports as "lost".
            self.store.write_record(job.id, self.base_record(job, "running"))
            t0 = time.perf_counter()
            prior, job.prior_loaded = self.priors.get(job.settings["model"], job.settings["procedural_resolution"])
            load_seconds = time.perf_counter() - t0
            trainer = self._trainer(job, prior)
            self.emit(job, {"type": "started", "step": trainer.step, "total": trainer.total})
            t1 = time.perf_counter()
            completed = trainer.run(self._events(job, trainer, folder))
            train_seconds = time.perf_counter() - t1
            job.step = trainer.step
            if not completed:
                self._stopped(job, trainer, folder)
                return
            self._finish(job, trainer, prior, folder, load_seconds, train_seconds)
        except Exception as exc:  # noqa: BLE001 - any failure ends this job only
            self._failed(job, trainer, exc)
        finally:
            self.emit(job, {"type": "_done"})

    def _trainer(self, job: Job, prior: Any) -> Any:
        from backend.train import Trainer

        if job.source_checkpoint is None:
            return Trainer(prior, job.prompt, job.settings, device=self.device)
        trainer = Trainer.from_checkpoint(job.source_checkpoint, prior, self.device, job.prompt, job.settings)
        # Refine trains refine_steps more; schedules see the longer run as one run.
        trainer.total = trainer.step + job.refine_steps
        trainer.settings["steps"] = trainer.total
        job.settings = dict(trainer.settings)
        return trainer

    def _events(self, job: Job, trainer: Any, folder: Path) -> Any:
        from backend.train import TrainEvents

        stream = job.stream
        every = trainer.settings["preview_every"]

        def on_progress(p: Any) -> None:
            job.step = p.step
            if p.step % stream["progress_every"] == 0 or p.step == trainer.total:
                self.emit(job, {"type": "progress", "step": p.step, "total": p.total, "loss": _finite(p.loss),
                                "seconds": round(p.seconds, 3), "eta_seconds": round(p.eta_seconds, 3)})
            # Previews are drawn here rather than through TrainEvents.on_preview so the size follows the
            # stream option (a 128 px strip costs seconds on a CPU).
            if every > 0 and (p.step % every == 0 or p.step == trainer.total):
                self._send_preview(job, trainer, p.step)

        def mesh_requested(step: int) -> bool:
            n = stream["mesh_every"]
            return n > 0 and step % n == 0 and step < trainer.total and job.stop_reason is None

        return TrainEvents(on_progress=on_progress, should_stop=lambda: job.stop_reason is not None,
                           mesh_requested=mesh_requested,
                           on_mesh_request=lambda step, tr: self._send_intermediate(job, tr, step, folder),
                           progress_every=1)

    def _send_preview(self, job: Job, trainer: Any, step: int) -> None:
        views = job.stream["preview_views"]
        strip = trainer.preview(views, job.stream["preview_size"])  # [3, H, views * H] in [0, 1]
        image = (strip.permute(1, 2, 0).clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
        self.emit(job, {"type": "preview", "step": step, "views": views}, {"image": image})

    def _send_intermediate(self, job: Job, trainer: Any, step: int, folder: Path) -> None:
        from backend.generate import export_result

        out = folder / "intermediate"
        try:
            result = export_result(trainer, out, formats=("glb",), stem=f"step_{step:06d}",
                                   mesh_resolution=job.stream["mesh_resolution"],
                                   texture_size=job.stream["mesh_texture_size"])
            arrays = read_glb(Path(result["export"]["files"]["glb"]))
        except Exception as exc:  # noqa: BLE001 - early in a run the field may hold no surface yet
            self.emit(job, {"type": "error", "code": "mesh_failed", "fatal": False,
                            "message": f"intermediate mesh at step {step} failed: {exc}"})
            return
        for old in out.glob("step_*.glb"):  # keep only the newest intermediate on disk
            if old.name != f"step_{step:06d}.glb":
                old.unlink(missing_ok=True)
        self.emit(job, {"type": "mesh", "step": step, "final": False}, arrays)

    def _stopped(self, job: Job, trainer: Any, folder: Path) -> None:
        trainer.save_checkpoint(folder / "checkpoint.pt")
        reason = job.stop_reason or "cancel"
        job.status = "interrupted" if reason == "shutdown" else "cancelled"
        record = self.base_record(job, job.status)
        record.update(steps_done=trainer.step, total=trainer.total, ended=_now(), stop_reason=reason,
                      refined_by=job.refined_by, checkpoint="checkpoint.pt")
        self.store.write_record(job.id, record)
        header: dict[str, Any] = {"type": "cancelled", "step": trainer.step, "reason": reason}
        if job.refined_by:
            header["refined_by"] = job.refined_by
        if job.stop_requested_step is not None:
            header["requested_step"] = job.stop_requested_step
        self.emit(job, header)

    def _finish(self, job: Job, trainer: Any, prior: Any, folder: Path, load_seconds: float,
                train_seconds: float) -> None:
        from backend.generate import run_job

        record = run_job(prior, job.prompt, trainer.settings, folder, self.device, trainer=trainer,
                         load_seconds=load_seconds)
        record["seconds"]["train"] = train_seconds  # run_job's own loop had nothing left to train
        record["steps_per_second"] = trainer.step / max(train_seconds, 1e-9)
        trainer.save_checkpoint(folder / "checkpoint.pt")
        record.update(self.base_record(job, "finished"))
        record.update(steps_done=trainer.step, total=trainer.total, ended=_now(), checkpoint="checkpoint.pt")
        # Record and meshes are on disk before the client hears "finished" (a crash after this loses nothing).
        self.store.write_record(job.id, record)
        job.status = "finished"
        self.emit(job, {"type": "mesh", "step": trainer.step, "final": True}, read_glb(folder / "mesh.glb"))
        files = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.endswith(".tmp"))
        summary = {k: record[k] for k in ("steps_done", "total", "seconds", "mesh", "figures") if k in record}
        self.emit(job, {"type": "finished", "status": "finished", "record": summary, "files": files})

    def _failed(self, job: Job, trainer: Any, exc: BaseException) -> None:
        import torch

        text = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            text = "GPU out of memory: " + text + " (try fewer views_per_step, a lower render resolution or draft)"
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next job starts from a clean allocator
        job.status = "failed"
        record = self.base_record(job, "failed")
        record.update(error=text, traceback=traceback.format_exc()[-4000:], ended=_now(),
                      steps_done=trainer.step if trainer is not None else 0)
        try:
            self.store.write_record(job.id, record)
        except OSError:
            pass  # the error still reaches the client
        self.emit(job, {"type": "error", "code": "job_failed", "fatal": True, "message": f"job {job.id} failed: {text}"})


def _finite(x: float) -> float | None:
    return x if np.isfinite(x) else None


__all__ = ["Job", "Worker", "WAKE_ENDPOINT"]

"""The server's main thread: the ROUTER socket, request handling, the FIFO queue, heartbeats, shutdown.

Only this thread touches the ROUTER socket. Jobs run on the Worker thread (backend/server/jobs.py), whose
events arrive through its outbox and a wake-up on an inproc PAIR socket. Every request gets a reply; a bad one
gets an ``error`` naming the problem and the loop carries on (no client message can stop the server except
``shutdown``).
"""

from __future__ import annotations

import collections
import logging
import signal
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zmq

from backend.server.jobs import WAKE_ENDPOINT, Job, Worker
from backend.server.meshfile import read_glb
from backend.server.models import PROCEDURAL, ModelMissing, check_model, local_models
from backend.server.results import ResultStore
from backend.server.security import CurveConfig, apply_curve, check_bind
from shared import protocol as P
from shared.settings import MAX_PROMPT_CHARS, METHODS, REPRESENTATIONS, SettingsError, validate

log = logging.getLogger("backend.server")

# Settings a refine may not change: the checkpoint's scene and prior fix them.
REFINE_FIXED = ("representation", "model")
SHUTDOWN_WAIT_S = 300.0


class Server:
    def __init__(self, bind: str, results: Path, device: Any, model: str = "procedural",
                 curve: CurveConfig | None = None, models_dir: Path | None = None) -> None:
        check_bind(bind, curve)
        self.bind = bind
        self.model = model  # for jobs that name no model
        self.models_dir = models_dir  # diffusers folders offered in hello's capabilities (beside the HF cache)
        self.device = device
        self.store = ResultStore(results)
        lost = self.store.mark_lost()
        if lost:
            log.warning("jobs left running by a previous server are marked lost: %s", ", ".join(lost))
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        # libzmq drops a peer that sends a bigger frame; below it, oversize messages get an error reply.
        self.router.setsockopt(zmq.MAXMSGSIZE, P.HARD_FRAME_LIMIT_BYTES)
        self.router.setsockopt(zmq.SNDHWM, 10000)
        self.auth = apply_curve(self.ctx, self.router, curve) if curve is not None else None
        self.router.bind(bind)
        self.wake = self.ctx.socket(zmq.PAIR)
        self.wake.setsockopt(zmq.LINGER, 0)
        self.wake.bind(WAKE_ENDPOINT)
        self.worker = Worker(self.ctx, self.store, device)
        self.pending: collections.deque[Job] = collections.deque()
        self.running: Job | None = None
        self.jobs: dict[str, Job] = {}  # live jobs of this server's lifetime
        self.owners: dict[bytes, str] = {}
        self.last_seen: dict[bytes, float] = {}
        self.last_heartbeat = 0.0
        self.stopping: str | None = None
        self._signal: str | None = None
        self._check_prompt = self._prompt_checker()
        self.handlers: dict[str, Callable[[bytes, P.Message], None]] = {
            "hello": self.on_hello, "submit": self.on_submit, "cancel": self.on_cancel, "refine": self.on_refine,
            "list": self.on_list, "fetch": self.on_fetch, "ping": self.on_ping, "shutdown": self.on_shutdown,
        }

    # --- sending ---------------------------------------------------------------------------------------------
    def send(self, identity: bytes, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
        try:
            frames = P.encode(header, arrays)
            # ROUTER drops messages to a peer that is gone or over its high-water mark: never blocks the loop.
            self.router.send_multipart([identity, *frames], flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:
            log.warning("could not send %s: %s", header.get("type"), exc)

    def reply(self, identity: bytes, request: P.Message | None, header: dict[str, Any],
              arrays: dict[str, np.ndarray] | None = None) -> None:
        if request is not None and request.get("id") is not None:
            header = {**header, "id": request.get("id")}
        self.send(identity, header, arrays)

    def error(self, identity: bytes, code: str, message: str, request_id: Any = None, job: str | None = None) -> None:
        self.send(identity, P.error_header(code, message, request_id, job))

    # --- the loop ------------------------------------------------------------------------------------------------
    def serve_forever(self) -> int:
        self.worker.start()
        # The handler only records the signal: it may run between two frames of a multipart send.
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_signal", "SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "_signal", "SIGINT"))
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.wake, zmq.POLLIN)
        stop_deadline = None
        log.info("serving on %s (model %s, device %s, results %s)", self.bind, self.model, self.device,
                 self.store.root)
        print(f"ready: serving {self.bind}", flush=True)
        try:
            while True:
                try:
                    ready = dict(poller.poll(100))
                except zmq.ZMQError as exc:
                    if exc.errno == zmq.EINTR:
                        continue
                    raise
                if self._signal is not None:
                    self.begin_stop(self._signal)
                if self.router in ready:
                    self._read_requests()
                if self.wake in ready:
                    self._drain_wake()
                self._drain_outbox()
                self._dispatch()
                self._heartbeat()
                if self.stopping is not None:
                    stop_deadline = stop_deadline or time.monotonic() + SHUTDOWN_WAIT_S
                    if self.running is None or time.monotonic() > stop_deadline:
                        break
        finally:
            self._close()
        return 0

    def _read_requests(self) -> None:
        for _ in range(1000):  # bounded so the worker's events are not starved by a flood
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity, payload = frames[0], frames[1:]
            self.last_seen[identity] = time.monotonic()
            self.handle(identity, payload)

    def handle(self, identity: bytes, payload: list[bytes]) -> None:
        request_id = None
        try:
            message = P.decode(payload, P.MAX_SERVER_INBOUND_BYTES)
            request_id = message.get("id")
            P.check_fields(message, "c2s")
            self.handlers[message.type](identity, message)
        except P.ProtocolError as exc:
            self.error(identity, exc.code, exc.message, exc.request_id if exc.request_id is not None else request_id)
        except Exception as exc:  # noqa: BLE001 - a handler bug must not take the server down
            log.exception("handler failed")
            self.error(identity, "internal", f"internal error: {type(exc).__name__}: {exc}", request_id)

    def _drain_wake(self) -> None:
        while True:
            try:
                self.wake.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    def _drain_outbox(self) -> None:
        while True:
            try:
                job, header, arrays = self.worker.outbox.get_nowait()
            except Exception:  # queue.Empty
                return
            if header["type"] == "_done":
                if self.running is job:
                    self.running = None
                continue
            self.send(job.identity, header, arrays)

    def _dispatch(self) -> None:
        if self.running is None and self.pending and self.stopping is None:
            job = self.pending.popleft()
            self.running = job
            job.status = "running"
            self.worker.inbox.put(job)

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self.last_heartbeat < P.HEARTBEAT_INTERVAL_S:
            return
        self.last_heartbeat = now
        for identity, seen in list(self.last_seen.items()):
            if now - seen > P.CLIENT_FORGET_S:
                del self.last_seen[identity]
                continue
            self.send(identity, {"type": "heartbeat", "t": time.time()})

    def begin_stop(self, reason: str) -> None:
        """Stop after the running job's current step; it checkpoints and is recorded "interrupted"."""
        if self.stopping is not None:
            return
        self.stopping = reason
        log.info("stopping (%s)", reason)
        if self.running is not None and self.running.stop_reason is None:
            self.running.stop_reason = "shutdown"
        while self.pending:
            job = self.pending.popleft()
            job.status = "cancelled"
            self.send(job.identity, {"type": "cancelled", "job": job.id, "step": 0, "reason": "shutdown"})

    def _close(self) -> None:
        self._drain_outbox()
        for identity in list(self.last_seen):
            self.send(identity, {"type": "shutting_down", "reason": self.stopping or "stopped"})
        self.worker.inbox.put(None)
        self.worker.join(timeout=10)
        if self.auth is not None:
            self.auth.stop()
        self.router.close(linger=200)  # a short linger lets the goodbyes leave
        self.wake.close(linger=0)
        self.ctx.term()

    # --- handlers ----------------------------------------------------------------------------------------------
    def owner(self, identity: bytes) -> str:
        return self.owners.get(identity) or "conn-" + identity.hex()

    def on_hello(self, identity: bytes, m: P.Message) -> None:
        token = m.get("client") or "conn-" + identity.hex()
        self.owners[identity] = token
        for job in self.jobs.values():  # a reconnecting client gets its live jobs' events again
            if job.owner == token:
                job.identity = identity
        self.reply(identity, m, {"type": "welcome", "server": "tbsd-studio backend", "client": token,
                                 "capabilities": self.capabilities()})

    def capabilities(self) -> dict[str, Any]:
        gpu = None
        if getattr(self.device, "type", str(self.device)) == "cuda":
            import torch

            free, total = torch.cuda.mem_get_info(self.device)
            gpu = {"name": torch.cuda.get_device_name(self.device), "total_bytes": total, "free_bytes": free}
        return {
            "protocol": P.VERSION, "methods": list(METHODS), "representations": list(REPRESENTATIONS),
            "model": self.model, "models": local_models(self.models_dir), "device": str(self.device), "gpu": gpu,
            "limits": {"max_message_bytes": P.MAX_SERVER_INBOUND_BYTES, "max_prompt_chars": MAX_PROMPT_CHARS,
                       "max_queued_jobs": P.MAX_QUEUED_JOBS, "max_queued_per_client": P.MAX_QUEUED_PER_CLIENT},
            "stream_defaults": dict(P.STREAM_DEFAULTS), "dtypes": list(P.DTYPES),
            "heartbeat_interval_s": P.HEARTBEAT_INTERVAL_S, "backend_timeout_s": P.BACKEND_TIMEOUT_S,
        }

    def _prompt_checker(self) -> Callable[[str, dict[str, Any]], None]:
        """Checks a prompt against the job's prior before queueing it, so an unreadable one fails at once."""
        from backend.distill.step import prompt_set
        from backend.priors.base import PriorError
        from backend.priors.procedural.prior import ProceduralPrior

        prior = ProceduralPrior(resolution=16, device="cpu")

        def check(prompt: str, settings: dict[str, Any]) -> None:
            if settings["model"] != PROCEDURAL:
                return  # Stable Diffusion reads any text
            try:
                prior.check_prompts(prompt_set(prompt, settings))
            except PriorError as exc:
                raise P.ProtocolError("prompt", str(exc)) from None

        return check

    def _settings(self, given: Any, base: dict[str, Any] | None, rid: Any) -> dict[str, Any]:
        try:
            settings = validate(given or {}, base=base)
        except SettingsError as exc:
            raise P.ProtocolError("settings", str(exc), rid) from None
        if "model" not in (given or {}) and base is None:
            settings["model"] = self.model  # the schema's default is procedural; the server's may differ
        try:
            check_model(settings["model"], self.models_dir)
        except ModelMissing as exc:
            raise P.ProtocolError("model", str(exc), rid) from None
        return settings

    def _check_queue(self, owner: str, rid: Any) -> None:
        if self.stopping is not None:
            raise P.ProtocolError("bad_state", f"the server is shutting down ({self.stopping}); no new jobs", rid)
        if len(self.pending) >= P.MAX_QUEUED_JOBS:
            raise P.ProtocolError("queue_full", f"{len(self.pending)} jobs are queued; at most {P.MAX_QUEUED_JOBS}", rid)
        mine = sum(1 for j in self.pending if j.owner == owner)
        if mine >= P.MAX_QUEUED_PER_CLIENT:
            raise P.ProtocolError("queue_full", f"this client has {mine} queued jobs; at most "
                                                f"{P.MAX_QUEUED_PER_CLIENT}", rid)

    def _new_id(self) -> str:
        return time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:8]

    def _position(self, job: Job) -> int:
        return list(self.pending).index(job) if job in self.pending else 0

    def on_submit(self, identity: bytes, m: P.Message) -> None:
        rid = m.get("id")
        owner = self.owner(identity)
        prompt = P.check_prompt(m["prompt"], MAX_PROMPT_CHARS, rid)
        stream = P.check_stream(m.get("stream"), rid)
        settings = self._settings(m.get("settings"), None, rid)
        try:
            self._check_prompt(prompt, settings)
        except P.ProtocolError as exc:
            raise P.ProtocolError(exc.code, exc.message, rid) from None
        self._check_queue(owner, rid)
        job = Job(self._new_id(), owner, identity, prompt, settings, stream)
        self.jobs[job.id] = job
        self.pending.append(job)
        self.reply(identity, m, {"type": "accepted", "job": job.id, "position": self._position(job)})

    def _live_job(self, identity: bytes, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        return job if job is not None and job.owner == self.owner(identity) else None

    def _disk_record(self, identity: bytes, job_id: str) -> dict[str, Any] | None:
        record = self.store.read_record(job_id)
        return record if record is not None and record.get("owner") == self.owner(identity) else None

    def _unknown(self, job_id: str, rid: Any) -> P.ProtocolError:
        # Another client's job reads as unknown: clients never learn of each other's jobs.
        return P.ProtocolError("unknown_job", f"unknown job id {job_id!r} (no job of this client has that id)", rid)

    def on_cancel(self, identity: bytes, m: P.Message) -> None:
        rid, job_id = m.get("id"), m["job"]
        job = self._live_job(identity, job_id)
        if job is None:
            if self._disk_record(identity, job_id) is not None:
                raise P.ProtocolError("bad_state", f"job {job_id} has already ended; nothing to cancel", rid)
            raise self._unknown(job_id, rid)
        if job in self.pending:
            self.pending.remove(job)
            job.status = "cancelled"
            self.reply(identity, m, {"type": "cancelled", "job": job.id, "step": 0, "reason": "cancel"})
        elif job is self.running:
            if job.stop_reason is None:
                job.stop_reason, job.stop_requested_step = "cancel", job.step  # the worker answers after this step
        else:
            raise P.ProtocolError("bad_state", f"job {job_id} has already ended ({job.status}); nothing to cancel", rid)

    def on_refine(self, identity: bytes, m: P.Message) -> None:
        rid, source_id = m.get("id"), m["job"]
        owner = self.owner(identity)
        live = self._live_job(identity, source_id)
        record = self._disk_record(identity, source_id)
        if live is None and record is None:
            raise self._unknown(source_id, rid)
        running = live is not None and live is self.running
        if live is not None and live in self.pending:
            raise P.ProtocolError("bad_state", f"job {source_id} has not started; cancel it and submit again", rid)
        checkpoint = self.store.job_dir(source_id) / "checkpoint.pt"
        if not running and not checkpoint.is_file():
            raise P.ProtocolError("bad_state", f"job {source_id} has no checkpoint to refine from "
                                               f"(status {(record or {}).get('status', live and live.status)})", rid)
        base = dict(live.settings if live is not None else record.get("settings") or {})
        given = dict(m.get("settings") or {})
        for name in REFINE_FIXED:
            if name in given and given[name] != base.get(name):
                raise P.ProtocolError("settings", f"refine cannot change '{name}' (the checkpoint fixes it); "
                                                  "submit a new job instead", rid)
        try:
            settings = self._settings(given, base, rid)
        except P.ProtocolError as exc:
            raise P.ProtocolError(exc.code, exc.message, rid) from None
        prompt = m.get("prompt")
        prompt = P.check_prompt(prompt, MAX_PROMPT_CHARS, rid) if prompt is not None else (
            live.prompt if live is not None else record.get("prompt", ""))
        try:
            self._check_prompt(prompt, settings)
        except P.ProtocolError as exc:
            raise P.ProtocolError(exc.code, exc.message, rid) from None
        self._check_queue(owner, rid)
        stream = P.check_stream(m.get("stream") or (live.stream if live is not None else record.get("stream")), rid)
        job = Job(self._new_id(), owner, identity, prompt, settings, stream, parent=source_id,
                  source_checkpoint=checkpoint, refine_steps=int(given.get("steps", base.get("steps", 1))))
        self.jobs[job.id] = job
        if running:
            # The running job stops after its step and checkpoints; its continuation runs next.
            assert live is not None
            live.stop_reason, live.refined_by, live.stop_requested_step = "refined", job.id, live.step
            self.pending.appendleft(job)
        else:
            self.pending.append(job)
        self.reply(identity, m, {"type": "accepted", "job": job.id, "parent": source_id,
                                 "position": self._position(job)})

    def on_list(self, identity: bytes, m: P.Message) -> None:
        owner = self.owner(identity)
        on_disk = {s["job"]: s for s in self.store.summaries(owner)}
        for job in self.jobs.values():
            if job.owner == owner and job.status in ("queued", "running"):
                on_disk[job.id] = {"job": job.id, "status": job.status, "prompt": job.prompt, "parent": job.parent,
                                   "created": job.created, "steps_done": job.step,
                                   "position": self._position(job) if job.status == "queued" else None}
        results = sorted(on_disk.values(), key=lambda s: s.get("created") or "")
        self.reply(identity, m, {"type": "results", "results": results})

    def on_fetch(self, identity: bytes, m: P.Message) -> None:
        rid, job_id = m.get("id"), m["job"]
        record = self._disk_record(identity, job_id)
        if record is None:
            if self._live_job(identity, job_id) is not None:
                raise P.ProtocolError("bad_state", f"job {job_id} has not finished; nothing to fetch yet", rid)
            raise self._unknown(job_id, rid)
        folder = self.store.job_dir(job_id)
        glb = folder / "mesh.glb"
        if not glb.is_file():
            raise P.ProtocolError("bad_state", f"job {job_id} has no final mesh (status {record.get('status')})", rid)
        public = {k: v for k, v in record.items() if k not in ("traceback", "owner")}
        self.reply(identity, m, {"type": "result", "job": job_id, "record": public}, read_glb(glb))

    def on_ping(self, identity: bytes, m: P.Message) -> None:
        self.reply(identity, m, {"type": "pong", "t": m.get("t", time.time())})

    def on_shutdown(self, identity: bytes, m: P.Message) -> None:
        self.reply(identity, m, {"type": "shutting_down", "reason": "shutdown requested by a client"})
        self.begin_stop("shutdown message")


def serve(bind: str, results: Path, device: str = "auto", model: str = "procedural",
          curve: CurveConfig | None = None, models_dir: Path | None = None) -> int:
    """Entry point of ``python -m backend serve``."""
    from backend.priors import resolve_device

    check_bind(bind, curve)  # before touching the GPU, so a refused bind costs nothing
    if models_dir is not None and not models_dir.is_dir():
        raise SystemExit(f"error: --models-dir {models_dir} is not a folder")
    server = Server(bind, results, resolve_device(device), model, curve, models_dir)
    return server.serve_forever()


__all__ = ["Server", "serve"]

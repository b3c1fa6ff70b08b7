"""The server's process: the ROUTER socket, sessions and ownership, queue limits, heartbeats, shutdown.

Jobs never run here: they are admitted (backend/jobs/admission.py), queued (backend/jobs/scheduler.py, the FIFO
batch uses too) and run by an executor (backend/jobs/executor.py) in a worker process, which hands back
their events as wire frames, which this loop forwards to the job's owner. So nothing a job does (hold the GIL
in a mesh export, crash, hang) can stall the loop. Only this thread touches the ROUTER socket. Every request
gets a reply; a bad one gets an ``error`` naming the problem and the loop carries on (no client message can
stop the server except ``shutdown``).

Who owns what (docs/PROTOCOL.md, Ownership): with CURVE, a client's authorised public key; otherwise a token
the server issues in ``welcome`` (backend/server/security.py ``Identities``) and the client presents in a later
``hello`` to reattach, also after a restart. A connection that never says hello owns its jobs under a random
identity nobody else can name. Routing ids are never identities: libzmq's are predictable, so they only
address replies.
"""

from __future__ import annotations

import logging
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zmq

from backend.export.meshfile import read_glb
from backend.ip_adapter_source import local_adapters
from backend.jobs.admission import Admission, Refused
from backend.jobs.executor import Ended, Event, Executor, JobSpec
from backend.jobs.mesh_input import save_input_mesh
from backend.jobs.models import local_models
from backend.jobs.recovery import recover
from backend.jobs.results import ResultStore
from backend.jobs.scheduler import Scheduler, local_pool
from backend.jobs.slots import Setting, resolve as resolve_slots
from backend.reference import save_reference
from backend.server.security import CurveConfig, Identities, apply_curve, check_bind
from shared import capabilities as caps
from shared import protocol as P
from shared.reference_image import MAX_REFERENCE_PIXELS, MAX_REFERENCE_SIDE, MIN_REFERENCE_SIDE, REFERENCE_ARRAY
from shared.settings import MAX_PROMPT_CHARS, METHODS, REPRESENTATIONS, refine_base
from shared.status import LIVE_STATUSES, JobStatus
from shared.texture_mesh import JOB_KINDS, MAX_TEXTURE_FACES, MAX_TEXTURE_VERTICES

log = logging.getLogger("backend.server")

# Settings a refine may not change: the checkpoint's scene and prior fix them.
REFINE_FIXED = ("representation", "model")
SHUTDOWN_GRACE_S = 10.0
SESSION_TTL_S = 60.0  # a connection silent this long must say hello again (clients ping every second)
TRACK_MIN_BYTES = 64 * 1024  # messages above this count towards a connection's unread bytes
SEND_HWM = 1000  # messages queued per connection; with the byte budget this bounds memory per slow reader


def _created() -> str:
    """A job's ``created``, to the millisecond: jobs queued in one second keep their order in ``list`` and in the
    queue a restarted server rebuilds (backend/jobs/recovery.py sorts by it)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


@dataclass
class Session:
    owner: str
    last_seen: float
    unread: list[tuple[Any, int]] = field(default_factory=list)  # (zmq MessageTracker, bytes) of big sends


@dataclass(eq=False)  # identity semantics: a job is itself, whatever its fields
class Job:
    spec: JobSpec
    identity: bytes  # ROUTER identity its events go to (the owner's newest connection)
    connection: bytes  # the connection that queued it (per-connection queue limit)
    status: JobStatus | str = JobStatus.QUEUED  # a str only as a worker's "finished" event carried it
    stop_reason: str | None = None
    step: int = 0

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def owner(self) -> str:
        return self.spec.owner


class Server:
    def __init__(self, bind: str, results: Path, device: Any, model: str = "procedural",
                 curve: CurveConfig | None = None, models_dir: Path | None = None, silence_timeout_s: float = 900.0,
                 shutdown_grace_s: float = SHUTDOWN_GRACE_S, max_unread_bytes: int = P.MAX_UNREAD_BYTES,
                 make_executor: Callable[[zmq.Context, ResultStore], Executor] | None = None,
                 jobs_at_once: int = 1) -> None:
        check_bind(bind, curve)
        self.bind = bind
        self.model = model  # for jobs that name no model
        self.models_dir = models_dir  # diffusers and IP-Adapter folders offered in hello (beside the HF cache)
        self.device = device
        self.store = ResultStore(results)
        # A dead server's queued and running jobs, queued again under their ids (or lost: backend/jobs/recovery.py).
        recovered = recover(self.store, self.store.load())
        self.identities = Identities(self.store.root / ".server_secret")
        self.curve = curve
        self.shutdown_grace_s = shutdown_grace_s
        self.max_unread_bytes = max_unread_bytes
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        # libzmq drops a peer that sends a bigger frame; below it, oversize messages get an error reply.
        self.router.setsockopt(zmq.MAXMSGSIZE, P.HARD_FRAME_LIMIT_BYTES)
        self.router.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.router.setsockopt(zmq.RCVHWM, SEND_HWM)
        self.auth = apply_curve(self.ctx, self.router, curve) if curve is not None else None
        self.router.bind(bind)
        # The worker loads each job's prior (settings["model"], filled in by the admission) and keeps the last one.
        # By default `jobs_at_once` local worker processes (--jobs-per-gpu, backend/jobs/slots.py); `--executor ray`
        # gives an actor pool (backend/jobs/ray_executor.py).
        executor: Executor = make_executor(self.ctx, self.store) if make_executor is not None else \
            local_pool(self.ctx, self.store, str(device), jobs_at_once, silence_timeout_s)
        self.queue = Scheduler(executor)  # the order jobs start in; batch schedules through the same
        self.jobs: dict[str, Job] = {}  # live jobs of this server's lifetime
        for spec in recovered.resumed:  # their owners' events go to them once they say hello again
            self.jobs[spec.id] = Job(spec, b"", b"")
            self.queue.add(spec)
        self.sessions: dict[bytes, Session] = {}
        self.last_heartbeat = 0.0
        self.stopping: str | None = None
        self._signal: str | None = None
        self.admission = Admission(model, models_dir)
        self.handlers: dict[str, Callable[[bytes, P.Message], None]] = {
            "hello": self.on_hello, "submit": self.on_submit, "cancel": self.on_cancel, "refine": self.on_refine,
            "list": self.on_list, "fetch": self.on_fetch, "ping": self.on_ping, "shutdown": self.on_shutdown,
        }

    # --- sending ---------------------------------------------------------------------------------------------
    def _unread_bytes(self, identity: bytes) -> int:
        session = self.sessions.get(identity)
        if session is None:
            return 0
        session.unread = [(t, n) for t, n in session.unread if not t.done]
        return sum(n for _, n in session.unread)

    def send_frames(self, identity: bytes, frames: list[Any]) -> bool:
        """Queue ``frames`` for ``identity``; False (and nothing queued) when that connection already has
        ``max_unread_bytes`` of big messages it has not read. Never blocks the loop."""
        size = sum(len(f) for f in frames)
        try:
            if size < TRACK_MIN_BYTES:
                # ROUTER drops messages to a peer that is gone or over its high-water mark.
                self.router.send_multipart([identity, *frames], flags=zmq.NOBLOCK)
                return True
            session = self.sessions.get(identity)
            if session is None or self._unread_bytes(identity) + size > self.max_unread_bytes:
                return False
            # A tracker is done once libzmq has handed the message to the kernel (or dropped it): until then
            # the bytes are held here for a client that is not reading.
            # One tracker per frame: a multipart send only tracks its last frame, which may be a small one.
            parts = [identity, *frames]
            trackers = [self.router.send(part, zmq.NOBLOCK | (zmq.SNDMORE if i < len(parts) - 1 else 0),
                                         copy=False, track=True) for i, part in enumerate(parts)]
            session.unread.append((zmq.MessageTracker(*trackers), size))
            return True
        except zmq.ZMQError as exc:
            log.warning("could not send to a client: %s", exc)
            return False

    def send(self, identity: bytes, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> bool:
        return self.send_frames(identity, P.encode(header, arrays))

    def reply(self, identity: bytes, request: P.Message | None, header: dict[str, Any],
              arrays: dict[str, np.ndarray] | None = None) -> None:
        rid = request.get("id") if request is not None else None
        if rid is not None:
            header = {**header, "id": rid}
        if not self.send(identity, header, arrays):
            raise self._backlog(identity, rid)

    def _backlog(self, identity: bytes, rid: Any) -> P.ProtocolError:
        return P.ProtocolError("backlog", f"this connection has {self._unread_bytes(identity)} bytes of earlier "
                                          f"messages it has not read (at most {self.max_unread_bytes}); read them, "
                                          "then ask again", rid)

    def error(self, identity: bytes, code: str, message: str, request_id: Any = None, job: str | None = None) -> None:
        self.send(identity, P.error_header(code, message, request_id, job))

    # --- the loop ------------------------------------------------------------------------------------------------
    def serve_forever(self) -> int:
        self.queue.start()
        # The handler only records the signal: it may run between two frames of a multipart send.
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_signal", "SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "_signal", "SIGINT"))
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        for sock in self.queue.sockets():
            poller.register(sock, zmq.POLLIN)
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
                self._on_executor(self.queue.events())
                self._dispatch()
                self._heartbeat()
                if self.stopping is not None:
                    stop_deadline = stop_deadline or time.monotonic() + self.shutdown_grace_s
                    if not self.queue.running or time.monotonic() > stop_deadline:
                        break
        finally:
            self._close()
        return 0

    def _read_requests(self) -> None:
        for _ in range(1000):  # bounded so the worker's events are not starved by a flood
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=self.curve is None)
            except zmq.Again:
                return
            identity = bytes(frames[0])
            user = None
            if self.curve is not None:
                user = frames[1].get("User-Id") if len(frames) > 1 else None
                frames = [f.bytes for f in frames]
            self.handle(identity, frames[1:], user)

    def handle(self, identity: bytes, payload: list[bytes], curve_user: str | None = None) -> None:
        request_id = None
        try:
            message = P.decode(payload, P.MAX_SERVER_INBOUND_BYTES)
            request_id = message.get("id")
            self._touch(identity, curve_user, request_id)
            P.check_fields(message, "c2s")
            self.handlers[message.type](identity, message)
        except P.ProtocolError as exc:
            self.error(identity, exc.code, exc.message, exc.request_id if exc.request_id is not None else request_id)
        except Exception as exc:  # noqa: BLE001 - a handler bug must not take the server down
            log.exception("handler failed")
            self.error(identity, "internal", f"internal error: {type(exc).__name__}: {exc}", request_id)

    def _touch(self, identity: bytes, curve_user: str | None, rid: Any) -> None:
        """The connection's session (created on its first message), marked as heard from now."""
        session = self.sessions.get(identity)
        if session is None:
            if curve_user is None and not (len(identity) == 5 and identity[0] == 0):
                # libzmq assigns ids starting with a zero byte; any other id was chosen by the peer, and a
                # chosen id could be one a departed client had.
                raise P.ProtocolError("bad_field", "this connection chose its own ZMQ routing id; the server only "
                                                   "accepts ids libzmq assigns (leave ZMQ_ROUTING_ID unset)", rid)
            owner = Identities.key_owner(curve_user) if curve_user is not None else Identities.anonymous()
            session = self.sessions[identity] = Session(owner, time.monotonic())
        session.last_seen = time.monotonic()

    def _on_executor(self, events: list[Event | Ended]) -> None:
        for event in events:
            job = self.jobs.get(event.job)
            if job is None:
                continue
            if isinstance(event, Ended):
                job.status = event.status
                continue
            kind = event.header["type"]
            if kind in ("progress", "_beat"):
                job.step = event.header["step"]
            ended = {"finished": JobStatus.FINISHED, "cancelled": JobStatus.CANCELLED,
                     "error": JobStatus.FAILED}.get(kind)
            if ended is not None and (kind != "error" or event.header.get("fatal")):
                # The record is on disk before its terminal event is sent: list agrees from this moment on.
                job.status = JobStatus.INTERRUPTED if event.header.get("reason") == "shutdown" else ended
                self.store.refresh(job.id)
            if event.frames:
                self.send_frames(job.identity, event.frames)

    def _dispatch(self) -> None:
        if self.stopping is None:
            for spec in self.queue.dispatch():
                self.jobs[spec.id].status = JobStatus.RUNNING

    def _running(self) -> list[Job]:
        return [self.jobs[job_id] for job_id in self.queue.running]

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self.last_heartbeat < P.HEARTBEAT_INTERVAL_S:
            return
        self.last_heartbeat = now
        for identity, session in list(self.sessions.items()):
            if now - session.last_seen > SESSION_TTL_S:
                del self.sessions[identity]
            elif now - session.last_seen <= P.CLIENT_FORGET_S:
                self.send(identity, {"type": "heartbeat", "t": time.time()})

    def begin_stop(self, reason: str) -> None:
        """Stop after the running job's current step; it checkpoints and is recorded "interrupted"."""
        if self.stopping is not None:
            return
        self.stopping = reason
        log.info("stopping (%s)", reason)
        for job in self._running():
            if job.stop_reason is None:
                job.stop_reason = "shutdown"
                self.queue.cancel(job.id, "shutdown", None, job.step)
        while self.queue.pending:
            job = self.jobs[self.queue.pending.popleft().id]
            self._cancel_queued(job, "shutdown")
            self.send(job.identity, {"type": "cancelled", "job": job.id, "step": 0, "reason": "shutdown"})

    def _cancel_queued(self, job: Job, reason: str) -> None:
        job.status = JobStatus.CANCELLED
        try:
            self.store.write_record(job.id, job.spec.record(JobStatus.CANCELLED, stop_reason=reason, steps_done=0))
        except OSError as exc:  # the restarted server will call it lost
            log.warning("could not record job %s as cancelled: %s", job.id, exc)

    def _close(self) -> None:
        # Whatever the grace left running is killed now; its record says so.
        self._on_executor(self.queue.shutdown(1.0 if self.queue.running else 0.0))
        for identity, session in list(self.sessions.items()):
            if time.monotonic() - session.last_seen <= P.CLIENT_FORGET_S:
                self.send(identity, {"type": "shutting_down", "reason": self.stopping or "stopped"})
        if self.auth is not None:
            self.auth.stop()
        self.router.close(linger=200)  # a short linger lets the goodbyes leave
        self.ctx.term()

    # --- handlers ----------------------------------------------------------------------------------------------
    def owner(self, identity: bytes) -> str:
        return self.sessions[identity].owner

    def on_hello(self, identity: bytes, m: P.Message) -> None:
        session = self.sessions[identity]
        token = m.get("client")
        if self.curve is not None:
            token = None  # the authorised key is the identity; a token would add nothing
        elif token is None:
            token = self.identities.issue()
        elif not self.identities.verify(token):
            raise P.ProtocolError("unknown_client", "client token was not issued by this server (tokens come from "
                                                    "'welcome'); send hello without 'client' to get a new one",
                                  m.get("id"))
        if token is not None:
            session.owner = Identities.owner(token)
        for job in self.jobs.values():  # a reconnecting client gets its live jobs' events again
            if job.owner == session.owner:
                job.identity = identity
        welcome = {"type": "welcome", "server": "tbsd-studio backend", "capabilities": self.capabilities()}
        if token is not None:
            welcome["client"] = token
        self.reply(identity, m, welcome)

    def capabilities(self) -> dict[str, Any]:
        gpu = None
        if getattr(self.device, "type", str(self.device)) == "cuda":
            import torch

            free, total = torch.cuda.mem_get_info(self.device)
            gpu = {"name": torch.cuda.get_device_name(self.device), "total_bytes": total, "free_bytes": free}
        return {
            "protocol": P.VERSION, "methods": list(METHODS), "representations": list(REPRESENTATIONS),
            "model": self.model, caps.MODELS: local_models(self.models_dir),
            caps.IP_ADAPTERS: local_adapters(self.models_dir), "device": str(self.device), "gpu": gpu,
            "job_slots": self.queue.executor.capacity(),
            "limits": {"max_message_bytes": P.MAX_SERVER_INBOUND_BYTES, "max_prompt_chars": MAX_PROMPT_CHARS,
                       "max_queued_jobs": P.MAX_QUEUED_JOBS, "max_queued_per_client": P.MAX_QUEUED_PER_CLIENT,
                       "max_queued_per_connection": P.MAX_QUEUED_PER_CONNECTION,
                       "max_unread_bytes": self.max_unread_bytes, "max_texture_vertices": MAX_TEXTURE_VERTICES,
                       "max_texture_faces": MAX_TEXTURE_FACES, "min_reference_side": MIN_REFERENCE_SIDE,
                       "max_reference_side": MAX_REFERENCE_SIDE, "max_reference_pixels": MAX_REFERENCE_PIXELS},
            "job_kinds": list(JOB_KINDS),
            "stream_defaults": dict(P.STREAM_DEFAULTS), "dtypes": list(P.DTYPES),
            "heartbeat_interval_s": P.HEARTBEAT_INTERVAL_S, "backend_timeout_s": P.BACKEND_TIMEOUT_S,
        }

    def _admit(self, prompt: str, given: Any, base: dict[str, Any] | None, rid: Any) -> dict[str, Any]:
        """The job's settings, once its settings, model and prompt pass the admission every job passes
        (backend/jobs/admission.py); else the refusal's code and message."""
        try:
            return self.admission.admit(prompt, given, base)
        except Refused as exc:
            raise P.ProtocolError(exc.code, exc.message, rid) from None

    def _check_queue(self, identity: bytes, rid: Any) -> None:
        if self.stopping is not None:
            raise P.ProtocolError("bad_state", f"the server is shutting down ({self.stopping}); no new jobs", rid)
        pending = [self.jobs[spec.id] for spec in self.queue.pending]
        if len(pending) >= P.MAX_QUEUED_JOBS:
            raise P.ProtocolError("queue_full", f"{len(pending)} jobs are queued; at most {P.MAX_QUEUED_JOBS}", rid)
        owner = self.owner(identity)
        mine = sum(1 for j in pending if j.owner == owner)
        if mine >= P.MAX_QUEUED_PER_CLIENT:
            raise P.ProtocolError("queue_full", f"this client has {mine} queued jobs; at most "
                                                f"{P.MAX_QUEUED_PER_CLIENT}", rid)
        # A connection could say hello again for a fresh identity: it is counted on its own too.
        here = sum(1 for j in pending if j.connection == identity)
        if here >= P.MAX_QUEUED_PER_CONNECTION:
            raise P.ProtocolError("queue_full", f"this connection has {here} queued jobs; at most "
                                                f"{P.MAX_QUEUED_PER_CONNECTION}", rid)

    def _new_id(self) -> str:
        return time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:8]

    def _position(self, job: Job) -> int:
        return self.queue.position(job.id)

    def _queue(self, identity: bytes, spec: JobSpec, first: bool = False) -> Job:
        # On disk before "accepted": a server killed from here on leaves a record (then "lost"), never nothing.
        try:
            self.store.write_record(spec.id, spec.record(JobStatus.QUEUED, ended=None))
        except OSError as exc:
            raise P.ProtocolError("bad_state", f"the results folder cannot be written ({exc}); no job was queued")
        job = Job(spec, identity, identity)
        self.jobs[job.id] = job
        self.queue.add(spec, first)
        # Started now if a worker is free, so "accepted"'s position already counts it out (a second submit read
        # in the same batch of requests would otherwise see it still queued ahead).
        self._dispatch()
        return job

    def on_submit(self, identity: bytes, m: P.Message) -> None:
        rid = m.get("id")
        kind = m.get("kind", "generate")
        if kind not in JOB_KINDS:
            raise P.ProtocolError("bad_field", f"submit: field 'kind' is {kind!r}; allowed: {', '.join(JOB_KINDS)}",
                                  rid)
        mesh_arrays = {k: v for k, v in m.arrays.items() if k != REFERENCE_ARRAY}
        if kind != "texture" and mesh_arrays:
            raise P.ProtocolError("bad_field", f"submit: arrays ({', '.join(sorted(mesh_arrays))}) come only with "
                                               "kind 'texture' (the mesh to texture)", rid)
        prompt = P.check_prompt(m["prompt"], MAX_PROMPT_CHARS, rid)
        stream = P.check_stream(m.get("stream"), rid)
        if kind == "texture" and stream["mesh_every"]:
            raise P.ProtocolError("bad_field", "stream option 'mesh_every' must be 0 for a texture job: its geometry "
                                               "is the mesh sent, and the textured mesh comes when it finishes", rid)
        settings = self._admit(prompt, m.get("settings"), None, rid)
        mesh = None
        try:
            if kind == "texture":
                mesh = self.admission.mesh(mesh_arrays)
            reference = self.admission.reference(m.arrays, m.get("settings"), settings)
        except Refused as exc:
            raise P.ProtocolError(exc.code, exc.message, rid) from None
        self._check_queue(identity, rid)
        spec = JobSpec(self._new_id(), self.owner(identity), prompt, settings, stream, _created())
        # In the job's folder before its record: the worker, and a restarted server, build the job from them.
        try:
            if mesh is not None:
                spec.input_mesh = save_input_mesh(self.store.job_dir(spec.id), mesh)
            if reference is not None:
                spec.reference_image = save_reference(self.store.job_dir(spec.id), reference.pixels).name
        except OSError as exc:
            raise P.ProtocolError("bad_state", f"the results folder cannot be written ({exc}); no job was "
                                               "queued", rid) from None
        job = self._queue(identity, spec)
        self.reply(identity, m, {"type": "accepted", "job": job.id, "position": self._position(job)})

    def _live_job(self, identity: bytes, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        return job if job is not None and job.owner == self.owner(identity) else None

    def _disk_record(self, identity: bytes, job_id: str) -> dict[str, Any] | None:
        indexed = self.store.index.get(job_id)
        if indexed is None or indexed.get("owner") != self.owner(identity):
            return None
        return self.store.read_record(job_id)

    def _unknown(self, job_id: str, rid: Any) -> P.ProtocolError:
        # Another client's job reads as unknown: clients never learn of each other's jobs.
        return P.ProtocolError("unknown_job", f"unknown job id {job_id!r} (no job of this client has that id)", rid)

    def _stop_running(self, job: Job, reason: str, refined_by: str | None = None) -> None:
        if job.stop_reason is None:
            job.stop_reason = reason
            self.queue.cancel(job.id, reason, refined_by, job.step)  # the worker answers after this step

    def on_cancel(self, identity: bytes, m: P.Message) -> None:
        rid, job_id = m.get("id"), m["job"]
        job = self._live_job(identity, job_id)
        if job is None:
            if self._disk_record(identity, job_id) is not None:
                raise P.ProtocolError("bad_state", f"job {job_id} has already ended; nothing to cancel", rid)
            raise self._unknown(job_id, rid)
        if self.queue.remove(job.id) is not None:
            self._cancel_queued(job, "cancel")
            self.reply(identity, m, {"type": "cancelled", "job": job.id, "step": 0, "reason": "cancel"})
        elif job.id in self.queue.running:
            self._stop_running(job, "cancel")
        else:
            raise P.ProtocolError("bad_state", f"job {job_id} has already ended ({job.status}); nothing to cancel", rid)

    def on_refine(self, identity: bytes, m: P.Message) -> None:
        rid, source_id = m.get("id"), m["job"]
        live = self._live_job(identity, source_id)
        record = self._disk_record(identity, source_id)
        if live is None and record is None:
            raise self._unknown(source_id, rid)
        running = live is not None and live.id in self.queue.running
        if live is not None and self.queue.is_queued(live.id):
            raise P.ProtocolError("bad_state", f"job {source_id} has not started; cancel it and submit again", rid)
        checkpoint = self.store.job_dir(source_id) / "checkpoint.pt"
        if not running and not checkpoint.is_file():
            raise P.ProtocolError("bad_state", f"job {source_id} has no checkpoint to refine from "
                                               f"(status {(record or {}).get('status', live and live.status)})", rid)
        # One source of the defaults, live or not: the source's record, whose settings are the job's as given
        # (written before it was accepted), so ``steps`` defaults to the source's own run length.
        source = record or {}
        base = refine_base(source.get("settings") or {})
        given = m.get("settings") or {}
        for name in REFINE_FIXED:
            if name in given and given[name] != base.get(name):
                raise P.ProtocolError("settings", f"refine cannot change '{name}' (the checkpoint fixes it); "
                                                  "submit a new job instead", rid)
        prompt = m.get("prompt")
        prompt = P.check_prompt(prompt, MAX_PROMPT_CHARS, rid) if prompt is not None else source.get("prompt", "")
        settings = self._admit(prompt, given, base, rid)
        self._check_queue(identity, rid)
        stream = P.check_stream(m.get("stream") or source.get("stream"), rid)
        # A texture job's checkpoint holds its mesh (the runner refines and edits it there), and, as its submit,
        # its refine streams no intermediate meshes: the geometry is the user's.
        if stream["mesh_every"] and self.store.is_texture_chain(source):
            raise P.ProtocolError("bad_field", f"stream option 'mesh_every' must be 0 for a refine of texture job "
                                               f"{source_id}: its geometry is the mesh sent, and the textured mesh "
                                               "comes when it finishes", rid)
        # ``steps`` in a refine is how many more (validated over the source's: the source's own count by default).
        spec = JobSpec(self._new_id(), self.owner(identity), prompt, settings, stream, _created(), parent=source_id,
                       source_checkpoint=str(checkpoint), refine_steps=settings["steps"])
        # A running source stops after its step and checkpoints; its continuation runs next.
        job = self._queue(identity, spec, first=running)
        if running:
            assert live is not None
            self._stop_running(live, "refined", job.id)
        self.reply(identity, m, {"type": "accepted", "job": job.id, "parent": source_id,
                                 "position": self._position(job)})

    def on_list(self, identity: bytes, m: P.Message) -> None:
        owner = self.owner(identity)
        listed = {s["job"]: s for s in self.store.summaries(owner)}
        for job in self.jobs.values():
            if job.owner == owner and job.status in LIVE_STATUSES:
                listed[job.id] = {"job": job.id, "status": job.status, "prompt": job.spec.prompt,
                                  "parent": job.spec.parent, "created": job.spec.created, "steps_done": job.step,
                                  "position": self._position(job) if job.status == JobStatus.QUEUED else None}
        results = sorted(listed.values(), key=lambda s: s.get("created") or "")
        self.reply(identity, m, {"type": "results", "results": results})

    def on_fetch(self, identity: bytes, m: P.Message) -> None:
        rid, job_id = m.get("id"), m["job"]
        record = self._disk_record(identity, job_id)
        if record is None:
            if self._live_job(identity, job_id) is not None:
                raise P.ProtocolError("bad_state", f"job {job_id} has not finished; nothing to fetch yet", rid)
            raise self._unknown(job_id, rid)
        glb = self.store.job_dir(job_id) / "mesh.glb"
        if record.get("status") != JobStatus.FINISHED or not glb.is_file():
            raise P.ProtocolError("bad_state", f"job {job_id} has no final mesh (status {record.get('status')})", rid)
        # Checked before reading the mesh: a client that does not read should not make the server decode more.
        if self._unread_bytes(identity) + TRACK_MIN_BYTES > self.max_unread_bytes:
            raise self._backlog(identity, rid)
        # Not the owner's hash, a traceback or a path on the server's disk (a refine's source checkpoint).
        public = {k: v for k, v in record.items() if k not in ("traceback", "owner", "source_checkpoint")}
        self.reply(identity, m, {"type": "result", "job": job_id, "record": public}, read_glb(glb))

    def on_ping(self, identity: bytes, m: P.Message) -> None:
        self.reply(identity, m, {"type": "pong", "t": m.get("t", time.time())})

    def on_shutdown(self, identity: bytes, m: P.Message) -> None:
        self.reply(identity, m, {"type": "shutting_down", "reason": "shutdown requested by a client"})
        self.begin_stop("shutdown message")


def serve(bind: str, results: Path, device: str = "auto", model: str = "procedural",
          curve: CurveConfig | None = None, models_dir: Path | None = None, silence_timeout_s: float = 900.0,
          shutdown_grace_s: float = SHUTDOWN_GRACE_S, max_unread_bytes: int = P.MAX_UNREAD_BYTES,
          ray: dict[str, Any] | None = None, jobs_per_gpu: Setting = "auto") -> int:
    """Entry point of ``python -m backend serve``; ``ray`` (RayExecutor's options: address, gpus_per_actor, ...)
    runs the jobs on Ray actors instead of ``jobs_per_gpu`` local worker processes (backend/jobs/slots.py)."""
    from backend.jobs.results import check_results_folder
    from backend.priors import resolve_device

    check_bind(bind, curve)  # before touching the GPU, so a refused bind, results or models folder costs nothing
    check_results_folder(results)
    if models_dir is not None and not models_dir.is_dir():
        raise SystemExit(f"error: --models-dir {models_dir} is not a folder")
    make_executor = None
    if ray is not None:
        from backend.jobs.ray_executor import RayExecutor, import_ray

        import_ray()  # no Ray: say how to install it before binding anything

        def make_executor(ctx: zmq.Context, store: ResultStore) -> Executor:
            # The device is resolved on each actor's node: "auto" there means its GPU.
            return RayExecutor(store, device, silence_timeout_s=silence_timeout_s, **ray)

    resolved = resolve_device(device)
    jobs = 1
    if ray is None:
        slots = resolve_slots(jobs_per_gpu, str(resolved))
        log.info("%d job(s) at once on %s (%s)", slots.jobs, resolved, slots.why)
        jobs = slots.jobs
    server = Server(bind, results, resolved, model, curve, models_dir=models_dir,
                    silence_timeout_s=silence_timeout_s, shutdown_grace_s=shutdown_grace_s,
                    max_unread_bytes=max_unread_bytes, make_executor=make_executor, jobs_at_once=jobs)
    return server.serve_forever()


__all__ = ["Server", "serve"]

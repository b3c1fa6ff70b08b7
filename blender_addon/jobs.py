"""Jobs on the backend: the Session the connection's timer ticks, and what the operators ask of it.

Every message is handled on Blender's main thread inside the timer callback (connection._tick): progress and
status go into the WindowManager's tbsd_state, previews into the preview image, meshes into the job's object.
A job's meshes always go into one object, created at the 3D cursor when the job was submitted (or, for Refine,
the object being refined), so an intermediate mesh replaces the previous one in place. A texture job's result
(Texture selected, or a Refine of an object it textured) is no new mesh: its texture goes onto the object sent.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import bpy
import numpy as np

from . import connection, local_backend, preferences, preview, scene_mesh, texture_target
from ._vendor.shared import capabilities
from ._vendor.shared.client import Client, load_curve_keys
from ._vendor.shared.protocol import Message
from ._vendor.shared.reference_image import reference_from_pixels
from ._vendor.shared.status import JobStatus
from .props import job_settings

JOB_KEY = "tbsd_job"  # custom properties on a generated object: the job whose run it shows, and what made it
PROMPT_KEY = "tbsd_prompt"
SETTINGS_KEY = "tbsd_settings"
# The add-on's own states around the job's: "submitting" (no id yet), "cancelling" (asked, not yet heard).
RUNNING = ("submitting", JobStatus.QUEUED, JobStatus.RUNNING, "cancelling")
BATCH_SPACING = 1.5  # metres between a batch's objects along X (each fits a box of about +-0.55)


@dataclass
class JobView:
    """What the add-on knows of one job it submitted."""

    prompt: str
    settings: dict[str, Any]
    object_name: str  # the object its meshes go into (created on the first mesh)
    cursor: tuple[float, float, float]
    job_id: str | None = None
    meshes: int = 0
    final: bool = False
    batch: bool = False  # one of a Generate batch's jobs
    ended: bool = False
    texture: texture_target.TextureTarget | None = None  # a texture job (or its refine): where its result goes


@dataclass
class Session:
    client: Client
    requests: dict[str, JobView] = field(default_factory=dict)  # submit/refine request id -> job
    jobs: dict[str, JobView] = field(default_factory=dict)  # job id -> job
    fetches: dict[str, str] = field(default_factory=dict)  # fetch request id -> job id
    capabilities: dict[str, Any] = field(default_factory=dict)
    welcomed: bool = False

    # --- the timer's work ----------------------------------------------------------------------------------
    def tick(self, context: Any) -> None:
        state = connection.state(context)
        for message in self.client.poll_messages(0):
            self.handle(context, message)
        if local_backend.exit_code() is not None and local_backend.address() == self.client.endpoint:
            # The backend this Blender started for this address died: say so now, with its exit status, rather
            # than after the heartbeat timeout; then forget it (a backend started by hand there may follow).
            self._lost(state, local_backend.exit_text())
            local_backend.forget()
        elif not self.welcomed and local_backend.running() and local_backend.address() == self.client.endpoint:
            # Our backend is still starting (importing torch takes seconds): connecting, not lost.
            state.connection = "connecting"
        elif not self._alive():
            silent = time.monotonic() - self.client.last_received
            self._lost(state, f"no heartbeat from {self.client.endpoint} for {silent:.1f} s")
        elif state.connection != "connected" and self.welcomed:
            state.connection = "connected"
            if state.last_error.startswith("Backend lost"):
                state.last_error = ""

    def _alive(self) -> bool:
        """The shared client's verdict, made stricter where the transport is down: silence for LOST_AFTER_S
        with no connection (a killed or unreachable backend) is lost, so the panel says so within 3 s. With the
        connection up (ZMTP heartbeats answered, e.g. a backend busy in native code) the client decides."""
        if not self.client.backend_alive():
            return False
        silent = time.monotonic() - self.client.last_received > connection.LOST_AFTER_S
        return not (silent and not getattr(self.client, "transport_up", False))

    def _lost(self, state: Any, why: str) -> None:
        if state.connection != "lost":  # not a JobStatus: the connection's state (props.py)
            state.connection = "lost"  # not a JobStatus: the connection's state (props.py)
            state.last_error = f"Backend lost: {why}"
            if state.job_state in RUNNING:
                state.job_state = JobStatus.LOST

    def handle(self, context: Any, m: Message) -> None:
        handler = getattr(self, f"on_{m.type}", None)
        if handler is not None:
            handler(context, m)

    def _job(self, m: Message) -> JobView | None:
        return self.jobs.get(m.job) if m.job else None

    def _is_current(self, context: Any, m: Message) -> bool:
        return m.job is not None and m.job == connection.state(context).job_id

    # --- message handlers (main thread) --------------------------------------------------------------------
    def on_welcome(self, context: Any, m: Message) -> None:
        state = connection.state(context)
        caps = m.get("capabilities") or {}
        self.capabilities = caps
        self.welcomed = True
        if m.get("client"):  # kept so this Blender's jobs stay its own across reconnects and restarts
            preferences.get(context).client_token = str(m["client"])
        state.connection = "connected"
        state.device = str(caps.get("device", ""))
        gpu = caps.get("gpu")
        state.gpu = str(gpu.get("name", "")) if isinstance(gpu, dict) else str(gpu or "")
        slots = caps.get("job_slots")
        state.job_slots = slots if isinstance(slots, int) and slots >= 0 else 1  # an older backend runs one
        state.model = str(caps.get("model", ""))
        _offered(state.models, caps.get(capabilities.MODELS))
        _offered(state.ip_adapters, caps.get(capabilities.IP_ADAPTERS))
        state.backend_version = str(m.get("server", ""))
        if state.last_error.startswith("Backend lost"):
            state.last_error = ""
        self.client.send_list()  # the panel's list of earlier results, without a click

    def on_accepted(self, context: Any, m: Message) -> None:
        view = self.requests.pop(m.get("id"), None)
        if view is None:
            return
        view.job_id = m.job
        self.jobs[m.job] = view
        state = connection.state(context)
        if view.batch and state.job_state != "submitting":
            return  # the panel follows one job of a batch at a time (_follow_batch)
        self._follow(state, view, f"queue position {m.get('position', 0)}")

    @staticmethod
    def _follow(state: Any, view: JobView, phase: str) -> None:
        """Make ``view`` the job the panel's progress, preview and object name follow."""
        state.job_id, state.job_state, state.phase = view.job_id, JobStatus.QUEUED, phase
        state.progress, state.step, state.steps, state.eta_s = 0.0, 0, int(view.settings.get("steps", 0)), 0.0
        state.object_name = view.object_name

    def _batch_job_ended(self, context: Any, m: Message) -> None:
        """Count a batch job's end; when the panel followed it, follow the batch's next unfinished job."""
        view = self._job(m)
        if view is None or not view.batch or view.ended:
            return
        view.ended = True
        state = connection.state(context)
        state.batch_ended += 1
        if self._is_current(context, m):
            following = next((v for v in self.jobs.values() if v.batch and not v.ended), None)
            if following is not None:
                self._follow(state, following, "next in the batch")

    def on_started(self, context: Any, m: Message) -> None:
        if self._is_current(context, m):
            state = connection.state(context)
            state.job_state, state.phase = JobStatus.RUNNING, "training"
            state.step, state.steps = int(m.get("step", 0)), int(m.get("total", state.steps))

    def on_progress(self, context: Any, m: Message) -> None:
        if not self._is_current(context, m):
            return
        state = connection.state(context)
        if state.job_state in (JobStatus.QUEUED, JobStatus.LOST):  # lost: the backend was silent a while, not gone
            state.job_state = JobStatus.RUNNING
        total = int(m.get("total", state.steps) or 1)
        state.step, state.steps = int(m.get("step", 0)), total
        state.progress = min(1.0, state.step / max(total, 1))
        state.eta_s = float(m.get("eta_seconds", 0.0) or 0.0)
        state.phase = "training" if state.step < total else "extracting the mesh"

    def on_preview(self, context: Any, m: Message) -> None:
        if self._is_current(context, m) and "image" in m.arrays:
            preview.show(m.arrays["image"])
            connection.state(context).previews_received += 1

    def on_mesh(self, context: Any, m: Message) -> None:
        view = self._job(m)
        if view is None:
            return
        if view.texture is not None:
            self._textured(context, view, m)
            return
        obj = self._place(context, view, m.arrays)
        view.meshes += 1
        view.final = bool(m.get("final", False))
        obj[JOB_KEY] = m.job
        obj[PROMPT_KEY] = view.prompt
        obj[SETTINGS_KEY] = json.dumps(view.settings)
        state = connection.state(context)
        if self._is_current(context, m):
            state.meshes_received += 1
            state.object_name = obj.name
        if view.final:
            scene_mesh.select_only(context, obj)
            _undo_push(f"TBSD: {view.prompt}")

    def _textured(self, context: Any, view: JobView, m: Message) -> None:
        """A texture job's final mesh: its UVs and baked image onto the object that was sent, one undo step."""
        if not m.get("final", False):
            return  # a texture job streams no intermediate meshes; nothing else to show
        state = connection.state(context)
        try:
            obj = texture_target.apply_result(view.texture, m.arrays, view.object_name)
        except Exception as exc:  # noqa: BLE001 - shown in the panel, the timer keeps running
            state.last_error = f"Could not put the texture on {view.object_name}: {exc}"
            return
        view.meshes += 1
        view.final = True
        obj[JOB_KEY] = m.job
        obj[PROMPT_KEY] = view.prompt
        if self._is_current(context, m):
            state.meshes_received += 1
        scene_mesh.select_only(context, obj)
        _undo_push(f"TBSD: texture {obj.name}")

    def _place(self, context: Any, view: JobView, arrays: dict[str, Any]) -> Any:
        existing = bpy.data.objects.get(view.object_name)
        obj = scene_mesh.ensure_object(context, view.object_name, existing)
        if existing is None:
            obj.location = view.cursor
        view.object_name = obj.name  # Blender may have added a .001 suffix
        scene_mesh.update_object(obj, mesh_arrays(arrays), obj.name)
        return obj

    def on_finished(self, context: Any, m: Message) -> None:
        if self._is_current(context, m):
            state = connection.state(context)
            status = m.get("status", JobStatus.FINISHED)
            state.job_state = "done" if status == JobStatus.FINISHED else str(status)
            state.progress, state.eta_s, state.phase = 1.0, 0.0, ""
            state.step = state.steps
        self._batch_job_ended(context, m)
        self.client.send_list()  # the results list shows each result as it finishes, batch or not

    def on_cancelled(self, context: Any, m: Message) -> None:
        if self._is_current(context, m):
            state = connection.state(context)
            state.job_state = JobStatus.CANCELLED
            state.eta_s = 0.0
            state.phase = str(m.get("reason") or "")
        self._batch_job_ended(context, m)
        self.client.send_list()

    def on_error(self, context: Any, m: Message) -> None:
        state = connection.state(context)
        where = f" (job {m.job})" if m.job else ""
        state.last_error = f"{m.get('message', 'unknown error')}{where}"
        refused = self.requests.pop(m.get("id"), None)
        if refused is not None and refused.batch:  # a batch line the server would not queue
            state.batch_ended += 1
        if m.get("fatal") and self._is_current(context, m):
            state.job_state = JobStatus.FAILED
        elif m.get("id") and state.job_state == "submitting":
            state.job_state = JobStatus.FAILED
        if m.get("fatal"):
            self._batch_job_ended(context, m)

    def on_results(self, context: Any, m: Message) -> None:
        state = connection.state(context)
        state.results.clear()
        for entry in m.get("results") or []:
            item = state.results.add()
            item.job_id = str(entry.get("job", ""))
            item.prompt = str(entry.get("prompt", ""))
            item.state = str(entry.get("status", ""))

    def on_result(self, context: Any, m: Message) -> None:
        self.fetches.pop(m.get("id"), None)
        record = m.get("record") or {}
        prompt = str(record.get("prompt") or m.job)
        view = JobView(prompt, dict(record.get("settings") or {}), scene_mesh.object_name(prompt),
                       tuple(context.scene.cursor.location), job_id=m.job)
        obj = scene_mesh.ensure_object(context, view.object_name)
        scene_mesh.update_object(obj, mesh_arrays(m.arrays), obj.name)
        obj[JOB_KEY], obj[PROMPT_KEY], obj[SETTINGS_KEY] = m.job, prompt, json.dumps(view.settings)
        scene_mesh.select_only(context, obj)
        _undo_push(f"TBSD: import {prompt}")

    def on_shutting_down(self, context: Any, m: Message) -> None:
        self._lost(connection.state(context), f"the backend is shutting down ({m.get('reason', '')})")

    def close(self) -> None:
        self.client.close()


def _offered(collection: Any, entries: Any) -> None:
    """``collection`` (the panel state's models or IP-Adapters) set to hello's entries of one offered list (shared/
    capabilities.py); an entry without a name is skipped, as is a list that is not one."""
    collection.clear()
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, dict) and entry.get("name"):
            item = collection.add()
            item.name, item.label, item.kind = str(entry["name"]), str(entry.get("label", "")), str(entry.get("kind", ""))


def mesh_arrays(arrays: dict[str, Any]) -> scene_mesh.MeshArrays:
    if "vertices" not in arrays or "faces" not in arrays:
        raise ValueError(f"a mesh message needs vertices and faces; it carried {sorted(arrays)}")
    return scene_mesh.MeshArrays(arrays["vertices"], arrays["faces"], arrays.get("uvs"), arrays.get("colours"),
                                 arrays.get("texture"))


def _undo_push(message: str) -> None:
    # One undo step per finished object (intermediate meshes push none): Ctrl+Z takes the whole result away,
    # Ctrl+Shift+Z brings it back. A failed push must not lose the mesh, so it only becomes the panel's error.
    try:
        bpy.ops.ed.undo_push(message=message)
    except RuntimeError as exc:
        connection.state().last_error = f"Could not record an undo step: {exc}"


# --- what the operators call ------------------------------------------------------------------------------------
def _make_session(context: Any) -> Session:
    prefs = preferences.get(context)
    server_key, client_keys = curve_keys(prefs.curve_server_key, prefs.curve_client_keys)
    # The backend issues the token (welcome); an empty one asks for a new identity.
    client = Client(prefs.address, prefs.client_token or None, server_public_key=server_key, client_keys=client_keys)
    client.send_hello(name=f"blender {bpy.app.version_string}")
    return Session(client)


def curve_keys(server: str, client_file: str) -> tuple[bytes | None, tuple[bytes, bytes] | None]:
    """The server's public key (a key file or a Z85 string) and this client's key pair (a .key_secret file)."""
    server = server.strip()
    if not server:
        return None, None
    path = bpy.path.abspath(server)
    if os.path.isfile(path):
        server_key, _ = load_curve_keys(path)
    elif len(server) == 40:
        server_key = server.encode("ascii")
    else:
        raise ValueError(f"CURVE server key {server!r} is neither a key file nor a 40-character Z85 key")
    if not client_file.strip():
        return server_key, None
    public, secret = load_curve_keys(bpy.path.abspath(client_file.strip()))
    if secret is None:
        raise ValueError(f"{client_file} holds no secret key: pass the client.key_secret file")
    return server_key, (public, secret)


def connect(context: Any) -> Session:
    state = connection.state(context)
    state.connection = "connecting"
    return connection.connect(lambda: _make_session(context))


def _session(context: Any) -> Session:
    s = connection.session()
    if s is None or connection.state(context).connection == "lost":  # not a JobStatus: a connection state
        s = connect(context)
    return s


def stream_options(props: Any) -> dict[str, int]:
    """How much the job streams back: progress about 100 times, ``stream_meshes`` intermediate meshes."""
    steps = max(1, int(props.steps))
    out = {"progress_every": max(1, steps // 100), "preview_size": int(props.preview_size)}
    if props.stream_meshes > 0:
        out["mesh_every"] = max(1, steps // (props.stream_meshes + 1))
        out["mesh_resolution"] = min(int(props.mesh_resolution), 128)
        out["mesh_texture_size"] = min(int(props.texture_size), 256)
    return out


def texture_stream_options(props: Any) -> dict[str, int]:
    """A texture job's stream, submitted or refined: progress and previews as for a generation, no intermediate
    meshes (the geometry is the object's own; the backend refuses mesh_every for a texture job)."""
    return {k: v for k, v in stream_options(props).items() if not k.startswith("mesh_")}


def _start_view(context: Any, prompt: str, settings: dict[str, Any], object_name: str) -> JobView:
    state = connection.state(context)
    state.last_error = ""
    state.job_state, state.job_id, state.phase = "submitting", "", ""
    state.progress, state.step, state.eta_s = 0.0, 0, 0.0
    state.meshes_received = state.previews_received = 0
    state.object_name = object_name
    return JobView(prompt, settings, object_name, tuple(context.scene.cursor.location))


def reference_pixels(props: Any) -> Any:
    """The panel's reference image as the submit's ``reference`` array (uint8 [H, W, 3], shared/reference_image.py),
    or None: no image picked, or a method that reads none (the backend would refuse it)."""
    image = props.reference_image
    if image is None or props.method != "isd":
        return None
    width, height = image.size
    if width == 0 or height == 0:
        raise ValueError(f"the reference image '{image.name}' has no pixels (is its file missing?)")
    flat = np.empty(width * height * image.channels, dtype=np.float32)
    image.pixels.foreach_get(flat)
    # A byte image's pixels are its stored (sRGB) values; a float one's (a render, an EXR) are linear.
    return reference_from_pixels(flat, width, height, image.channels, linear=image.is_float)


def generate(context: Any) -> str:
    props = context.scene.tbsd
    prompt = props.prompt.strip()
    if not prompt:
        raise ValueError("type a prompt first")
    settings = job_settings(props)
    reference = reference_pixels(props)
    session = _session(context)
    view = _start_view(context, prompt, settings, scene_mesh.object_name(prompt))
    rid = session.client.send_submit(prompt, settings, stream_options(props), reference=reference)
    session.requests[rid] = view
    return rid


def texture_selected(context: Any, obj: Any) -> str:
    """Send ``obj``'s evaluated mesh (texture_target.py) with the panel's prompt and settings as a texture job;
    its result goes onto ``obj`` when it finishes."""
    props = context.scene.tbsd
    prompt = props.prompt.strip()
    if not prompt:
        raise ValueError("type a prompt first")
    arrays, target = texture_target.mesh_to_send(context, obj)
    settings = job_settings(props)
    session = _session(context)
    view = _start_view(context, prompt, settings, obj.name)
    view.texture = target
    rid = session.client.send_texture(prompt, arrays["vertices"], arrays["faces"], arrays.get("uvs"), settings,
                                      texture_stream_options(props))
    session.requests[rid] = view
    return rid


def batch_prompts(text: Any) -> list[str]:
    """The prompts of a text datablock: one a line; blank lines and lines starting with # are skipped."""
    lines = [line.body.strip() for line in text.lines]
    return [line for line in lines if line and not line.startswith("#")]


def _unused_name(base: str, taken: set[str]) -> str:
    # Each line gets its own object, also when a prompt repeats or names an object already in the scene.
    name, n = base, 1
    while name in taken or name in bpy.data.objects:
        n += 1
        name = f"{base[:54]} {n}"
    return name


def generate_batch(context: Any) -> list[str]:
    """One job per prompt of the panel's Prompts text, with the panel's settings; objects side by side along X
    from the 3D cursor. Returns the submit request ids."""
    props = context.scene.tbsd
    if props.batch_text is None:
        raise ValueError("choose a Prompts text (one prompt a line) first")
    prompts = batch_prompts(props.batch_text)
    if not prompts:
        raise ValueError(f"the text '{props.batch_text.name}' holds no prompts (one a line)")
    settings = job_settings(props)
    reference = reference_pixels(props)  # one reference for every line
    session = _session(context)
    state = connection.state(context)
    rids: list[str] = []
    names: set[str] = set()
    for i, prompt in enumerate(prompts):
        name = _unused_name(scene_mesh.object_name(prompt), names)
        names.add(name)
        view = _start_view(context, prompt, settings, name) if i == 0 else \
            JobView(prompt, settings, name, tuple(context.scene.cursor.location))
        view.batch = True
        view.cursor = (view.cursor[0] + i * BATCH_SPACING, view.cursor[1], view.cursor[2])
        rid = session.client.send_submit(prompt, settings, stream_options(props), reference=reference)
        session.requests[rid] = view
        rids.append(rid)
    state.batch_total, state.batch_ended = len(prompts), 0
    return rids


def refine(context: Any, obj: Any) -> str:
    """Continue ``obj``'s job with the panel's prompt and settings (an edit when the edit box names an attribute to
    remove); the new job's meshes replace ``obj``'s. An object Texture selected textured refines its texture job:
    its geometry stays, the new texture goes on it as Texture selected's did."""
    job = obj.get(JOB_KEY)
    if not job:
        raise ValueError(f"{obj.name} was not made by TBSD Studio (no {JOB_KEY} property)")
    props = context.scene.tbsd
    prompt = props.prompt.strip() or str(obj.get(PROMPT_KEY, ""))
    settings = job_settings(props, refine=True)
    target = texture_target.refine_target(context, obj)  # before connecting: a changed mesh sends nothing
    stream = stream_options(props) if target is None else texture_stream_options(props)
    session = _session(context)
    view = _start_view(context, prompt, settings, obj.name)
    view.texture = target
    rid = session.client.send_refine(str(job), prompt=prompt, settings=settings, stream=stream)
    session.requests[rid] = view
    return rid


def cancel(context: Any) -> None:
    state = connection.state(context)
    session = connection.session()
    if session is None or not state.job_id:
        raise ValueError("no job is running")
    session.client.send_cancel(state.job_id)
    if state.job_state in (JobStatus.QUEUED, JobStatus.RUNNING):
        state.job_state = "cancelling"


def request_results(context: Any) -> None:
    _session(context).client.send_list()


def import_result(context: Any, job_id: str) -> None:
    session = _session(context)
    rid = session.client.send_fetch(job_id)
    session.fetches[rid] = job_id

"""Drive the installed add-on against a real backend process through its operators and its timer callback.

    $TBSD_BLENDER_PYTHON tests/blender/addon_generate.py ZIP BACKEND_PYTHON REPO RESULTS_DIR PORT OUT_DIR SETTINGS_JSON

The backend is started by the add-on's own "Start local backend" operator (preferences: the project's Python,
`-m backend serve --device cpu`, the repo as working folder, RESULTS_DIR). Then, ticking the add-on's real timer
callback (connection._tick, what bpy.app.timers calls in a UI session) in a loop:
Generate until the object is in the scene (recording every streamed mesh), Generate + Cancel, Refine on the
generated object, list results and Import one, save the .blend; then freeze the backend (SIGSTOP: heartbeats
stop, "lost" must show within 3 s), thaw it (the panel recovers), kill it (SIGKILL: lost at once), and check no
timer callback raised. One JSON report on stdout.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import addon_harness as h  # noqa: E402

import bpy  # noqa: E402

CURSOR = (0.5, -0.5, 0.25)


class Driver:
    """Ticks the add-on's timer callback the way Blender's event loop would, and watches what it does."""

    def __init__(self) -> None:
        self.conn = h.submodule("connection")
        self.state = bpy.context.window_manager.tbsd_state
        self.max_tick_s = 0.0
        self.ticks = 0

    def tick(self) -> None:
        t0 = time.monotonic()
        interval = self.conn._tick()
        self.max_tick_s = max(self.max_tick_s, time.monotonic() - t0)
        self.ticks += 1
        if interval is None and self.conn.session() is not None:
            raise AssertionError("the timer callback asked to stop while a session is live")
        time.sleep(0.05)

    def until(self, what: str, predicate, timeout: float, watch=None) -> float:
        t0 = time.monotonic()
        while not predicate():
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; state: {self.snapshot()}")
            self.tick()
            if watch is not None:
                watch()
        return time.monotonic() - t0

    def snapshot(self) -> dict:
        s = self.state
        return {"connection": s.connection, "job_state": s.job_state, "job_id": s.job_id, "step": s.step,
                "steps": s.steps, "progress": s.progress, "eta_s": s.eta_s, "last_error": s.last_error,
                "object_name": s.object_name, "meshes_received": s.meshes_received,
                "previews_received": s.previews_received, "device": s.device, "gpu": s.gpu, "model": s.model,
                "job_slots": s.job_slots,
                "timer_registered": self.conn.timer_registered(), "timer_errors": list(self.conn.timer_errors)}


def describe_object(obj) -> dict:
    mesh = obj.data
    mat = mesh.materials[0] if len(mesh.materials) else None
    out = {"name": obj.name, "vertices": len(mesh.vertices), "faces": len(mesh.polygons),
           "location": [round(x, 6) for x in obj.location], "job": obj.get("tbsd_job"),
           "prompt": obj.get("tbsd_prompt"), "mesh_ptr": mesh.as_pointer(), "uv_layers": len(mesh.uv_layers),
           "material": None, "image": None}
    if mat is not None and mat.use_nodes:
        bsdf = next((n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None)
        base = bsdf.inputs["Base Color"] if bsdf is not None else None
        node = base.links[0].from_node if base is not None and base.is_linked else None
        out["material"] = {"principled": bsdf is not None, "base_color_from": node.type if node else None}
        if node is not None and node.type == "TEX_IMAGE" and node.image is not None:
            out["image"] = {"size": list(node.image.size), "packed": node.image.packed_file is not None}
    return out


def main(argv: list[str]) -> dict:
    zip_path, backend_python, repo, results_dir, port, out_dir, settings_json, models_dir = argv
    job_settings = json.loads(settings_json)
    report: dict = {"blender": bpy.app.version_string}
    h.install(zip_path)
    jobs = h.submodule("jobs")
    local_backend = h.submodule("local_backend")
    d = Driver()
    h.point_at_local_backend(backend_python, repo, port, results_dir, models_dir)
    props = bpy.context.scene.tbsd
    props.quality = "draft"
    for name, value in job_settings.items():
        setattr(props, name, value)
    props.stream_meshes = 1
    bpy.context.scene.cursor.location = CURSOR

    # --- start the backend from Blender and connect ----------------------------------------------------------
    assert bpy.ops.tbsd.backend_start() == {"FINISHED"}
    pid = local_backend._process.pid
    report["connect_s"] = d.until("the backend's welcome", lambda: d.state.connection == "connected", 120)
    report["connected"] = d.snapshot()

    # --- the model: the drop-down offers what the backend has; a missing one is refused before it queues -------
    add_on_props = h.submodule("props")
    report["model_items"] = [item[0] for item in add_on_props._model_items(props, bpy.context)]
    sd_folder = next(name for name in report["model_items"] if name.startswith(os.path.abspath(models_dir)))
    props.model_choice = sd_folder  # the drop-down writes the job's `model` field
    report["model_after_choice"] = props.model
    report["sent_model"] = add_on_props.job_settings(props).get("model")
    props.model = "procedural"
    report["choice_after_typing"] = props.model_choice
    report["sent_model_procedural"] = add_on_props.job_settings(props).get("model")
    props.model = os.path.join(models_dir, "not-downloaded")
    props.prompt = "a red cube"
    assert bpy.ops.tbsd.generate() == {"FINISHED"}
    d.until("the missing model's error", lambda: d.state.last_error != "", 30)
    report["missing_model"] = d.snapshot()
    props.model = "procedural"
    d.state.last_error = ""

    # --- Generate: stream into one object until the final mesh --------------------------------------------
    props.prompt = "a red cube"
    # A UI session starts its undo stack when a file is loaded; headless Blender does not, so push that first
    # step here: undo then has a state without the object to go back to.
    bpy.ops.ed.undo_push(message="before Generate")
    assert bpy.ops.tbsd.generate() == {"FINISHED"}
    seen: list[dict] = []
    progress: list[tuple[int, int, float]] = []

    def watch() -> None:
        s = d.state
        if not progress or progress[-1][:2] != (s.step, s.steps):
            progress.append((s.step, s.steps, round(s.eta_s, 2)))
        if s.meshes_received > len(seen) and s.object_name in bpy.data.objects:
            obj = bpy.data.objects[s.object_name]
            seen.append({"meshes_received": s.meshes_received, **describe_object(obj)})

    report["generate_s"] = d.until("Generate to finish", lambda: d.state.job_state in ("done", "failed"), 900, watch)
    report["generate"] = d.snapshot()
    report["generate_progress"] = progress
    report["streamed"] = seen
    obj = bpy.data.objects.get(d.state.object_name)
    report["generated_object"] = describe_object(obj) if obj else None
    report["active_object"] = bpy.context.view_layer.objects.active.name if bpy.context.view_layer.objects.active else None
    preview_image = bpy.data.images.get("TBSD Preview")
    report["preview_image"] = list(preview_image.size) if preview_image else None
    first_job = d.state.job_id

    # Undo takes the finished object away in one step; redo brings it back whole.
    bpy.ops.ed.undo()
    report["after_undo_present"] = report["generated_object"]["name"] in bpy.data.objects
    bpy.ops.ed.redo()
    back = bpy.data.objects.get(report["generated_object"]["name"])
    report["after_redo"] = describe_object(back) if back else None
    # Undo rebuilt the scene's data: Python references to it from before are stale; fetch them again.
    props = bpy.context.scene.tbsd
    d.state = bpy.context.window_manager.tbsd_state

    # --- Generate, then Cancel while it runs ---------------------------------------------------------------
    props.prompt = "a blue sphere"
    steps_before = props.steps
    props.steps = 200
    assert bpy.ops.tbsd.generate() == {"FINISHED"}
    d.until("the second job to run", lambda: d.state.job_state == "running" and d.state.step >= 1, 300)
    assert bpy.ops.tbsd.cancel() == {"FINISHED"}
    report["cancel_state_right_after"] = d.state.job_state
    report["cancel_s"] = d.until("the cancel", lambda: d.state.job_state in ("cancelled", "failed", "done"), 120)
    report["cancelled"] = d.snapshot()
    props.steps = steps_before

    # --- Refine the generated object with a new prompt ------------------------------------------------------
    obj = bpy.data.objects[report["generated_object"]["name"]]
    for other in bpy.context.view_layer.objects:
        other.select_set(False)
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj
    props.prompt = "a green cube"
    props.edit_prompt = "red"  # an edit: the refine runs CSD's edit toward the prompt; the batch below keeps it set
    report["before_refine_mesh_ptr"] = obj.data.as_pointer()
    n_objects_before = len(bpy.data.objects)
    assert bpy.ops.tbsd.refine() == {"FINISHED"}
    report["refine_s"] = d.until("Refine to finish", lambda: d.state.job_state in ("done", "failed"), 900)
    report["refine"] = d.snapshot()
    report["refined_object"] = describe_object(obj)
    report["objects_added_by_refine"] = len(bpy.data.objects) - n_objects_before

    # --- earlier results: list, Import one ----------------------------------------------------------------------
    assert bpy.ops.tbsd.refresh_results() == {"FINISHED"}
    d.until("the results list", lambda: len(d.state.results) >= 3, 60)
    report["results"] = [{"job": r.job_id, "prompt": r.prompt, "state": r.state} for r in d.state.results]
    # --- Generate batch: one job per line of a text datablock; each result listed as it finishes ----------------
    text = bpy.data.texts.new("prompts")
    text.write("a yellow cone\n\n# a comment line\na red cube\n")  # "a red cube" is an object already
    report["batch_poll_without_text"] = bpy.ops.tbsd.generate_batch.poll()
    props.batch_text = text
    bpy.context.scene.cursor.location = (2.0, 0.0, 0.0)
    assert bpy.ops.tbsd.generate_batch() == {"FINISHED"}
    session = d.conn.session()
    listed_when: dict = {}  # batch job -> jobs of the batch ended when the list first showed it finished

    def watch_batch() -> None:
        finished = {r.job_id for r in d.state.results if r.state == "finished"}
        for view in session.jobs.values():
            if view.batch and view.job_id in finished and view.job_id not in listed_when:
                listed_when[view.job_id] = d.state.batch_ended

    d.until("the batch to end", lambda: d.state.batch_total and d.state.batch_ended == d.state.batch_total
            and len(listed_when) == d.state.batch_total, 600, watch_batch)
    batch_views = [v for v in session.jobs.values() if v.batch]
    report["batch"] = {"total": d.state.batch_total, "ended": d.state.batch_ended, "listed_when": listed_when,
                       "jobs": [{"job": v.job_id, "prompt": v.prompt, "final": v.final,
                                 **describe_object(bpy.data.objects[v.object_name])} for v in batch_views]}
    bpy.context.scene.cursor.location = CURSOR

    names_before = set(bpy.data.objects.keys())
    assert bpy.ops.tbsd.import_result(job_id=first_job) == {"FINISHED"}
    d.until("the imported result", lambda: len(bpy.data.objects) > len(names_before), 120)
    (new_name,) = set(bpy.data.objects.keys()) - names_before
    report["imported"] = describe_object(bpy.data.objects[new_name])
    report["first_job"] = first_job

    path = os.path.join(out_dir, "generated.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path, copy=True)
    report["blend"] = path

    # --- the backend goes silent, comes back, then dies --------------------------------------------------------
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    d.until("'backend lost' after SIGSTOP", lambda: d.state.connection == "lost", 10)
    report["lost_after_stop_s"] = time.monotonic() - t0
    report["lost"] = d.snapshot()
    os.kill(pid, signal.SIGCONT)
    report["recovered_s"] = d.until("the connection to recover", lambda: d.state.connection == "connected", 20)
    report["recovered"] = d.snapshot()
    # Killed as a backend this Blender did not start would be (so only the heartbeats can tell): forget the
    # process first, then kill it.
    proc, local_backend._process = local_backend._process, None
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    d.until("'backend lost' after SIGKILL", lambda: d.state.connection == "lost", 10)
    report["lost_after_kill_s"] = time.monotonic() - t0
    report["killed"] = d.snapshot()
    proc.wait(10)
    for _ in range(10):  # the timer keeps running against a dead backend without raising
        d.tick()
    report["after_kill_ticks"] = d.snapshot()
    # A backend started from the panel dies: its exit status is in the panel at once, no heartbeat wait.
    assert bpy.ops.tbsd.backend_start() == {"FINISHED"}
    d.until("the restarted backend's welcome", lambda: d.state.connection == "connected", 120)
    report["restarted"] = d.snapshot()
    os.kill(local_backend._process.pid, signal.SIGKILL)
    t0 = time.monotonic()
    d.until("'backend lost' after SIGKILL of our own backend", lambda: d.state.connection == "lost", 10)
    report["lost_after_own_kill_s"] = time.monotonic() - t0
    report["own_killed"] = d.snapshot()
    report["max_tick_s"] = d.max_tick_s
    report["ticks"] = d.ticks
    assert bpy.ops.tbsd.backend_stop() == {"FINISHED"}
    h.disable()
    report["timer_after_disable"] = bpy.app.timers.is_registered(d.conn._tick)
    report["timer_errors_final"] = list(d.conn.timer_errors)
    return report


if __name__ == "__main__":
    h.run(main)

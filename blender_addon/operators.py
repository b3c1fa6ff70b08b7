"""Operators: what the panel's buttons do. Each runs on the main thread and returns at once; the work they
start (a job on the backend, a local backend process) is followed by the connection's timer."""

from __future__ import annotations

from typing import Any

import bpy

from . import connection, jobs, local_backend, preferences


def _report_error(op: Any, context: Any, message: str) -> set[str]:
    connection.state(context).last_error = message
    op.report({"ERROR"}, message)
    return {"CANCELLED"}


class TBSD_OT_connect(bpy.types.Operator):
    bl_idname = "tbsd.connect"
    bl_label = "Connect"
    bl_description = "Connect to the backend at the address in the add-on preferences"

    def execute(self, context: Any) -> set[str]:
        try:
            jobs.connect(context)
        except Exception as exc:  # noqa: BLE001 - any failure is shown in words
            return _report_error(self, context, f"Cannot connect: {exc}")
        return {"FINISHED"}


class TBSD_OT_generate(bpy.types.Operator):
    bl_idname = "tbsd.generate"
    bl_label = "Generate"
    bl_description = "Start a job for the prompt and settings above; meshes stream into a new object"

    def execute(self, context: Any) -> set[str]:
        try:
            jobs.generate(context)
        except Exception as exc:  # noqa: BLE001
            return _report_error(self, context, f"Generate failed: {exc}")
        return {"FINISHED"}


class TBSD_OT_generate_batch(bpy.types.Operator):
    bl_idname = "tbsd.generate_batch"
    bl_label = "Generate batch"
    bl_description = ("One job per line of the Prompts text with the settings above; each result is placed "
                      "beside the last and appears in the results list as it finishes")

    @classmethod
    def poll(cls, context: Any) -> bool:
        return context.scene.tbsd.batch_text is not None

    def execute(self, context: Any) -> set[str]:
        try:
            count = len(jobs.generate_batch(context))
        except Exception as exc:  # noqa: BLE001
            return _report_error(self, context, f"Generate batch failed: {exc}")
        self.report({"INFO"}, f"Submitted {count} jobs")
        return {"FINISHED"}


class TBSD_OT_refine(bpy.types.Operator):
    bl_idname = "tbsd.refine"
    bl_label = "Refine"
    bl_description = ("Continue the active generated object's run with the prompt and settings above, for Steps "
                      "more steps (Generate's Steps are the run's total); its mesh is replaced in place (an object "
                      "Texture selected textured keeps its mesh and gets the new texture). With an attribute in "
                      "Edit prompt (e.g. 'red'), edit the object toward the prompt ('a green cube')")

    @classmethod
    def poll(cls, context: Any) -> bool:
        obj = context.active_object
        return obj is not None and bool(obj.get(jobs.JOB_KEY))

    def execute(self, context: Any) -> set[str]:
        try:
            jobs.refine(context, context.active_object)
        except Exception as exc:  # noqa: BLE001
            return _report_error(self, context, f"Refine failed: {exc}")
        return {"FINISHED"}


class TBSD_OT_texture_selected(bpy.types.Operator):
    bl_idname = "tbsd.texture_selected"
    bl_label = "Texture selected"
    bl_description = ("Texture the active mesh object with the prompt and settings above: its geometry is kept, "
                      "the baked texture goes on it through a new material (its UV map, or a new one)")

    @classmethod
    def poll(cls, context: Any) -> bool:
        obj = context.active_object
        return obj is not None and obj.type == "MESH"

    def execute(self, context: Any) -> set[str]:
        try:
            jobs.texture_selected(context, context.active_object)
        except Exception as exc:  # noqa: BLE001
            return _report_error(self, context, f"Texture selected failed: {exc}")
        return {"FINISHED"}


class TBSD_OT_cancel(bpy.types.Operator):
    bl_idname = "tbsd.cancel"
    bl_label = "Cancel"
    bl_description = "Stop the running job; the last mesh received stays in the scene"

    def execute(self, context: Any) -> set[str]:
        try:
            jobs.cancel(context)
        except Exception as exc:  # noqa: BLE001
            return _report_error(self, context, f"Cancel failed: {exc}")
        return {"FINISHED"}


class TBSD_OT_refresh_results(bpy.types.Operator):
    bl_idname = "tbsd.refresh_results"
    bl_label = "Refresh"
    bl_description = "Ask the backend for its earlier results"

    def execute(self, context: Any) -> set[str]:
        try:
            jobs.request_results(context)
        except Exception as exc:  # noqa: BLE001
            return _report_error(self, context, f"Listing results failed: {exc}")
        return {"FINISHED"}


class TBSD_OT_import_result(bpy.types.Operator):
    bl_idname = "tbsd.import_result"
    bl_label = "Import"
    bl_description = "Bring the selected earlier result into the scene at the 3D cursor"

    job_id: bpy.props.StringProperty(name="Job", description="Empty: the result selected in the list")

    def execute(self, context: Any) -> set[str]:
        state = connection.state(context)
        job_id = self.job_id
        if not job_id:
            if not (0 <= state.results_index < len(state.results)):
                return _report_error(self, context, "Select a result to import")
            job_id = state.results[state.results_index].job_id
        try:
            jobs.import_result(context, job_id)
        except Exception as exc:  # noqa: BLE001
            return _report_error(self, context, f"Import failed: {exc}")
        return {"FINISHED"}


class TBSD_OT_backend_start(bpy.types.Operator):
    bl_idname = "tbsd.backend_start"
    bl_label = "Start local backend"
    bl_description = "Start the backend on this machine with the Python and arguments in the preferences"

    def execute(self, context: Any) -> set[str]:
        prefs = preferences.get(context)
        try:
            python, arguments, working_dir = preferences.backend_environment(prefs)
            cmd = local_backend.command(python, arguments, prefs.address, bpy.path.abspath(prefs.results_dir),
                                        bpy.path.abspath(prefs.models_dir))
            local_backend.start(cmd, cwd=working_dir or None)
            jobs.connect(context)
        except Exception as exc:  # noqa: BLE001
            return _report_error(self, context, f"Cannot start the backend: {exc}")
        connection.state(context).last_error = ""
        return {"FINISHED"}


class TBSD_OT_backend_stop(bpy.types.Operator):
    bl_idname = "tbsd.backend_stop"
    bl_label = "Stop local backend"
    bl_description = "Stop the backend this Blender started"

    def execute(self, context: Any) -> set[str]:
        connection.disconnect()
        local_backend.stop()
        connection.state(context).connection = "disconnected"
        return {"FINISHED"}


CLASSES = (TBSD_OT_connect, TBSD_OT_generate, TBSD_OT_generate_batch, TBSD_OT_refine, TBSD_OT_texture_selected,
           TBSD_OT_cancel, TBSD_OT_refresh_results,
           TBSD_OT_import_result, TBSD_OT_backend_start, TBSD_OT_backend_stop)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    # A backend started from this Blender is ours to stop: a disabled add-on leaves no process behind.
    local_backend.shutdown()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)

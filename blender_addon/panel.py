"""The N-panel (3D viewport sidebar, its own "TBSD" tab). Draws from props and schema_ui only: no logic here."""

from __future__ import annotations

from typing import Any

import bpy

from . import preview
from ._vendor.shared.status import JobStatus
from .schema_ui import BASIC, adapter_settings, edit_settings, prompt_settings, sections

CATEGORY = "TBSD"


def _eta_text(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


class TBSD_UL_results(bpy.types.UIList):
    def draw_item(self, _context: Any, layout: Any, _data: Any, item: Any, _icon: int, _active_data: Any,
                  _active_propname: str, _index: int = 0, _flt_flag: int = 0) -> None:
        row = layout.row()
        row.label(text=item.prompt or item.job_id, icon="MESH_DATA")
        row.label(text=item.state)


class TBSD_PT_main(bpy.types.Panel):
    bl_label = "Text to 3D"
    bl_idname = "TBSD_PT_main"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = CATEGORY

    def draw(self, context: Any) -> None:
        layout = self.layout
        props = context.scene.tbsd
        state = context.window_manager.tbsd_state
        layout.prop(props, "prompt", text="")
        for name in prompt_settings(props.method):
            layout.prop(props, name)
        col = layout.column(align=True)
        for name in BASIC:
            if name == "model":
                # A drop-down of what the backend has, and the field itself for a folder or hub id.
                col.prop(props, "model_choice")
                col.prop(props, "model", text="")
            else:
                col.prop(props, name)
        if props.method == "isd":
            # The image prompt: pick (or open) an image; none lets the backend draw one from its prior.
            box = layout.box()
            box.label(text="Reference image" + ("" if props.reference_image else " (none: drawn by the backend)"))
            box.template_ID(props, "reference_image", open="image.open")
            if props.reference_image is not None and props.reference_image.preview is not None:
                box.template_icon(icon_value=props.reference_image.preview.icon_id, scale=5.0)
            if adapter_settings(props.method, props.model):
                # A drop-down of the backend's IP-Adapters, and the field itself for a file or hub id.
                col = box.column(align=True)
                col.prop(props, "ip_adapter_choice")
                col.prop(props, "ip_adapter", text="")

        row = layout.row(align=True)
        row.scale_y = 1.4
        running = state.job_state in ("submitting", JobStatus.QUEUED, JobStatus.RUNNING, "cancelling")
        row.operator("tbsd.generate", icon="PLAY")
        row.operator("tbsd.refine", icon="MODIFIER")
        sub = row.row(align=True)
        sub.enabled = running
        sub.operator("tbsd.cancel", icon="CANCEL", text="")
        edit = layout.box()
        edit.label(text="Refine: edit (prompt = the object wanted)")
        col = edit.column(align=True)
        for name in edit_settings(props.show_advanced):
            col.prop(props, name)
        layout.operator("tbsd.texture_selected", icon="TEXTURE")
        row = layout.row(align=True)
        row.prop(props, "batch_text", text="")
        row.operator("tbsd.generate_batch", icon="LINENUMBERS_ON")
        if state.batch_total:
            layout.label(text=f"Batch: {state.batch_ended} of {state.batch_total} jobs ended")

        if running or state.job_state in ("done", JobStatus.FAILED, JobStatus.CANCELLED):
            text = f"{state.job_state}: step {state.step}/{state.steps}"
            if running and state.eta_s > 0:
                text += f", ETA {_eta_text(state.eta_s)}"
            if state.phase:
                text += f" ({state.phase})"
            layout.progress(factor=state.progress, type="BAR", text=text)
        icon_id = preview.icon_id()
        if icon_id:
            layout.template_icon(icon_value=icon_id, scale=8.0)

        box = layout.box()
        box.label(text=f"Backend: {state.bl_rna.properties['connection'].enum_items[state.connection].name}",
                  icon="LINKED" if state.connection == "connected" else "UNLINKED")
        if state.connection == "connected":
            box.label(text=f"Device: {state.device}" + (f" ({state.gpu})" if state.gpu else "")
                      + (f", {state.job_slots} jobs at once" if state.job_slots > 1 else ""))
            box.label(text=f"Model: {state.model}")
        row = box.row(align=True)
        row.operator("tbsd.connect", icon="PLUGIN")
        row.operator("tbsd.backend_start", icon="PLAY", text="Start local")
        row.operator("tbsd.backend_stop", icon="PAUSE", text="Stop local")
        if state.last_error:
            err = layout.box()
            err.alert = True
            for i, line in enumerate(_wrap(state.last_error, 48)):
                err.label(text=line, icon="ERROR" if i == 0 else "BLANK1")

        layout.prop(props, "show_advanced", icon="TRIA_DOWN" if props.show_advanced else "TRIA_RIGHT",
                    emboss=False)
        if props.show_advanced:
            row = layout.row(align=True)
            row.prop(props, "stream_meshes")
            row.prop(props, "preview_size")
        for title, names in sections(props.method, props.representation):
            if title.startswith("Advanced") and not props.show_advanced:
                continue
            sub = layout.box()
            sub.label(text=title)
            col = sub.column(align=True)
            for name in names:
                col.prop(props, name)


class TBSD_PT_results(bpy.types.Panel):
    bl_label = "Results"
    bl_idname = "TBSD_PT_results"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = CATEGORY
    bl_parent_id = "TBSD_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: Any) -> None:
        state = context.window_manager.tbsd_state
        layout = self.layout
        layout.template_list("TBSD_UL_results", "", state, "results", state, "results_index", rows=4)
        row = layout.row(align=True)
        row.operator("tbsd.refresh_results", icon="FILE_REFRESH")
        row.operator("tbsd.import_result", icon="IMPORT")


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + [line] if line else lines


CLASSES = (TBSD_UL_results, TBSD_PT_main, TBSD_PT_results)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)

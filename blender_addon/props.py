"""Blender properties: the job settings (on the Scene, saved with the file) generated from the shared schema,
and the run-time state the panel shows (on the WindowManager, never saved).

The settings PropertyGroup is built from `shared.settings.SCHEMA` at import time, so types, defaults, ranges,
choices and help text come from the one schema: choices become enums, int/float get the schema's min/max.
"""

from __future__ import annotations

from typing import Any

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty,
                       PointerProperty, StringProperty)

from ._vendor.shared.settings import MAX_PROMPT_CHARS, PRESETS, SCHEMA, Setting, defaults
from .schema_ui import HIDDEN


def label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def _apply_preset(self: Any, _context: Any) -> None:
    # A quality preset sets several fields together; writing them into the panel keeps what the panel
    # shows equal to what the job will run with (the job sends every shown value explicitly).
    base = defaults()
    touched = {key for preset in PRESETS.values() for key in preset}
    for key in touched:
        if key in SCHEMA and key not in HIDDEN:
            setattr(self, key, PRESETS[self.quality].get(key, base[key]))


def schema_property(setting: Setting) -> Any:
    """The bpy property for one schema setting."""
    common = {"name": label(setting.name), "description": setting.help}
    if setting.choices is not None:
        items = [(c, label(c), "") for c in setting.choices]
        update = _apply_preset if setting.name == "quality" else None
        return EnumProperty(items=items, default=setting.default, update=update, **common)
    bounds: dict[str, Any] = {}
    if setting.minimum is not None:
        bounds["min"] = setting.kind(setting.minimum)
    if setting.maximum is not None:
        bounds["max"] = setting.kind(setting.maximum)
    if setting.kind is bool:
        return BoolProperty(default=setting.default, **common)
    if setting.kind is int:
        return IntProperty(default=setting.default, **bounds, **common)
    if setting.kind is float:
        # Settings span 1e-6 to 1e5: enough digits to show the small ones.
        return FloatProperty(default=setting.default, precision=4 if abs(setting.default) < 0.01 else 3,
                             **bounds, **common)
    if setting.kind is str:
        return StringProperty(default=setting.default, maxlen=setting.max_length, **common)
    raise TypeError(f"setting {setting.name!r} has a kind the panel cannot show: {setting.kind!r}")


def _settings_class() -> type:
    annotations: dict[str, Any] = {name: schema_property(s) for name, s in SCHEMA.items() if name not in HIDDEN}
    annotations["prompt"] = StringProperty(name="Prompt", description="What to make",
                                           default="a red cube", maxlen=MAX_PROMPT_CHARS)
    annotations["stream_meshes"] = IntProperty(
        name="Streamed meshes", default=4, min=0, max=20,
        description="Intermediate meshes the backend sends while training (0: only the final mesh)")
    annotations["show_advanced"] = BoolProperty(name="Advanced", default=False)
    return type("TBSD_JobSettings", (bpy.types.PropertyGroup,), {"__annotations__": annotations})


TBSD_JobSettings = _settings_class()


def job_settings(props: Any) -> dict[str, Any]:
    """The schema settings shown in the panel, as the job's settings dict (validated by the backend too)."""
    out: dict[str, Any] = {}
    for name, setting in SCHEMA.items():
        if name in HIDDEN:
            continue
        value = getattr(props, name)
        out[name] = setting.kind(value)
    return out


class TBSD_Result(bpy.types.PropertyGroup):
    job_id: StringProperty(name="Job")
    prompt: StringProperty(name="Prompt")
    state: StringProperty(name="State")
    path: StringProperty(name="Folder", subtype="DIR_PATH")


class TBSD_RuntimeState(bpy.types.PropertyGroup):
    """What the panel shows about the backend and the running job. Written only on the main thread."""

    connection: EnumProperty(name="Backend", items=[
        ("disconnected", "Not connected", ""),
        ("connecting", "Connecting", ""),
        ("connected", "Connected", ""),
        ("lost", "Backend lost", ""),
    ], default="disconnected")
    device: StringProperty(name="Device")
    gpu: StringProperty(name="GPU")
    model: StringProperty(name="Model")
    backend_version: StringProperty(name="Backend version")
    job_id: StringProperty(name="Job")
    job_state: StringProperty(name="Job state", default="idle")
    phase: StringProperty(name="Phase")
    progress: FloatProperty(name="Progress", min=0.0, max=1.0, subtype="FACTOR")
    step: IntProperty(name="Step")
    steps: IntProperty(name="Steps")
    eta_s: FloatProperty(name="ETA", subtype="TIME_ABSOLUTE", unit="TIME_ABSOLUTE")
    last_error: StringProperty(name="Last error")
    object_name: StringProperty(name="Object", description="The object this job streams its meshes into")
    meshes_received: IntProperty(name="Meshes received")
    previews_received: IntProperty(name="Previews received")
    results: CollectionProperty(type=TBSD_Result)
    results_index: IntProperty()


CLASSES = (TBSD_JobSettings, TBSD_Result, TBSD_RuntimeState)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.tbsd = PointerProperty(type=TBSD_JobSettings)
    bpy.types.WindowManager.tbsd_state = PointerProperty(type=TBSD_RuntimeState)


def unregister() -> None:
    del bpy.types.WindowManager.tbsd_state
    del bpy.types.Scene.tbsd
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)

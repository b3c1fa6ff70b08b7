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

from ._vendor.shared.settings import (
    EDIT_SETTINGS,
    MAX_PROMPT_CHARS,
    PRESETS,
    PROCEDURAL_MODEL,
    REPRESENTATION_PRESETS,
    REPRESENTATIONS,
    SCHEMA,
    Setting,
    defaults,
    preset_values,
    validate,
)
from .schema_ui import HIDDEN


def label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def _set_preset_fields(props: Any, keys: set[str]) -> None:
    base = defaults()
    preset = preset_values(props.quality, props.representation)
    for key in keys:
        if key in SCHEMA and key not in HIDDEN:
            setattr(props, key, preset.get(key, base[key]))


def _apply_preset(self: Any, _context: Any) -> None:
    # A quality preset sets several fields together; writing them into the panel keeps what the panel
    # shows equal to what the job will run with (the job sends every shown value explicitly).
    touched = {key for preset in (*PRESETS.values(), *REPRESENTATION_PRESETS.values()) for key in preset}
    _set_preset_fields(self, touched)


def _apply_representation(self: Any, _context: Any) -> None:
    # Only what differs by representation (Gaussians' shorter runs), and only where the panel still shows some
    # representation's preset value: a value the artist typed (or a script set) is kept.
    keys = {key for preset in REPRESENTATION_PRESETS.values() for key in preset}
    untouched = {key for key in keys
                 if any(getattr(self, key) == preset_values(self.quality, r).get(key, defaults()[key])
                        for r in REPRESENTATIONS)}
    _set_preset_fields(self, untouched)


def schema_property(setting: Setting) -> Any:
    """The bpy property for one schema setting."""
    common = {"name": label(setting.name), "description": setting.help}
    if setting.choices is not None:
        items = [(c, label(c), "") for c in setting.choices]
        update = {"quality": _apply_preset, "representation": _apply_representation}.get(setting.name)
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
        # `model` takes a folder (or a hub id): a folder button saves typing a path.
        subtype = "DIR_PATH" if setting.name == "model" else "NONE"
        return StringProperty(default=setting.default, maxlen=setting.max_length, subtype=subtype, **common)
    raise TypeError(f"setting {setting.name!r} has a kind the panel cannot show: {setting.kind!r}")


# The drop-downs' items, by the setting each writes. Blender keeps only pointers to an items callback's strings, so
# each list lives here, not in a local that Python could free while a menu shows it.
_ITEMS: dict[str, list[tuple[str, str, str]]] = {"model": [], "ip_adapter": []}
_OLD_ITEMS: list[list[tuple[str, str, str]]] = []


def _offered(setting: str, first: tuple[str, str, str], entries: Any, current: str) -> list[tuple[str, str, str]]:
    """``first``, then what the backend offers (hello's entries, ``first`` not repeated), then ``current`` when it was
    typed in the setting's own field and is not offered; kept in ``_ITEMS[setting]``."""
    items = [first]
    for entry in entries:
        if entry.name != first[0]:
            items.append((entry.name, entry.label or entry.name, f"{entry.kind}: {entry.name}"))
    if current and all(current != item[0] for item in items):
        items.append((current, current, "Typed in the field below; not offered by the backend"))
    kept = _ITEMS[setting]
    if items != kept:
        _OLD_ITEMS.append(list(kept))  # a menu drawn from the old list may still point at its strings
        kept[:] = items
    return kept


def _state(context: Any) -> Any:
    return getattr(getattr(context, "window_manager", None), "tbsd_state", None)


def _model_items(props: Any, context: Any) -> list[tuple[str, str, str]]:
    """The models the connected backend has (hello's capabilities.models), and the panel's current value."""
    state = _state(context)
    return _offered("model", (PROCEDURAL_MODEL, "Procedural (embedded)", "The embedded exact-score prior"),
                    state.models if state is not None else (), props.model)


def _adapter_items(props: Any, context: Any) -> list[tuple[str, str, str]]:
    """The IP-Adapters the connected backend has (hello's capabilities.ip_adapters) after an empty entry (none),
    and the panel's current value."""
    state = _state(context)
    return _offered("ip_adapter", (NO_ADAPTER, "None", "No IP-Adapter (an isd job on Stable Diffusion needs one)"),
                    state.ip_adapters if state is not None else (), props.ip_adapter)


# The drop-down's entry for an empty `ip_adapter`: Blender draws an item with an empty identifier as a heading, which
# cannot be chosen, so the entry has a name of its own that stands for "".
NO_ADAPTER = "NONE"


def _choice(setting: str, items: Any, empty: str | None = None) -> tuple[Any, Any]:
    """get/set of a drop-down that is a view of the schema's ``setting`` (nothing stored of its own); the item
    ``empty`` stands for the empty value."""
    def get(props: Any) -> int:
        names = [item[0] for item in items(props, bpy.context)]
        value = getattr(props, setting) or empty
        return names.index(value) if value in names else 0

    def set_(props: Any, index: int) -> None:
        chosen = items(props, bpy.context)[index][0]
        setattr(props, setting, "" if chosen == empty else chosen)

    return get, set_


def _settings_class() -> type:
    annotations: dict[str, Any] = {name: schema_property(s) for name, s in SCHEMA.items() if name not in HIDDEN}
    # Views of `model` and `ip_adapter` (get/set, nothing stored): choosing here writes the schema's field.
    get, set_ = _choice("model", _model_items)
    annotations["model_choice"] = EnumProperty(
        name="Model", items=_model_items, get=get, set=set_,
        description="Diffusion prior of the job: the models the connected backend has on its machine")
    get, set_ = _choice("ip_adapter", _adapter_items, NO_ADAPTER)
    annotations["ip_adapter_choice"] = EnumProperty(
        name="IP-Adapter", items=_adapter_items, get=get, set=set_,
        description="Image prompt of an isd job on Stable Diffusion: the IP-Adapters the connected backend has")
    annotations["prompt"] = StringProperty(name="Prompt", description="What to make",
                                           default="a red cube", maxlen=MAX_PROMPT_CHARS)
    annotations["stream_meshes"] = IntProperty(
        name="Streamed meshes", default=4, min=0, max=20,
        description="Intermediate meshes the backend sends while training (0: only the final mesh)")
    annotations["preview_size"] = IntProperty(
        name="Preview size", default=96, min=16, max=512,
        description="Side in pixels of each view of the live preview (a bigger one costs the backend time)")
    annotations["show_advanced"] = BoolProperty(name="Advanced", default=False)
    # Not a schema setting: an image, sent with an isd job as its reference (the submit's 'reference' array).
    annotations["reference_image"] = PointerProperty(
        type=bpy.types.Image, name="Reference image",
        description="Image prompt of an isd job: the mode of the prompt to make. None: the backend draws one from "
                    "its prior for the prompt")
    annotations["batch_text"] = PointerProperty(
        type=bpy.types.Text, name="Prompts",
        description="Text datablock (Text Editor) with one prompt a line, for Generate batch")
    return type("TBSD_JobSettings", (bpy.types.PropertyGroup,), {"__annotations__": annotations})


TBSD_JobSettings = _settings_class()


# Always sent, so the job record says what was asked even where it equals the default. `model` above all: the
# schema's default (procedural) is not the backend's (its --model), so an unsent `model` would give the artist
# the server's model where the Model drop-down shows procedural.
ALWAYS_SENT = ("quality", "method", "representation", "seed", "steps", "model")


def job_settings(props: Any, refine: bool = False) -> dict[str, Any]:
    """The job's settings: what the panel shows that differs from the chosen quality preset, plus ALWAYS_SENT
    (the job's ``model`` among them: the one the panel shows, whatever the backend's default). The edit box's
    settings go with a Refine only (``refine``): a new job has nothing to edit, and the backend refuses them there.

    Only differences are sent so that a Refine changes exactly what was changed in the panel. Blender stores floats in 32 bits, so
    a float equal to the preset within float32 precision counts as unchanged; a changed one is sent rounded to
    7 significant digits (what float32 holds) rather than as 0.019999999552965164.
    """
    shown = {name: getattr(props, name) for name in SCHEMA
             if name not in HIDDEN and (refine or name not in EDIT_SETTINGS)}
    preset = validate({"quality": shown["quality"], "representation": shown["representation"]})
    out: dict[str, Any] = {}
    for name, value in shown.items():
        kind = SCHEMA[name].kind
        if kind is float:
            value = float(f"{value:.7g}")
            same = abs(value - preset[name]) <= 1e-6 * max(1.0, abs(preset[name]))
        else:
            value = kind(value)
            same = value == preset[name]
        if name in ALWAYS_SENT or not same:
            out[name] = value
    if out.get("model", "").startswith("//"):
        out["model"] = bpy.path.abspath(out["model"])  # a folder relative to the .blend, as the backend can read it
    return out


class TBSD_Result(bpy.types.PropertyGroup):
    job_id: StringProperty(name="Job")
    prompt: StringProperty(name="Prompt")
    state: StringProperty(name="State")
    path: StringProperty(name="Folder", subtype="DIR_PATH")


class TBSD_Model(bpy.types.PropertyGroup):
    """One model or IP-Adapter the backend has (an entry of hello's capabilities.models or .ip_adapters); ``name``
    is the value of the job's `model` or `ip_adapter`."""

    label: StringProperty(name="Label")
    kind: StringProperty(name="Kind")  # shared/capabilities.py KINDS: procedural, shipped, hub or folder


class TBSD_RuntimeState(bpy.types.PropertyGroup):
    """What the panel shows about the backend and the running job. Written only on the main thread."""

    connection: EnumProperty(name="Backend", items=[
        ("disconnected", "Not connected", ""),
        ("connecting", "Connecting", ""),
        ("connected", "Connected", ""),
        ("lost", "Backend lost", ""),  # not a JobStatus: the connection's state
    ], default="disconnected")
    device: StringProperty(name="Device")
    gpu: StringProperty(name="GPU")
    job_slots: IntProperty(name="Jobs at once", default=1, min=0)  # hello's capabilities.job_slots
    model: StringProperty(name="Model")
    models: CollectionProperty(type=TBSD_Model)
    ip_adapters: CollectionProperty(type=TBSD_Model)
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
    batch_total: IntProperty(name="Batch jobs", description="Jobs of the last Generate batch")
    batch_ended: IntProperty(name="Batch jobs ended", description="Jobs of the last batch that have ended")


CLASSES = (TBSD_JobSettings, TBSD_Result, TBSD_Model, TBSD_RuntimeState)


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

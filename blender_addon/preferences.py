"""Add-on preferences: where the backend is, how to start a local one, and the key of a remote one."""

from __future__ import annotations

from typing import Any

import bpy
from bpy.props import StringProperty

from ._vendor.shared import backend_config

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"


class TBSD_Preferences(bpy.types.AddonPreferences):
    # Extensions are imported as bl_ext.<repo>.<id>; __package__ is that name, which Blender uses as the key.
    bl_idname = __package__

    address: StringProperty(
        name="Backend address", default=DEFAULT_ADDRESS,
        description="ZeroMQ address of the backend, e.g. tcp://127.0.0.1:5555 or tcp://gpu-box:5555")
    python: StringProperty(
        name="Python", subtype="FILE_PATH", default="",
        description="Python of the backend's environment (with torch), used to start a local backend")
    arguments: StringProperty(
        name="Arguments", default="-m backend serve --device auto",
        description="Arguments after the Python executable; --bind and --results are added from these preferences")
    working_dir: StringProperty(
        name="Backend folder", subtype="DIR_PATH", default="",
        description="Folder the local backend runs in (the project checkout, so `-m backend` imports)")
    results_dir: StringProperty(
        name="Results folder", subtype="DIR_PATH", default="",
        description="Where the backend writes each job's files (empty: the backend's default)")
    models_dir: StringProperty(
        name="Models folder", subtype="DIR_PATH", default="",
        description="Folder of Stable Diffusion diffusers folders the local backend offers in the panel's Model "
                    "list, beside its Hugging Face cache (empty: the cache only)")
    client_token: StringProperty(
        name="Client token", default="",
        description="Issued by the backend on first connection; presented again so this Blender's jobs stay its own across reconnects")
    curve_server_key: StringProperty(
        name="CURVE server key", default="",
        description="A remote backend's CurveZMQ public key: its server.key file (from `python -m backend keys`) "
                    "or the 40-character Z85 key itself. Empty: no encryption (a backend on this machine)")
    curve_client_keys: StringProperty(
        name="CURVE client keys", subtype="FILE_PATH", default="",
        description="This Blender's key pair file (client.key_secret) whose public key the backend authorises")

    def draw(self, _context: Any) -> None:
        layout = self.layout
        layout.prop(self, "address")
        layout.prop(self, "curve_server_key")
        layout.prop(self, "curve_client_keys")
        box = layout.box()
        box.label(text="Local backend")
        recorded = backend_config.read() if not self.python else None
        if recorded is not None:
            box.label(text=f"Python empty: Start uses {recorded['python']} (from build.py setup --gpu)", icon="INFO")
        box.prop(self, "python")
        box.prop(self, "arguments")
        box.prop(self, "working_dir")
        box.prop(self, "results_dir")
        box.prop(self, "models_dir")
        row = box.row()
        row.operator("tbsd.backend_start")
        row.operator("tbsd.backend_stop")


def backend_environment(prefs: Any) -> tuple[str, str, str]:
    """(python, arguments, working folder) of the local backend: the preferences' own when they name a Python,
    else what `python build.py setup --gpu` recorded (shared/backend_config.py), else the empty Python that
    local_backend.command refuses in words."""
    if not prefs.python:
        recorded = backend_config.read()
        if recorded is not None:
            return recorded["python"], recorded["arguments"], recorded["working_dir"]
    return prefs.python, prefs.arguments, bpy.path.abspath(prefs.working_dir)


def get(context: Any = None) -> TBSD_Preferences:
    context = context or bpy.context
    return context.preferences.addons[__package__].preferences


def register() -> None:
    bpy.utils.register_class(TBSD_Preferences)


def unregister() -> None:
    bpy.utils.unregister_class(TBSD_Preferences)

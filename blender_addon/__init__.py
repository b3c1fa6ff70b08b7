"""TBSD Studio: text to 3D in Blender's N-panel, streaming meshes from a TBSD backend over ZeroMQ.

An extension (blender_manifest.toml): relative imports only, the product's `shared` package vendored as
`_vendor.shared` by `python build.py addon`, pyzmq from the wheels the manifest lists. Module jobs:
    props        job settings (generated from the shared schema) and the panel's run-time state
    preferences  backend address, local backend command, results folder, CURVE key
    panel        the N-panel
    scene_mesh   arrays -> object, material, packed texture
    preview      the live preview image
    connection   the socket, polled from a bpy.app.timers callback on the main thread
    local_backend  start/stop a backend process from Blender
    operators    Generate, Cancel, Refine, Import, Connect, Start/Stop local backend
"""

from __future__ import annotations

import importlib

_MODULES = ("props", "preferences", "operators", "panel", "connection")


def _modules() -> list:
    return [importlib.import_module(f".{name}", __package__) for name in _MODULES]


def register() -> None:
    for module in _modules():
        module.register()


def unregister() -> None:
    # Reverse order: the connection (timer, socket, handlers) goes first, the property types last.
    for module in reversed(_modules()):
        module.unregister()

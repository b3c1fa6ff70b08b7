"""Install the extension zip, check what it registers against the shared schema, and enable/disable it twice
with a live connection each time: afterwards no timer, socket, handler, property or class may remain.

    $TBSD_BLENDER_PYTHON tests/blender/addon_lifecycle.py dist/tbsd_studio-<version>.zip ADDRESS

ADDRESS is where nothing listens: the connection is real (a zmq socket and the add-on's timer) but no backend
answers, so the panel state must go to "lost" when the timer is ticked past the heartbeat timeout.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import addon_harness as h  # noqa: E402

import bpy  # noqa: E402


def schema_report(mod) -> dict:
    """Every schema setting against the Scene's property group and the panel's layout plan."""
    settings = sys.modules[f"{h.MODULE}._vendor.shared.settings"]
    schema_ui = sys.modules[f"{h.MODULE}.schema_ui"]
    rna = bpy.types.Scene.bl_rna.properties["tbsd"].fixed_type.properties
    by_representation: dict[str, set[str]] = {r: set() for r in settings.REPRESENTATIONS}
    for method in settings.METHODS:
        for representation in settings.REPRESENTATIONS:
            by_representation[representation] |= schema_ui.drawn_names(method, representation)
    drawn = set().union(*by_representation.values())
    problems = []
    for name, s in settings.SCHEMA.items():
        if name in schema_ui.HIDDEN:
            if name in rna.keys() or name in drawn:
                problems.append(f"{name}: hidden but shown")
            continue
        if name not in rna.keys():
            problems.append(f"{name}: no property")
            continue
        if name not in drawn:
            problems.append(f"{name}: not drawn for any method and representation")
        p = rna[name]
        if s.choices is not None:
            if p.type != "ENUM" or [i.identifier for i in p.enum_items] != list(s.choices):
                problems.append(f"{name}: enum {p.type} {[i.identifier for i in getattr(p, 'enum_items', [])]}")
            elif p.default != s.default:
                problems.append(f"{name}: default {p.default!r} != {s.default!r}")
            continue
        want = {bool: "BOOLEAN", int: "INT", float: "FLOAT", str: "STRING"}[s.kind]
        if p.type != want:
            problems.append(f"{name}: type {p.type} != {want}")
            continue
        if s.kind in (int, float):
            if s.minimum is not None and abs(p.hard_min - s.minimum) > 1e-6 * max(1.0, abs(s.minimum)):
                problems.append(f"{name}: min {p.hard_min} != {s.minimum}")
            if s.maximum is not None and abs(p.hard_max - s.maximum) > 1e-6 * max(1.0, abs(s.maximum)):
                problems.append(f"{name}: max {p.hard_max} != {s.maximum}")
            if abs(p.default - s.default) > 1e-6 * max(1.0, abs(s.default)):
                problems.append(f"{name}: default {p.default} != {s.default}")
        elif p.default != s.default:
            problems.append(f"{name}: default {p.default!r} != {s.default!r}")
    return {"n_schema": len(settings.SCHEMA), "hidden": sorted(schema_ui.HIDDEN), "problems": problems,
            "drawn": sorted(drawn), "by_representation": {r: sorted(n) for r, n in by_representation.items()}}


def ui_calls_report(mod) -> list[str]:
    """The panel's and preferences' draw code against Blender's own RNA (no UI can be drawn headless): every
    UILayout method called exists and takes the keywords given, icons are real icon names, operator ids are
    registered and literal property names exist on the property group they are drawn from."""
    import ast

    layout_funcs = bpy.types.UILayout.bl_rna.functions
    icons = {i.identifier for i in layout_funcs["label"].parameters["icon"].enum_items}
    job_props = set(bpy.types.Scene.bl_rna.properties["tbsd"].fixed_type.properties.keys())
    prefs_props = set(type(bpy.context.preferences.addons[h.MODULE].preferences).bl_rna.properties.keys())
    problems = []
    for name in ("panel", "preferences"):
        path = sys.modules[f"{h.MODULE}.{name}"].__file__
        tree = ast.parse(open(path, encoding="utf-8").read())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            method = node.func.attr
            if method not in layout_funcs.keys():
                continue
            params = set(layout_funcs[method].parameters.keys())
            for kw in node.keywords:
                if kw.arg is not None and kw.arg not in params:
                    problems.append(f"{name}.py:{node.lineno}: {method}() has no keyword {kw.arg!r}")
                if kw.arg == "icon" and isinstance(kw.value, ast.Constant) and kw.value.value not in icons:
                    problems.append(f"{name}.py:{node.lineno}: unknown icon {kw.value.value!r}")
                if kw.arg == "icon" and isinstance(kw.value, ast.IfExp):
                    for branch in (kw.value.body, kw.value.orelse):
                        if isinstance(branch, ast.Constant) and branch.value not in icons:
                            problems.append(f"{name}.py:{node.lineno}: unknown icon {branch.value!r}")
            args = node.args
            if method == "operator" and args and isinstance(args[0], ast.Constant):
                group, op = args[0].value.split(".")
                if op not in dir(getattr(bpy.ops, group)):
                    problems.append(f"{name}.py:{node.lineno}: no operator {args[0].value}")
            if method == "prop" and len(args) >= 2 and isinstance(args[1], ast.Constant):
                owner = ast.unparse(args[0])
                known = job_props if owner == "props" else prefs_props if owner == "self" else None
                if known is not None and args[1].value not in known:
                    problems.append(f"{name}.py:{node.lineno}: {owner} has no property {args[1].value!r}")
    return problems


def registered_state(mod) -> dict:
    conn = mod.connection if mod is not None else None
    return {
        "enabled": h.enabled(),
        "scene_prop": hasattr(bpy.types.Scene, "tbsd"),
        "wm_prop": hasattr(bpy.types.WindowManager, "tbsd_state"),
        "panel": hasattr(bpy.types, "TBSD_PT_main"),
        "operator": hasattr(bpy.types, "TBSD_OT_generate"),
        "timer": bool(conn and bpy.app.timers.is_registered(conn._tick)),
        "session": bool(conn and conn.session() is not None),
        "load_pre_handlers": sum(1 for f in bpy.app.handlers.load_pre if getattr(f, "__module__", "").startswith(h.MODULE)),
    }


def connect_and_lose(mod, address: str) -> dict:
    """Connect to ``address`` (no backend there) and tick the real timer callback until the panel says lost."""
    prefs = bpy.context.preferences.addons[h.MODULE].preferences
    prefs.address = address
    bpy.ops.tbsd.connect()
    state = bpy.context.window_manager.tbsd_state
    session = mod.connection.session()
    socket = session.client.socket
    out = {"timer_after_connect": bpy.app.timers.is_registered(mod.connection._tick),
           "state_after_connect": state.connection}
    t0 = time.monotonic()
    while state.connection != "lost" and time.monotonic() - t0 < 6.0:
        mod.connection._tick()
        time.sleep(0.05)
    out["lost_after_s"] = time.monotonic() - t0
    out["state_after_wait"] = state.connection
    out["last_error"] = state.last_error
    out["socket"] = socket
    return out


def main(argv: list[str]) -> dict:
    zip_path, address = argv
    report: dict = {"blender": bpy.app.version_string}
    mod = h.install(zip_path)
    report["installed"] = registered_state(mod)
    report["module"] = mod.__name__ if mod else None
    report["module_file"] = mod.__file__ if mod else None
    import zmq  # from the wheel Blender installed for the extension

    report["zmq_file"] = zmq.__file__
    report["zmq_version"] = zmq.zmq_version()
    report["top_level_shared_imported"] = "shared" in sys.modules
    report["vendored_shared"] = sys.modules[f"{h.MODULE}._vendor.shared.settings"].__file__
    report["schema"] = schema_report(mod)
    report["ui_problems"] = ui_calls_report(mod)
    report["panel_category"] = bpy.types.TBSD_PT_main.bl_category
    report["panel_region"] = bpy.types.TBSD_PT_main.bl_region_type
    report["prefs_id"] = type(bpy.context.preferences.addons[h.MODULE].preferences).bl_idname
    # The backend `build.py setup --gpu` recorded ($TBSD_STUDIO_CONFIG here) is what Start uses while the
    # preferences name no Python; a Python typed there wins.
    prefs = bpy.context.preferences.addons[h.MODULE].preferences
    preferences = h.submodule("preferences")
    report["backend_env_recorded"] = list(preferences.backend_environment(prefs))
    prefs.python, prefs.working_dir = "/opt/own/python", "/opt/own"
    report["backend_env_own"] = list(preferences.backend_environment(prefs))
    prefs.python, prefs.working_dir = "", ""

    props = bpy.context.scene.tbsd
    props.quality = "draft"
    report["draft"] = {"steps": props.steps, "texture_size": props.texture_size, "mesh_resolution": props.mesh_resolution}
    props.quality = "standard"
    report["standard"] = {"steps": props.steps, "texture_size": props.texture_size}
    props.texture_size = 2048  # an edit of the artist's, which a change of representation must keep
    props.representation = "gaussians"
    report["standard_gaussians"] = {"steps": props.steps, "texture_size": props.texture_size}
    props.representation = "nerf"
    report["standard_nerf_again"] = {"steps": props.steps, "texture_size": props.texture_size}
    props.steps = 777  # typed by the artist: a change of representation keeps it
    props.representation = "gaussians"
    report["typed_steps_after_switch"] = props.steps
    props.representation = "nerf"
    props.steps = 10000
    props.texture_size = 1024

    cycles = []
    for _ in range(2):
        mod = h.package()
        conn = connect_and_lose(mod, address)
        socket = conn.pop("socket")
        old_connection = mod.connection
        h.disable()
        after = registered_state(None)
        after["old_timer"] = bpy.app.timers.is_registered(old_connection._tick)
        after["old_session"] = old_connection.session() is not None
        after["socket_closed"] = bool(socket.closed)
        after["timer_errors"] = list(old_connection.timer_errors)
        cycles.append({"connected": conn, "after_disable": after})
        mod = h.enable()
        cycles[-1]["after_enable"] = registered_state(h.package())
    report["cycles"] = cycles

    # A file closed while connected: the load_pre handler closes the socket and the timer goes.
    mod = h.package()
    conn = connect_and_lose(mod, address)
    socket = conn.pop("socket")
    path = os.path.join(tempfile.mkdtemp(), "other.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.open_mainfile(filepath=path)
    report["after_file_load"] = {**registered_state(h.package()), "socket_closed": bool(socket.closed)}
    h.disable()
    report["final"] = registered_state(None)
    return report


if __name__ == "__main__":
    h.run(main)

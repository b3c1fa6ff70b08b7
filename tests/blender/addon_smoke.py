"""The add-on's smoke test for every supported Blender (tests/test_addon_versions.py runs it on each bpy wheel):
install the built zip, enable/disable it twice, check the panel and the schema's fields are registered, import
zmq from the wheel Blender picked for its Python, build a textured object with the add-on's scene builder, and
record every warning the add-on's own code raised on the way.

    $TBSD_BLENDER_PYTHON_<X_Y> tests/blender/addon_smoke.py dist/tbsd_studio-<version>.zip

Warnings are recorded with Python's warnings module set to "always" (Blender's RNA deprecations, such as
Material.use_nodes on 5.x, are DeprecationWarnings attributed to the calling line); a control that touches
Material.use_nodes directly shows whether this Blender warns about it at all, so the check cannot pass by not
seeing warnings.
"""

from __future__ import annotations

import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import addon_harness as h  # noqa: E402
from addon_lifecycle import registered_state, schema_report  # noqa: E402
from addon_mesh import describe, sphere, texture  # noqa: E402

import bpy  # noqa: E402


def _warning_text(w: warnings.WarningMessage) -> str:
    return f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"


def main(argv: list[str]) -> dict:
    (zip_path,) = argv
    report: dict = {"blender": bpy.app.version_string, "python": "%d.%d" % sys.version_info[:2]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mod = h.install(zip_path)
        report["installed"] = registered_state(mod)
        addon_dir = os.path.dirname(mod.__file__)
        import zmq  # from the wheel Blender installed for this Python

        report["zmq_file"] = zmq.__file__
        report["pyzmq_version"] = zmq.__version__
        report["schema_problems"] = schema_report(mod)["problems"]
        cycles = []
        for _ in range(2):
            h.disable()
            gone = registered_state(None)
            h.enable()
            cycles.append({"after_disable": gone, "after_enable": registered_state(h.package())})
        report["cycles"] = cycles
        # The scene builder is where a material gets its node tree: the code Blender 5.x deprecates.
        sm = h.submodule("scene_mesh")
        v, f, uv = sphere(8, 12)
        obj = sm.ensure_object(bpy.context, "smoke")
        sm.update_object(obj, sm.MeshArrays(v, f, uv, None, texture(32)), "smoke")
        report["object"] = describe(obj)
        h.disable()
        report["final"] = registered_state(None)
    report["addon_dir"] = addon_dir
    report["addon_warnings"] = [_warning_text(w) for w in caught
                                if os.path.abspath(w.filename).startswith(addon_dir)]
    report["all_warnings"] = [_warning_text(w) for w in caught]
    with warnings.catch_warnings(record=True) as control:
        warnings.simplefilter("always")
        material = bpy.data.materials.new("control")
        material.use_nodes = True
    report["use_nodes_warns"] = [_warning_text(w) for w in control]
    return report


if __name__ == "__main__":
    h.run(main)

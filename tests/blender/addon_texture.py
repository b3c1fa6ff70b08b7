"""Texture selected against a real backend process, through the add-on's operator and its timer callback.

    $TBSD_BLENDER_PYTHON tests/blender/addon_texture.py ZIP BACKEND_PYTHON REPO RESULTS_DIR PORT SETTINGS_JSON

Two objects: a cube with its UV map (the texture is baked into it) and a UV sphere without UVs, of quads and
triangles (the backend unwraps it; its UVs come back per face corner into a new UV map). For each: its geometry
before and after, the material, the image, the UV maps, then undo (the material and new UV map go, the geometry
stays) and redo. Then the textured cube is refined, and edited ("a green cube" without "red"), on the backend:
each puts its new texture on the same object (same geometry, a new image, the object's job id the refine's) and
undo brings the texture before it back. One JSON report on stdout.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import addon_harness as h  # noqa: E402

import bpy  # noqa: E402
import numpy as np  # noqa: E402


def tick_until(conn, state, what: str, predicate, timeout: float) -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}: {state.job_state} "
                                 f"{state.last_error!r}")
        conn._tick()
        time.sleep(0.05)
    return time.monotonic() - t0


def positions(obj) -> np.ndarray:
    co = np.empty(3 * len(obj.data.vertices), np.float32)
    obj.data.vertices.foreach_get("co", co)
    return co.reshape(-1, 3)


def describe(obj) -> dict:
    mesh = obj.data
    out = {"vertices": len(mesh.vertices), "faces": len(mesh.polygons), "loops": len(mesh.loops),
           "uv_maps": [layer.name for layer in mesh.uv_layers], "materials": len(mesh.materials),
           "material": None, "image": None, "uv_map_node": None}
    mat = mesh.materials[0] if len(mesh.materials) else None
    if mat is not None and mat.node_tree is not None:
        bsdf = next((n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None)
        base = bsdf.inputs["Base Color"] if bsdf is not None else None
        node = base.links[0].from_node if base is not None and base.is_linked else None
        out["material"] = {"principled": bsdf is not None, "base_color_from": node.type if node else None}
        if node is not None and node.type == "TEX_IMAGE" and node.image is not None:
            out["image"] = {"size": list(node.image.size), "packed": node.image.packed_file is not None}
            pixels = np.empty(len(node.image.pixels), np.float32)
            node.image.pixels.foreach_get(pixels)
            out["image_name"], out["pixels_mean"] = node.image.name, float(pixels.mean())
            out["pixels"] = hashlib.sha1(np.round(pixels * 255).astype(np.uint8).tobytes()).hexdigest()
            vector = node.inputs["Vector"]
            if vector.is_linked and vector.links[0].from_node.type == "UVMAP":
                out["uv_map_node"] = vector.links[0].from_node.uv_map
    if "TBSD UV" in mesh.uv_layers:
        uv = np.empty(2 * len(mesh.loops), np.float32)
        mesh.uv_layers["TBSD UV"].uv.foreach_get("vector", uv)
        out["new_uv_range"] = [float(uv.min()), float(uv.max())]
        out["new_uv_distinct"] = int(len(np.unique(uv.reshape(-1, 2), axis=0)))
        # Per loop-triangle corner, in Blender's triangulation order (the order the mesh was sent in).
        mesh.calc_loop_triangles()
        loops = np.empty(3 * len(mesh.loop_triangles), np.int32)
        mesh.loop_triangles.foreach_get("loops", loops)
        out["new_uv_per_corner"] = uv.reshape(-1, 2)[loops].tolist()
    return out


def main(argv: list[str]) -> dict:
    zip_path, backend_python, repo, results_dir, port, settings_json = argv
    report: dict = {"blender": bpy.app.version_string}
    h.install(zip_path)
    conn = h.submodule("connection")
    state = bpy.context.window_manager.tbsd_state
    h.point_at_local_backend(backend_python, repo, port, results_dir)
    props = bpy.context.scene.tbsd
    props.quality = "draft"
    for name, value in json.loads(settings_json).items():
        setattr(props, name, value)
    props.stream_meshes = 1  # asked for, and left out of a texture job's stream
    props.prompt = "a blue cube"

    bpy.ops.mesh.primitive_cube_add(size=0.6, location=(2.0, 0.0, 0.0))
    cube = bpy.context.active_object
    cube.name = "user cube"
    bpy.ops.mesh.primitive_uv_sphere_add(segments=8, ring_count=5, radius=0.3, calc_uvs=False, location=(-2, 0, 0))
    sphere = bpy.context.active_object
    sphere.name = "user sphere"

    assert bpy.ops.tbsd.backend_start() == {"FINISHED"}
    report["connect_s"] = tick_until(conn, state, "the backend's welcome", lambda: state.connection == "connected",
                                     120)
    for name in ("user cube", "user sphere"):
        obj = bpy.data.objects[name]
        for other in bpy.context.view_layer.objects:
            other.select_set(False)
        obj.select_set(True)
        bpy.context.view_layer.objects.active = obj
        before_co = positions(obj)
        before = describe(obj)
        bpy.ops.ed.undo_push(message=f"before texturing {name}")
        state.last_error = ""
        assert bpy.ops.tbsd.texture_selected() == {"FINISHED"}, state.last_error
        seen_progress: set[int] = set()

        def done() -> bool:
            seen_progress.add(state.step)
            return state.job_state in ("done", "failed")

        seconds = tick_until(conn, state, f"texturing {name}", done, 300)
        obj = bpy.data.objects[name]
        after = describe(obj)
        same_positions = bool(np.array_equal(positions(obj), before_co))
        job = {"seconds": seconds, "job_state": state.job_state, "last_error": state.last_error,
               "previews": state.previews_received, "progress_steps": sorted(seen_progress),
               "job_property": obj.get("tbsd_job"), "before": before, "after": after,
               "same_positions": same_positions, "active": bpy.context.view_layer.objects.active.name}
        bpy.ops.ed.undo()
        obj = bpy.data.objects[name]
        job["after_undo"] = describe(obj)
        job["undo_same_positions"] = bool(np.array_equal(positions(obj), before_co))
        bpy.ops.ed.redo()
        job["after_redo"] = describe(bpy.data.objects[name])
        state = bpy.context.window_manager.tbsd_state  # undo rebuilt the data: fetch it again
        report[name] = job
    report["image_names"] = [im.name for im in bpy.data.images]
    # Refine, then edit, the textured cube: each continues the object's texture job from its checkpoint.
    props = bpy.context.scene.tbsd
    props.steps = 3  # a refine's steps are how many more
    for kind, prompt, edit in (("refine", "a blue cube", ""), ("edit", "a green cube", "red")):
        name = "user cube"
        obj = bpy.data.objects[name]
        for other in bpy.context.view_layer.objects:
            other.select_set(False)
        obj.select_set(True)
        bpy.context.view_layer.objects.active = obj
        before_co, before, before_job = positions(obj), describe(obj), obj.get("tbsd_job")
        props.prompt, props.edit_prompt = prompt, edit
        state.last_error = ""
        n_objects = len(bpy.data.objects)
        assert bpy.ops.tbsd.refine() == {"FINISHED"}, state.last_error
        seconds = tick_until(conn, state, f"the {kind} of {name}", lambda: state.job_state in ("done", "failed"), 300)
        obj = bpy.data.objects[name]
        job = {"seconds": seconds, "job_state": state.job_state, "last_error": state.last_error,
               "state_job": state.job_id, "previews": state.previews_received, "job_before": before_job,
               "job_property": obj.get("tbsd_job"), "before": before, "after": describe(obj),
               "same_positions": bool(np.array_equal(positions(obj), before_co)),
               "objects_added": len(bpy.data.objects) - n_objects}
        bpy.ops.ed.undo()
        obj = bpy.data.objects[name]
        job["after_undo"] = describe(obj)
        job["undo_job_property"] = obj.get("tbsd_job")
        job["undo_same_positions"] = bool(np.array_equal(positions(obj), before_co))
        bpy.ops.ed.redo()
        job["after_redo"] = describe(bpy.data.objects[name])
        state = bpy.context.window_manager.tbsd_state
        props = bpy.context.scene.tbsd
        report[kind] = job
    # The mesh changed since it was textured (a vertex moved): refused in words, nothing sent.
    obj = bpy.data.objects["user cube"]
    obj.data.vertices[0].co.x += 0.1
    state.last_error = ""
    props.edit_prompt = ""
    try:
        result = sorted(bpy.ops.tbsd.refine())
    except RuntimeError as exc:  # an operator's ERROR report raises when it is called from Python
        result = [f"RuntimeError: {exc}"]
    report["changed_refine"] = {"result": result, "last_error": state.last_error, "job_state": state.job_state}
    return report


if __name__ == "__main__":
    h.run(main)

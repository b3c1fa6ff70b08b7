"""Import a GLB with Blender's own glTF importer and describe the result as one line of JSON on stdout.

Run BY the Python of .venv-blender (the bpy wheel), not the backend's:

    $TBSD_BLENDER_PYTHON tests/blender/import_glb.py FILE.glb

The line holds Blender's version, and per object its name, type, vertex and face counts and world-space
bounding box (from the vertices, Blender's +Z-up world), and per mesh its materials: whether the node tree has a
Principled BSDF whose Base Color is fed by an Image Texture node, and that image's size and pixel state.
On failure the line is ``{"error": ...}`` and the exit status is 1. Everything else the importer or Blender
prints goes to stderr, so stdout carries exactly that one line.

Only bpy, Blender's bundled modules and numpy (a dependency of bpy) are used: the project is not installed here.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

# Keep stdout for the JSON line: Blender and the importer print progress to fd 1 (from C and Python alike).
_RESULT = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr


def _vec(v) -> list[float]:
    return [float(x) for x in v]


def _upstream_nodes(socket, depth: int = 4):
    """Nodes feeding ``socket``, breadth first, up to ``depth`` links away (closest first)."""
    frontier, seen = [socket], set()
    for _ in range(depth):
        nxt = []
        for sock in frontier:
            for link in sock.links:
                node = link.from_node
                if node.name in seen:
                    continue
                seen.add(node.name)
                yield node
                nxt.extend(inp for inp in node.inputs if inp.is_linked)
        frontier = nxt


def _image_info(image) -> dict:
    import numpy as np

    size = [int(s) for s in image.size]  # reading the size loads the (packed) image buffer
    info = {
        "name": image.name,
        "size": size,
        "has_data": bool(image.has_data),
        "packed": image.packed_file is not None,
        "source": image.source,
        "channels": int(image.channels),
    }
    info["has_pixels"] = info["has_data"] or (size[0] > 0 and size[1] > 0)
    if size[0] > 0 and size[1] > 0:
        pixels = np.empty(size[0] * size[1] * image.channels, dtype=np.float32)
        image.pixels.foreach_get(pixels)
        info["mean_rgba"] = _vec(pixels.reshape(-1, image.channels).mean(axis=0))
    return info


def _material_info(material) -> dict:
    info: dict = {"name": material.name, "use_nodes": bool(material.use_nodes), "principled_bsdf": False,
                  "base_color_linked": False, "base_color_from": None, "base_color_image_texture": False,
                  "base_color_image_texture_direct": False, "image": None}
    if not material.use_nodes or material.node_tree is None:
        return info
    bsdfs = [n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED"]
    info["principled_bsdf"] = bool(bsdfs)
    if not bsdfs:
        return info
    base = bsdfs[0].inputs["Base Color"]
    info["base_color_linked"] = bool(base.is_linked)
    if base.is_linked:
        info["base_color_from"] = base.links[0].from_node.type
        info["base_color_image_texture_direct"] = base.links[0].from_node.type == "TEX_IMAGE"
    for node in _upstream_nodes(base):
        if node.type == "TEX_IMAGE":
            info["base_color_image_texture"] = True
            info["image"] = _image_info(node.image) if node.image is not None else None
            break
    return info


def _object_info(obj) -> dict:
    import numpy as np

    info: dict = {"name": obj.name, "type": obj.type, "parent": obj.parent.name if obj.parent else None,
                  "vertices": None, "faces": None, "bbox_min": None, "bbox_max": None, "materials": []}
    if obj.type != "MESH":
        return info
    mesh = obj.data
    info["mesh_name"] = mesh.name
    info["vertices"] = len(mesh.vertices)
    info["faces"] = len(mesh.polygons)
    info["loops"] = len(mesh.loops)
    info["uv_layers"] = [uv.name for uv in mesh.uv_layers]
    if len(mesh.vertices):
        co = np.empty(len(mesh.vertices) * 3, dtype=np.float64)
        mesh.vertices.foreach_get("co", co)
        co = co.reshape(-1, 3)
        m = np.array(obj.matrix_world, dtype=np.float64)
        world = co @ m[:3, :3].T + m[:3, 3]
        info["bbox_min"] = _vec(world.min(axis=0))
        info["bbox_max"] = _vec(world.max(axis=0))
    info["matrix_world"] = [_vec(row) for row in obj.matrix_world]
    info["materials"] = [_material_info(mat) for mat in mesh.materials if mat is not None]
    return info


def describe(path: str) -> dict:
    import bpy

    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    result = bpy.ops.import_scene.gltf(filepath=os.path.abspath(path))
    if "FINISHED" not in result:
        raise RuntimeError(f"import_scene.gltf returned {sorted(result)}")
    bpy.context.view_layer.update()  # matrix_world of new objects
    scene = bpy.context.scene
    return {
        "blender_version": bpy.app.version_string,
        "blender_version_tuple": list(bpy.app.version),
        "file": os.path.abspath(path),
        "objects": [_object_info(obj) for obj in sorted(scene.objects, key=lambda o: o.name)],
        "n_materials": len(bpy.data.materials),
        "n_images": len(bpy.data.images),
    }


def main(argv: list[str]) -> int:
    try:
        if len(argv) != 1:
            raise SystemExit("usage: import_glb.py FILE.glb")
        out, status = describe(argv[0]), 0
    except BaseException as exc:  # noqa: BLE001 - every failure becomes the JSON error line
        traceback.print_exc(file=sys.stderr)
        out, status = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}, 1
    _RESULT.write(json.dumps(out) + "\n")
    _RESULT.flush()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

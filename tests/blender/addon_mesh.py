"""Synthetic mesh arrays through the add-on's scene builder (scene_mesh.py) in Blender, save, reload, describe.

    $TBSD_BLENDER_PYTHON tests/blender/addon_mesh.py dist/tbsd_studio-<version>.zip OUT_DIR

Builds an object from a small UV sphere with a two-colour texture (red top rows, blue bottom rows) at a 3D
cursor away from the origin, then replaces its mesh in place with a finer sphere as a streamed update would,
saves the .blend, reopens it, and reports what Blender holds.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import addon_harness as h  # noqa: E402

import bpy  # noqa: E402

CURSOR = (1.0, -2.0, 0.5)
PROMPT = "a   red and blue  sphere"


def sphere(n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices (poles duplicated per column so UVs stay per vertex), triangles, per-vertex UVs (v up)."""
    lat = np.linspace(0.0, np.pi, n_lat + 1)
    lon = np.linspace(0.0, 2 * np.pi, n_lon + 1)
    th, ph = np.meshgrid(lat, lon, indexing="ij")
    v = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1).reshape(-1, 3) * 0.5
    uv = np.stack([ph / (2 * np.pi), 1.0 - th / np.pi], -1).reshape(-1, 2)
    idx = np.arange((n_lat + 1) * (n_lon + 1)).reshape(n_lat + 1, n_lon + 1)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return v.astype(np.float32), faces.astype(np.int32), uv.astype(np.float32)


def texture(size: int) -> np.ndarray:
    tex = np.zeros((size, size, 3), np.uint8)
    tex[: size // 2, :, 0] = 255  # top rows (v near 1: the sphere's +Z half) red
    tex[size // 2 :, :, 2] = 255  # bottom rows blue
    return tex


def describe(obj) -> dict:
    mesh = obj.data
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)
    mat = mesh.materials[0] if len(mesh.materials) else None
    info = {"name": obj.name, "mesh": mesh.name, "vertices": len(mesh.vertices), "faces": len(mesh.polygons),
            "triangles_only": all(p.loop_total == 3 for p in mesh.polygons),
            "location": list(obj.location), "uv_layers": [u.name for u in mesh.uv_layers],
            "color_attributes": [c.name for c in mesh.color_attributes],
            "bbox_min": co.min(0).tolist(), "bbox_max": co.max(0).tolist(), "material": None,
            "n_materials": len(mesh.materials)}
    if mat is not None:
        bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
        link = bsdf.inputs["Base Color"].links[0] if bsdf.inputs["Base Color"].is_linked else None
        img = link.from_node.image if link is not None and link.from_node.type == "TEX_IMAGE" else None
        info["material"] = {"name": mat.name, "base_color_from": link.from_node.type if link else None}
        if img is not None:
            w, h = img.size
            px = np.empty(w * h * 4, np.float32)
            img.pixels.foreach_get(px)
            px = px.reshape(h, w, 4)
            info["image"] = {"name": img.name, "size": [w, h], "packed": img.packed_file is not None,
                             "colorspace": img.colorspace_settings.name,
                             # Blender rows run bottom-up: the last rows are the texture's top (red).
                             "top_rgb": px[-1].mean(0)[:3].tolist(), "bottom_rgb": px[0].mean(0)[:3].tolist()}
            # Through the UVs: the texel under each corner must be red above the equator, blue below.
            uvs = np.empty(len(mesh.loops) * 2, np.float32)
            mesh.uv_layers["UVMap"].uv.foreach_get("vector", uvs)
            uvs = uvs.reshape(-1, 2)
            vidx = np.empty(len(mesh.loops), np.int32)
            mesh.loops.foreach_get("vertex_index", vidx)
            z = co[vidx, 2]
            rows = np.clip((uvs[:, 1] * h).astype(int), 0, h - 1)
            cols = np.clip((uvs[:, 0] * w).astype(int), 0, w - 1)
            texel = px[rows, cols, :3]
            up, down = z > 0.1, z < -0.1
            info["uv_red_above"] = bool(np.all(texel[up, 0] > 0.9) and np.all(texel[up, 2] < 0.1))
            info["uv_blue_below"] = bool(np.all(texel[down, 2] > 0.9) and np.all(texel[down, 0] < 0.1))
    return info


def main(argv: list[str]) -> dict:
    zip_path, out_dir = argv
    h.install(zip_path)
    sm = h.submodule("scene_mesh")
    ctx = bpy.context
    ctx.scene.cursor.location = CURSOR
    v, f, uv = sphere(8, 12)
    colors = np.tile(np.array([[0, 255, 0]], np.uint8), (len(v), 1))
    name = sm.object_name(PROMPT)
    obj = sm.ensure_object(ctx, name)
    sm.update_object(obj, sm.MeshArrays(v, f, uv, colors, texture(32)), name)
    first = describe(obj)
    first_ptr = obj.data.as_pointer()
    n_images_first = len(bpy.data.images)

    v2, f2, uv2 = sphere(16, 24)
    same = sm.ensure_object(ctx, name, obj)
    sm.update_object(same, sm.MeshArrays(v2, f2, uv2, None, texture(64)), name)
    second = describe(same)
    report = {"first": first, "second": second, "same_object": same is obj,
              "same_mesh_datablock": same.data.as_pointer() == first_ptr,
              "n_objects": len(bpy.data.objects), "n_meshes": len(bpy.data.meshes),
              "n_images_first": n_images_first, "n_images_second": len(bpy.data.images),
              "expected_second": {"vertices": len(v2), "faces": len(f2)}}
    # A bad array is refused before the mesh is touched.
    try:
        sm.update_object(same, sm.MeshArrays(v2, f2 + len(v2), uv2), name)
        report["bad_faces_error"] = None
    except ValueError as exc:
        report["bad_faces_error"] = str(exc)
    report["after_bad"] = len(same.data.vertices)

    path = os.path.join(out_dir, "mesh.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    # Move the file away from where it was saved: a packed image needs nothing beside the .blend.
    moved = os.path.join(out_dir, "moved", "mesh.blend")
    os.makedirs(os.path.dirname(moved), exist_ok=True)
    os.replace(path, moved)
    bpy.ops.wm.open_mainfile(filepath=moved)
    report["reloaded"] = describe(bpy.data.objects[name])
    return report


if __name__ == "__main__":
    h.run(main)

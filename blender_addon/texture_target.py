"""Texture selected: the active object's mesh as a texture job sends it, and the baked result put back on it.

What is sent is the object's evaluated mesh (modifiers applied) in object space, triangulated by Blender's loop
triangles, with its active UV map if it has one. Blender's UVs are per face corner, the wire's per vertex, so the
vertices are split where a vertex carries several UVs (a seam): one vertex per distinct (vertex, UV) pair.

Back onto the object, per face corner: each sent triangle corner is a loop of the mesh, and the backend keeps the
faces in order (docs/PROTOCOL.md, Texture jobs), so triangle t's corner k gets the UV the result gives its face t,
corner k. With the object's own UVs those are its UVs, and the texture goes onto that map; without, the backend's
xatlas unwrap split vertices along new seams, and its per-corner UVs go into a new UV map ("TBSD UV") of the
original mesh: no vertex is added or moved, so the object keeps its geometry. A quad or n-gon is two or more
loop triangles sharing loops: a loop gets the UV of the last triangle that lists it, which is the same UV unless
the unwrap put a seam inside the polygon (rare: xatlas charts follow flat regions).
That needs the evaluated mesh's loops to be the object's own: a modifier that changes the topology (subdivision,
say) is fine with the object's UVs (they are interpolated alike on both sides) but refused without, since the
unwrap's UVs could not be put on the original loops.
Refine on a textured object continues its texture job (the backend's checkpoint holds the mesh that was sent):
the result is a new texture for the same triangles, put on through apply_result again. The object carries a digest
of the triangles it was textured with (SHAPE_KEY), so a mesh edited since is refused rather than given a texture
made for other geometry.
Main thread only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import bpy
import numpy as np

from . import scene_mesh
from ._vendor.shared.texture_mesh import MAX_TEXTURE_FACES, MAX_TEXTURE_VERTICES

NEW_UV_MAP = "TBSD UV"
UV_NODE = "TBSD UV Map"
# Custom property on a textured object: shape_digest of the triangles its texture was made for. Its presence also
# says "Texture selected made this object's texture", so Refine continues a texture job rather than a generation.
SHAPE_KEY = "tbsd_texture_shape"


@dataclass
class TextureTarget:
    """What a texture job needs to put its result back: the object, which UV map the mesh was sent with (None:
    none; the result's UVs go into a new map) and each sent triangle corner's loop in the object's mesh."""

    object_name: str
    uv_map: str | None
    corner_loops: np.ndarray  # int [T * 3]
    shape: str = ""  # shape_digest of the triangles sent


def shape_digest(corner_positions: np.ndarray) -> str:
    """A digest of the triangles' corner positions (float32 [T * 3, 3], object space, in loop-triangle order):
    what the texture was baked for. Per corner, not per vertex, so the UV seams the sent mesh was split along (or
    the UV map the texture added) do not change it."""
    return hashlib.sha1(np.ascontiguousarray(corner_positions, np.float32).tobytes()).hexdigest()


def mesh_to_send(context: Any, obj: Any) -> tuple[dict[str, np.ndarray], TextureTarget]:
    """The wire arrays (vertices, faces, uvs if any) of ``obj``'s evaluated mesh, and its TextureTarget."""
    if obj is None or obj.type != "MESH":
        raise ValueError("select a mesh object first (Texture selected textures the active mesh object)")
    depsgraph = context.evaluated_depsgraph_get()
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        mesh.calc_loop_triangles()
        n_tris, n_verts = len(mesh.loop_triangles), len(mesh.vertices)
        if n_tris == 0:
            raise ValueError(f"{obj.name} has no faces to texture")
        corner_loops = np.empty(3 * n_tris, np.int32)
        mesh.loop_triangles.foreach_get("loops", corner_loops)
        corner_verts = np.empty(3 * n_tris, np.int32)
        mesh.loop_triangles.foreach_get("vertices", corner_verts)
        co = np.empty(3 * n_verts, np.float32)
        mesh.vertices.foreach_get("co", co)
        co = co.reshape(-1, 3)
        layer = mesh.uv_layers.active
        uv_map = layer.name if layer is not None else None
        same_loops = len(mesh.loops) == len(obj.data.loops) and len(mesh.polygons) == len(obj.data.polygons)
        if layer is None and not same_loops:
            raise ValueError(f"{obj.name}'s modifiers change its topology and it has no UV map: add a UV map "
                             "(Unwrap) or apply the modifiers first, so the texture can be mapped back onto it")
        if layer is None:
            arrays = {"vertices": co, "faces": corner_verts.reshape(-1, 3)}
        else:
            loop_uv = np.empty(2 * len(mesh.loops), np.float32)
            layer.uv.foreach_get("vector", loop_uv)
            corner_uv = loop_uv.reshape(-1, 2)[corner_loops]
            # One vertex per distinct (vertex, u, v): the wire's UVs are per vertex. Exact float keys: corners of
            # one vertex on one side of a seam hold the same stored UV.
            keys = np.concatenate([corner_verts[:, None].astype(np.float64), corner_uv.astype(np.float64)], axis=1)
            unique, inverse = np.unique(keys, axis=0, return_inverse=True)
            verts = unique[:, 0].astype(np.int64)
            arrays = {"vertices": np.ascontiguousarray(co[verts]), "faces": inverse.reshape(-1, 3).astype(np.int32),
                      "uvs": unique[:, 1:].astype(np.float32)}
    finally:
        evaluated.to_mesh_clear()
    if len(arrays["vertices"]) > MAX_TEXTURE_VERTICES or len(arrays["faces"]) > MAX_TEXTURE_FACES:
        raise ValueError(f"{obj.name} has {len(arrays['vertices'])} vertices and {len(arrays['faces'])} triangles; "
                         f"a texture job takes at most {MAX_TEXTURE_VERTICES} and {MAX_TEXTURE_FACES}: decimate it")
    return arrays, TextureTarget(obj.name, uv_map, corner_loops, shape_digest(co[corner_verts]))


def refine_target(context: Any, obj: Any) -> TextureTarget | None:
    """Where a Refine of ``obj`` puts its result: None for a generated object (its meshes replace the object's),
    the object's TextureTarget for one Texture selected textured. Refused in words when its mesh no longer is
    the one the texture job holds (moved vertices, other topology): the refine's texture would not fit it."""
    if obj is None or obj.get(SHAPE_KEY) is None:
        return None
    _, target = mesh_to_send(context, obj)  # the same triangles and checks as the texturing itself
    if target.shape != obj[SHAPE_KEY]:
        raise ValueError(f"{obj.name}'s mesh changed since it was textured, and a refine keeps the geometry it was "
                         "textured with: texture it again (Texture selected)")
    return target


def apply_result(target: TextureTarget, arrays: dict[str, Any], name: str) -> Any:
    """Put a finished texture job's result on its object: the UV map (the sent one, or a new one filled per face
    corner), a packed image and a Principled BSDF material on every slot. Returns the object."""
    obj = bpy.data.objects.get(target.object_name)
    if obj is None or obj.type != "MESH":
        raise ValueError(f"the object {target.object_name!r} that was sent for texturing is gone")
    mesh = obj.data
    faces = np.asarray(arrays["faces"], np.int64)
    if len(faces) * 3 != len(target.corner_loops):
        raise ValueError(f"the result has {len(faces)} triangles, the mesh sent {len(target.corner_loops) // 3}")
    uv_map = target.uv_map
    if uv_map is None or mesh.uv_layers.get(uv_map) is None:
        if target.corner_loops.max(initial=-1) >= len(mesh.loops):
            raise ValueError(f"{obj.name}'s mesh changed since it was sent; texture it again")
        corner_uv = np.asarray(arrays["uvs"], np.float32)[faces].reshape(-1, 2)
        loop_uv = np.zeros((len(mesh.loops), 2), np.float32)
        loop_uv[target.corner_loops] = corner_uv
        layer = mesh.uv_layers.get(NEW_UV_MAP) or mesh.uv_layers.new(name=NEW_UV_MAP)
        layer.uv.foreach_set("vector", loop_uv.ravel())
        uv_map = layer.name
        mesh.uv_layers.active = layer
    image = scene_mesh.texture_image(f"{name} texture", arrays["texture"])
    material = scene_mesh.textured_material(f"{name} texture", image)
    _use_uv_map(material, uv_map)
    if len(mesh.materials):
        for i in range(len(mesh.materials)):  # every slot: the faces keep their material indices
            mesh.materials[i] = material
    else:
        mesh.materials.append(material)
    mesh.update()
    obj[SHAPE_KEY] = target.shape  # what a later Refine checks the mesh against
    return obj


def _use_uv_map(material: Any, uv_map: str) -> None:
    """Name the UV map the image is read through, rather than rely on which map is active for rendering."""
    nodes, links = material.node_tree.nodes, material.node_tree.links
    tex = nodes[scene_mesh.TEXTURE_NODE]
    node = nodes.get(UV_NODE) or nodes.new("ShaderNodeUVMap")
    node.name = UV_NODE
    node.uv_map = uv_map
    node.location = (tex.location.x - 250, tex.location.y)
    links.new(node.outputs["UV"], tex.inputs["Vector"])


__all__ = ["NEW_UV_MAP", "SHAPE_KEY", "TextureTarget", "apply_result", "mesh_to_send", "refine_target",
           "shape_digest"]

"""Mesh arrays -> a Blender object: geometry, UVs and vertex colours through foreach_set, a Principled BSDF
material whose Base Color is the baked texture, packed into the .blend so saving never loses it.

Array conventions are the backend's (backend/export/uv.py): world +Z up (as Blender), UVs per vertex with v up,
texture row 0 = the image's top. Intermediate meshes of a running job replace the same object's mesh data in
place, so the object keeps its name, transform, selection and material while it streams.
Main thread only: every function here touches bpy.data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import bpy
import numpy as np

TEXTURE_NODE = "TBSD Texture"


@dataclass
class MeshArrays:
    vertices: np.ndarray  # float32 [N, 3], world +Z up
    faces: np.ndarray  # int32 [F, 3], triangles
    uvs: np.ndarray | None = None  # float32 [N, 2] per vertex, or [F * 3, 2] per corner; v up
    colors: np.ndarray | None = None  # [N, 3|4] per vertex, float in [0, 1] or uint8
    texture: np.ndarray | None = None  # uint8 or float [H, W, 3|4], row 0 = top

    def check(self) -> None:
        v, f = np.asarray(self.vertices), np.asarray(self.faces)
        if v.ndim != 2 or v.shape[1] != 3:
            raise ValueError(f"vertices must be [N, 3], got {v.shape}")
        if f.ndim != 2 or f.shape[1] != 3:
            raise ValueError(f"faces must be triangles [F, 3], got {f.shape}")
        if f.size and (f.min() < 0 or f.max() >= len(v)):
            raise ValueError(f"face indices must lie in [0, {len(v)}), got [{f.min()}, {f.max()}]")
        if self.uvs is not None and len(self.uvs) not in (len(v), 3 * len(f)):
            raise ValueError(f"uvs must be per vertex ({len(v)}) or per corner ({3 * len(f)}), got {len(self.uvs)}")
        if self.colors is not None and len(self.colors) != len(v):
            raise ValueError(f"colors must be per vertex ({len(v)}), got {len(self.colors)}")


def _as_unit_float(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)


def fill_mesh(mesh: Any, arrays: MeshArrays) -> None:
    """Replace ``mesh``'s geometry with ``arrays`` (keeps the datablock, its name and its materials)."""
    arrays.check()
    vertices = np.ascontiguousarray(arrays.vertices, dtype=np.float32)
    faces = np.ascontiguousarray(arrays.faces, dtype=np.int32)
    n_v, n_f = len(vertices), len(faces)
    mesh.clear_geometry()
    mesh.vertices.add(n_v)
    mesh.vertices.foreach_set("co", vertices.ravel())
    mesh.loops.add(3 * n_f)
    mesh.loops.foreach_set("vertex_index", faces.ravel())
    mesh.polygons.add(n_f)
    # Polygon sizes follow from the start offsets (every polygon a triangle).
    mesh.polygons.foreach_set("loop_start", np.arange(0, 3 * n_f, 3, dtype=np.int32))
    if arrays.uvs is not None:
        uvs = np.asarray(arrays.uvs, dtype=np.float32)
        corner = uvs[faces.ravel()] if len(uvs) == n_v and n_v != 3 * n_f else uvs
        layer = mesh.uv_layers.new(name="UVMap")
        layer.uv.foreach_set("vector", np.ascontiguousarray(corner, dtype=np.float32).ravel())
    if arrays.colors is not None:
        colors = _as_unit_float(arrays.colors)
        if colors.shape[1] == 3:
            colors = np.concatenate([colors, np.ones((n_v, 1), np.float32)], axis=1)
        attr = mesh.color_attributes.new(name="Color", type="FLOAT_COLOR", domain="POINT")
        # The backend's colours are sRGB albedo, like the texture.
        attr.data.foreach_set("color_srgb", np.ascontiguousarray(colors).ravel())
        mesh.color_attributes.active_color = attr
    mesh.update(calc_edges=True)
    mesh.validate(clean_customdata=False)


def texture_image(name: str, texture: np.ndarray, image: Any = None) -> Any:
    """A packed sRGB image holding ``texture`` (reuses ``image`` when it has the same size)."""
    tex = _as_unit_float(texture)
    if tex.ndim != 3 or tex.shape[2] not in (3, 4):
        raise ValueError(f"texture must be [H, W, 3|4], got {tex.shape}")
    h, w = tex.shape[:2]
    if tex.shape[2] == 3:
        tex = np.concatenate([tex, np.ones((h, w, 1), np.float32)], axis=2)
    if image is None or tuple(image.size) != (w, h):
        if image is not None:
            bpy.data.images.remove(image)
        image = bpy.data.images.new(name, width=w, height=h, alpha=True)
    image.colorspace_settings.name = "sRGB"
    # Blender's pixel rows run bottom to top.
    image.pixels.foreach_set(np.ascontiguousarray(tex[::-1]).ravel())
    image.update()
    # Packing a generated image stores it as PNG inside the .blend: nothing to lose on save or on moving the file.
    image.pack()
    return image


def textured_material(name: str, image: Any, material: Any = None) -> Any:
    """A Principled BSDF material with ``image`` on Base Color (reused and re-pointed when given)."""
    if material is None:
        material = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):
        # Before 5.0 a new material has no node tree until asked; from 5.0 every material has one and
        # Material.use_nodes is deprecated (removed in 6.0), so touching it there only warns.
        material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is None:
        bsdf = nodes.new("ShaderNodeBsdfPrincipled")
        out = next((n for n in nodes if n.type == "OUTPUT_MATERIAL"), None) or nodes.new("ShaderNodeOutputMaterial")
        links.new(bsdf.outputs["BSDF"], out.inputs["Surface"])
    tex = nodes.get(TEXTURE_NODE)
    if tex is None:
        tex = nodes.new("ShaderNodeTexImage")
        tex.name = TEXTURE_NODE
        tex.location = (bsdf.location.x - 350, bsdf.location.y)
    tex.image = image
    links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.8
    return material


def object_name(prompt: str) -> str:
    """Blender names are at most 63 bytes; a long prompt is cut at a word."""
    name = " ".join(prompt.split()) or "TBSD object"
    while len(name.encode("utf-8")) > 60:
        name = name.rsplit(" ", 1)[0] if " " in name else name[:-1]
    return name


def ensure_object(context: Any, name: str, existing: Any = None) -> Any:
    """``existing`` when it is still a mesh object in the file; else a new empty mesh object at the 3D cursor."""
    if existing is not None and existing.name in bpy.data.objects and existing.type == "MESH":
        return existing
    mesh = bpy.data.meshes.new(name)
    obj = bpy.data.objects.new(name, mesh)
    obj.location = context.scene.cursor.location
    context.collection.objects.link(obj)
    return obj


def update_object(obj: Any, arrays: MeshArrays, name: str) -> Any:
    """Put ``arrays`` into ``obj``'s mesh in place; texture into its material (created on first use)."""
    fill_mesh(obj.data, arrays)
    if arrays.texture is not None:
        material = obj.data.materials[0] if len(obj.data.materials) else None
        old_image = None
        if material is not None and material.node_tree and material.node_tree.nodes.get(TEXTURE_NODE):
            old_image = material.node_tree.nodes[TEXTURE_NODE].image
        image = texture_image(f"{name} texture", arrays.texture, old_image)
        material = textured_material(name, image, material)
        if not len(obj.data.materials):
            obj.data.materials.append(material)
    return obj


def select_only(context: Any, obj: Any) -> None:
    for other in context.view_layer.objects:
        other.select_set(False)
    obj.select_set(True)
    context.view_layer.objects.active = obj

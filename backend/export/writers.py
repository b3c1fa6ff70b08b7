"""File writers: glTF 2.0 binary (.glb), Wavefront OBJ (+ .mtl + PNG) and binary PLY, and the table of export
formats (``WRITERS``).

Axes. The backend's world is +Z up (Blender's). glTF is +Y up by specification, so the GLB stores
(x, y, z)_glTF = (x, z, -y)_world, a proper rotation (-90 deg about X) that keeps winding and handedness;
Blender's glTF importer turns it back. OBJ has no axis convention, but Blender's OBJ importer assumes forward -Z,
up Y by default, so OBJ is written in the same Y-up axes as glTF and imports upright with default settings.
PLY is written in world axes (+Z up): Blender's PLY importer defaults to up Z, forward Y, i.e. no conversion.

Textures: float [0, 1] or uint8 arrays [S, S, 3], row 0 = the image's top; UVs have v up (see uv.py). glTF's UV
origin is the image's top-left, so the GLB stores v' = 1 - v; OBJ's ``vt`` uses v up as is.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from backend.export.mesh import Mesh, vertex_normals

GENERATOR = "tbsd-studio backend.export"

# Rows give glTF's x, y, z in world coordinates: (x, z, -y).
GLTF_FROM_WORLD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], dtype=np.float32)

# glTF enums.
_FLOAT, _UNSIGNED_INT = 5126, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_LINEAR, _LINEAR_MIPMAP_LINEAR, _CLAMP_TO_EDGE = 9729, 9987, 33071
_TRIANGLES = 4
_GLB_MAGIC, _CHUNK_JSON, _CHUNK_BIN = 0x46546C67, 0x4E4F534A, 0x004E4942


def world_to_yup(points: np.ndarray) -> np.ndarray:
    """World (+Z up) points or directions [N, 3] in glTF/OBJ axes (+Y up)."""
    return (np.asarray(points, dtype=np.float32) @ GLTF_FROM_WORLD.T).astype(np.float32)


def texture_to_uint8(texture: np.ndarray) -> np.ndarray:
    """An 8-bit RGB image from a float [0, 1] or uint8 texture [S, S, 3]."""
    tex = np.asarray(texture)
    if tex.ndim != 3 or tex.shape[2] not in (3, 4):
        raise ValueError(f"texture must be [H, W, 3], got {tex.shape}")
    if tex.dtype != np.uint8:
        tex = np.round(np.clip(tex.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(tex[..., :3])


def png_bytes(texture: np.ndarray) -> bytes:
    """The texture encoded as PNG."""
    buf = io.BytesIO()
    Image.fromarray(texture_to_uint8(texture), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def _check_per_vertex(mesh: Mesh, name: str, array: np.ndarray | None, width: int) -> np.ndarray | None:
    if array is None:
        return None
    array = np.asarray(array)
    if array.shape != (mesh.n_vertices, width):
        raise ValueError(f"{name} must be [{mesh.n_vertices}, {width}], got {array.shape}")
    return array


def _colours_float(colours: np.ndarray) -> np.ndarray:
    if colours.dtype == np.uint8:
        return colours.astype(np.float32) / 255.0
    return np.clip(colours.astype(np.float32), 0.0, 1.0)


def _colours_uint8(colours: np.ndarray) -> np.ndarray:
    return texture_to_uint8(_colours_float(colours)[None])[0]


class _GlbBuilder:
    """Accumulates bufferViews and accessors in one binary buffer, each view 4-byte aligned."""

    def __init__(self) -> None:
        self.blob = bytearray()
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def view(self, data: bytes, target: int | None = None) -> int:
        self.blob.extend(b"\x00" * (-len(self.blob) % 4))
        view = {"buffer": 0, "byteOffset": len(self.blob), "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        self.blob.extend(data)
        self.views.append(view)
        return len(self.views) - 1

    def accessor(self, array: np.ndarray, kind: str, target: int) -> int:
        if array.dtype == np.float32:
            component = _FLOAT
        elif array.dtype == np.uint32:
            component = _UNSIGNED_INT
        else:
            raise TypeError(f"unsupported dtype {array.dtype}")
        array = np.ascontiguousarray(array)
        flat = array.reshape(len(array), -1)
        accessor = {
            "bufferView": self.view(array.astype(array.dtype.newbyteorder("<")).tobytes(), target),
            "componentType": component,
            "count": int(flat.shape[0]),
            "type": kind,
            # min/max from the very values stored (a float32 is exact as a JSON double), as validators compare.
            "min": [v.item() for v in flat.min(axis=0)],
            "max": [v.item() for v in flat.max(axis=0)],
        }
        self.accessors.append(accessor)
        return len(self.accessors) - 1


def write_glb(
    path: str | Path,
    mesh: Mesh,
    uvs: np.ndarray | None = None,
    texture: np.ndarray | None = None,
    vertex_colors: np.ndarray | None = None,
    name: str = "mesh",
    generator: str = GENERATOR,
) -> Path:
    """Write a glTF 2.0 binary: one mesh, smooth normals, a PBR material (metallic 0, roughness 1).

    ``texture`` (needs ``uvs``) becomes the embedded PNG base-colour texture. ``vertex_colors`` [V, 3] become
    COLOR_0; note that glTF multiplies COLOR_0 into the base colour, so pass both only when that is intended.
    """
    if mesh.n_faces == 0:
        raise ValueError("cannot write a mesh with no faces")
    uvs = _check_per_vertex(mesh, "uvs", uvs, 2)
    vertex_colors = _check_per_vertex(mesh, "vertex_colors", vertex_colors, 3)
    if texture is not None and uvs is None:
        raise ValueError("a texture needs uvs")

    b = _GlbBuilder()
    attributes = {
        "POSITION": b.accessor(world_to_yup(mesh.vertices), "VEC3", _ARRAY_BUFFER),
        "NORMAL": b.accessor(world_to_yup(vertex_normals(mesh)), "VEC3", _ARRAY_BUFFER),
    }
    if uvs is not None:
        gl_uv = np.stack([uvs[:, 0], 1.0 - uvs[:, 1]], axis=1).astype(np.float32)
        attributes["TEXCOORD_0"] = b.accessor(gl_uv, "VEC2", _ARRAY_BUFFER)
    if vertex_colors is not None:
        attributes["COLOR_0"] = b.accessor(_colours_float(vertex_colors), "VEC3", _ARRAY_BUFFER)
    indices = b.accessor(mesh.faces.reshape(-1).astype(np.uint32), "SCALAR", _ELEMENT_ARRAY_BUFFER)

    pbr: dict = {"baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0, "roughnessFactor": 1.0}
    doc: dict = {
        "asset": {"version": "2.0", "generator": generator},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": name}],
        "meshes": [
            {
                "name": name,
                "primitives": [{"attributes": attributes, "indices": indices, "material": 0, "mode": _TRIANGLES}],
            }
        ],
        "materials": [{"name": f"{name}_material", "pbrMetallicRoughness": pbr}],
    }
    if texture is not None:
        image_view = b.view(png_bytes(texture))
        doc["images"] = [{"bufferView": image_view, "mimeType": "image/png", "name": f"{name}_albedo"}]
        # Clamp: an atlas does not tile, and repeating would pull the opposite border into edge texels.
        doc["samplers"] = [
            {"magFilter": _LINEAR, "minFilter": _LINEAR_MIPMAP_LINEAR, "wrapS": _CLAMP_TO_EDGE, "wrapT": _CLAMP_TO_EDGE}
        ]
        doc["textures"] = [{"sampler": 0, "source": 0}]
        pbr["baseColorTexture"] = {"index": 0, "texCoord": 0}
    b.blob.extend(b"\x00" * (-len(b.blob) % 4))
    doc["buffers"] = [{"byteLength": len(b.blob)}]
    doc["bufferViews"] = b.views
    doc["accessors"] = b.accessors

    json_bytes = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    json_bytes += b" " * (-len(json_bytes) % 4)  # the JSON chunk is padded with spaces, the BIN chunk with zeros
    total = 12 + 8 + len(json_bytes) + 8 + len(b.blob)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<III", _GLB_MAGIC, 2, total))
        f.write(struct.pack("<II", len(json_bytes), _CHUNK_JSON))
        f.write(json_bytes)
        f.write(struct.pack("<II", len(b.blob), _CHUNK_BIN))
        f.write(bytes(b.blob))
    return path


def write_obj(
    path: str | Path,
    mesh: Mesh,
    uvs: np.ndarray | None = None,
    texture: np.ndarray | None = None,
    vertex_colors: np.ndarray | None = None,
    material_name: str = "albedo",
) -> dict[str, Path]:
    """Write ``path`` (.obj, +Y up), its .mtl and, with a texture, ``<stem>_albedo.png`` beside it.

    The material is diffuse white times the texture, non-metallic and fully rough (``Pr``/``Pm``, which
    Blender reads). ``vertex_colors`` use the common ``v x y z r g b`` extension. Returns the written paths.
    """
    uvs = _check_per_vertex(mesh, "uvs", uvs, 2)
    vertex_colors = _check_per_vertex(mesh, "vertex_colors", vertex_colors, 3)
    if texture is not None and uvs is None:
        raise ValueError("a texture needs uvs")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mtl_path = path.with_suffix(".mtl")
    written = {"obj": path, "mtl": mtl_path}

    mtl = [f"# {GENERATOR}", f"newmtl {material_name}", "Ka 0 0 0", "Kd 1 1 1", "Ks 0 0 0", "Ns 0", "d 1",
           "illum 1", "Pr 1", "Pm 0"]
    if texture is not None:
        png_path = path.with_name(f"{path.stem}_albedo.png")
        png_path.write_bytes(png_bytes(texture))
        mtl.append(f"map_Kd {png_path.name}")
        written["texture"] = png_path
    mtl_path.write_text("\n".join(mtl) + "\n")

    positions = world_to_yup(mesh.vertices)
    normals = world_to_yup(vertex_normals(mesh))
    buf = io.StringIO()
    buf.write(f"# {GENERATOR}\n# axes: +Y up, -Z forward (Blender's OBJ import defaults)\n")
    buf.write(f"mtllib {mtl_path.name}\no {path.stem}\n")
    if vertex_colors is not None:
        np.savetxt(buf, np.hstack([positions, _colours_float(vertex_colors)]), fmt="v %.6f %.6f %.6f %.4f %.4f %.4f")
    else:
        np.savetxt(buf, positions, fmt="v %.6f %.6f %.6f")
    if uvs is not None:
        np.savetxt(buf, uvs, fmt="vt %.6f %.6f")
    np.savetxt(buf, normals, fmt="vn %.6f %.6f %.6f")
    buf.write(f"usemtl {material_name}\n")
    idx = mesh.faces.astype(np.int64) + 1  # OBJ indices are 1-based
    if uvs is not None:
        np.savetxt(buf, np.repeat(idx, 3, axis=1), fmt="f %d/%d/%d %d/%d/%d %d/%d/%d")
    else:
        np.savetxt(buf, np.repeat(idx, 2, axis=1), fmt="f %d//%d %d//%d %d//%d")
    path.write_text(buf.getvalue())
    return written


def write_ply(path: str | Path, mesh: Mesh, vertex_colors: np.ndarray | None = None) -> Path:
    """Write a binary little-endian PLY in world axes (+Z up), with 8-bit vertex colours when given."""
    vertex_colors = _check_per_vertex(mesh, "vertex_colors", vertex_colors, 3)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if vertex_colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertex = np.empty(mesh.n_vertices, dtype=fields)
    for i, axis in enumerate("xyz"):
        vertex[axis] = mesh.vertices[:, i]
    if vertex_colors is not None:
        rgb = _colours_uint8(vertex_colors)
        for i, channel in enumerate(("red", "green", "blue")):
            vertex[channel] = rgb[:, i]
    face = np.empty(mesh.n_faces, dtype=[("n", "u1"), ("idx", "<i4", (3,))])
    face["n"] = 3
    face["idx"] = mesh.faces

    header = ["ply", "format binary_little_endian 1.0", f"comment {GENERATOR}, +Z up",
              f"element vertex {mesh.n_vertices}"]
    header += [f"property float {axis}" for axis in "xyz"]
    if vertex_colors is not None:
        header += [f"property uchar {channel}" for channel in ("red", "green", "blue")]
    header += [f"element face {mesh.n_faces}", "property list uchar int vertex_indices", "end_header"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(vertex.tobytes())
        f.write(face.tobytes())
    return path


@dataclass(frozen=True)
class Surface:
    """What a writer is given: the mesh with per-vertex colours, or the UV-unwrapped mesh (its seams split) with
    its UVs and baked texture, as the writer's ``textured`` asks."""

    mesh: Mesh
    uvs: np.ndarray | None = None
    texture: np.ndarray | None = None
    vertex_colours: np.ndarray | None = None


@dataclass(frozen=True)
class Writer:
    """One export format: whether it carries the baked texture (else per-vertex colours), and how it is written
    as ``folder/<stem>.<ext>`` (and any side files); returns the written paths by key (the job record's files)."""

    textured: bool
    write: Callable[[Path, str, Surface], dict[str, Path]]


# The export formats by name, in the order their files are written. Adding one: its writer (here or in a module of
# its own) and an entry here; ``formats`` arguments and FORMATS follow.
WRITERS: dict[str, Writer] = {
    "glb": Writer(True, lambda folder, stem, s: {"glb": write_glb(folder / f"{stem}.glb", s.mesh, s.uvs, s.texture,
                                                                  name=stem)}),
    "obj": Writer(True, lambda folder, stem, s: write_obj(folder / f"{stem}.obj", s.mesh, s.uvs, s.texture)),
    "ply": Writer(False, lambda folder, stem, s: {"ply": write_ply(folder / f"{stem}.ply", s.mesh,
                                                                   s.vertex_colours)}),
}


__all__ = [
    "GENERATOR",
    "GLTF_FROM_WORLD",
    "WRITERS",
    "Surface",
    "Writer",
    "png_bytes",
    "texture_to_uint8",
    "world_to_yup",
    "write_glb",
    "write_obj",
    "write_ply",
]

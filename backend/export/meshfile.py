"""Mesh arrays for the wire: made from the arrays the GLB writer was given (``mesh_arrays``, what a finished or
intermediate mesh sends) or read back from a GLB on disk (``read_glb``, what ``fetch`` and the batch report read).

Both give the same arrays for the same mesh: ``mesh_arrays`` applies the very conversions the writer and the
reader apply (the glTF frame and UV flip, the texture's 8-bit quantisation), so the client gets exactly what is
on disk without the server writing a GLB and parsing it back (tests/test_export.py holds them equal).
The GLB is +Y up with glTF's top-left UV origin (backend/export/writers.py); the wire uses Blender's frame:
+Z up and v up (origin bottom-left).
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from backend.export.mesh import Mesh
from backend.export.writers import texture_to_uint8, world_to_yup

_MAGIC, _JSON, _BIN = 0x46546C67, 0x4E4F534A, 0x004E4942
_COMPONENTS = {5126: np.float32, 5125: np.uint32, 5123: np.uint16, 5121: np.uint8}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}
# World (Blender, +Z up) from glTF (+Y up): the inverse of writers.GLTF_FROM_WORLD, (x, y, z) = (x, -z, y).
WORLD_FROM_GLTF = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=np.float32)


def _world_from_gltf(points: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((points @ WORLD_FROM_GLTF.T).astype(np.float32))


def _uv_from_gltf(gl_uv: np.ndarray) -> np.ndarray:
    return np.stack([gl_uv[:, 0], 1.0 - gl_uv[:, 1]], axis=1).astype(np.float32)


def mesh_arrays(mesh: Mesh, uvs: np.ndarray, texture: np.ndarray) -> dict[str, np.ndarray]:
    """The wire arrays of the textured mesh ``write_glb(path, mesh, uvs, texture)`` writes, without the file:
    the same keys and values ``read_glb`` returns for it."""
    # Through the stored form and back, as a reader of the file gets it (float32 rounding of 1 - (1 - v)).
    gl_uv = np.stack([uvs[:, 0], 1.0 - uvs[:, 1]], axis=1).astype(np.float32)
    out = {"vertices": _world_from_gltf(world_to_yup(mesh.vertices)),
           "faces": np.ascontiguousarray(mesh.faces.astype(np.uint32).astype(np.int32)),
           "uvs": _uv_from_gltf(gl_uv), "texture": texture_to_uint8(texture)}
    out["colours"] = sample_texture(out["texture"], out["uvs"])
    return out


def read_glb(path: Path) -> dict[str, np.ndarray]:
    """vertices float32 [V, 3] (+Z up), faces int32 [F, 3], uvs float32 [V, 2] per vertex (v up),
    colours uint8 [V, 3] (the texture sampled at each vertex's UV), texture uint8 [H, W, 3] (row 0 = top)."""
    data = Path(path).read_bytes()
    magic, version, total = struct.unpack_from("<III", data, 0)
    if magic != _MAGIC or version != 2:
        raise ValueError(f"{path} is not a glTF 2.0 binary")
    json_len, kind = struct.unpack_from("<II", data, 12)
    if kind != _JSON:
        raise ValueError(f"{path}: first chunk is not JSON")
    doc = json.loads(data[20:20 + json_len])
    bin_start = 20 + json_len + 8
    blob = memoryview(data)[bin_start:]

    def view_bytes(index: int) -> memoryview:
        view = doc["bufferViews"][index]
        offset = view.get("byteOffset", 0)
        return blob[offset:offset + view["byteLength"]]

    def accessor(index: int) -> np.ndarray:
        acc = doc["accessors"][index]
        dtype = np.dtype(_COMPONENTS[acc["componentType"]]).newbyteorder("<")
        width = _WIDTH[acc["type"]]
        raw = view_bytes(acc["bufferView"])
        return np.frombuffer(raw, dtype=dtype, count=acc["count"] * width).reshape(acc["count"], width)

    prim = doc["meshes"][0]["primitives"][0]
    faces = accessor(prim["indices"]).reshape(-1, 3).astype(np.int32)
    out = {"vertices": _world_from_gltf(accessor(prim["attributes"]["POSITION"])),
           "faces": np.ascontiguousarray(faces)}
    if "TEXCOORD_0" in prim["attributes"]:
        out["uvs"] = _uv_from_gltf(accessor(prim["attributes"]["TEXCOORD_0"]))
    if doc.get("images"):
        png = bytes(view_bytes(doc["images"][0]["bufferView"]))
        texture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.uint8)
        out["texture"] = np.ascontiguousarray(texture)
        if "uvs" in out:
            out["colours"] = sample_texture(texture, out["uvs"])
    return out


def sample_texture(texture: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """Nearest texel at each UV (v up, so row = (1 - v) * H)."""
    h, w = texture.shape[:2]
    cols = np.clip((uvs[:, 0] * w).astype(np.int64), 0, w - 1)
    rows = np.clip(((1.0 - uvs[:, 1]) * h).astype(np.int64), 0, h - 1)
    return np.ascontiguousarray(texture[rows, cols, :3])


__all__ = ["WORLD_FROM_GLTF", "mesh_arrays", "read_glb", "sample_texture"]

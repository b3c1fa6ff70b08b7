"""Reading a user's mesh to texture: GLB (through ``meshfile.read_glb``), OBJ and PLY, into world axes (+Z up).

Minimal on purpose: positions, triangles and per-vertex UVs when the file has them; everything else (normals,
materials, colours) is ignored, since texturing replaces the appearance. Axes follow what the writers write
(writers.py): GLB and OBJ are +Y up (OBJ as Blender exports it by default), PLY is +Z up, so a mesh this product
wrote reads back in its own coordinates.

A bad mesh is refused with a ``MeshFileError`` naming the file and what is wrong (no faces, a face that is not a
triangle, an index out of range, a non-finite coordinate, more faces than ``MAX_FACES``), before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.export.mesh import Mesh
from backend.export.meshfile import read_glb
from shared.texture_mesh import MAX_TEXTURE_FACES

# A texture job rasterises every face for each training camera; beyond this a CPU run takes hours and a GPU run
# wastes its time on faces smaller than a texel. Decimate first (Blender: Decimate modifier).
MAX_FACES = MAX_TEXTURE_FACES  # the wire's limit too (shared/texture_mesh.py)
FORMATS = (".glb", ".obj", ".ply")
# World (+Z up) from +Y up: (x, y, z)_world = (x, -z, y)_yup, the inverse of writers.GLTF_FROM_WORLD.
_WORLD_FROM_YUP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


class MeshFileError(ValueError):
    """A mesh file that cannot be textured, with the file's name and the reason."""


@dataclass(frozen=True)
class InputMesh:
    """A mesh as read: ``uvs`` per vertex (v up, uv.py's convention) when the file has them."""

    mesh: Mesh
    uvs: np.ndarray | None


def read_mesh(path: str | Path, max_faces: int = MAX_FACES) -> InputMesh:
    """The triangle mesh in ``path`` (.glb, .obj or .ply) in world axes, or MeshFileError saying why not."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise MeshFileError(f"{path.name}: unknown mesh format '{suffix}'; texture reads {', '.join(FORMATS)}")
    if not path.is_file():
        raise MeshFileError(f"{path}: no such file")
    try:
        if suffix == ".glb":
            vertices, faces, uvs = _glb(path)
        elif suffix == ".obj":
            vertices, faces, uvs = _obj(path)
        else:
            vertices, faces, uvs = _ply(path)
    except MeshFileError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError, OSError) as exc:
        raise MeshFileError(f"{path.name}: cannot be read as {suffix[1:].upper()}: {type(exc).__name__}: {exc}") \
            from None
    return _checked(path.name, vertices, faces, uvs, max_faces)


def _checked(name: str, vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray | None,
             max_faces: int) -> InputMesh:
    if len(faces) == 0:
        raise MeshFileError(f"{name}: the mesh has no faces (a point cloud or an empty file cannot be textured)")
    if len(faces) > max_faces:
        raise MeshFileError(f"{name}: {len(faces)} faces, more than the {max_faces} a texture job takes; "
                            "decimate it first (Blender: Decimate modifier)")
    if not np.isfinite(vertices).all():
        bad = int((~np.isfinite(vertices)).any(axis=1).sum())
        raise MeshFileError(f"{name}: {bad} vertices have non-finite coordinates (NaN or infinity)")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise MeshFileError(f"{name}: faces index vertices outside 0..{len(vertices) - 1}")
    if uvs is not None and (uvs.shape != (len(vertices), 2) or not np.isfinite(uvs).all()):
        uvs = None  # unusable UVs: the exporter unwraps new ones, as for a mesh without any
    return InputMesh(Mesh(vertices.astype(np.float32), faces.astype(np.int64)), uvs)


def _glb(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    arrays = read_glb(path)  # already world axes, v up
    return arrays["vertices"], arrays["faces"].astype(np.int64), arrays.get("uvs")


def _obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``v``, ``vt`` and triangular ``f`` lines (``v``, ``v/vt``, ``v/vt/vn``, ``v//vn``; negative indices count
    from the end). A vertex used with several UVs (a seam) is split so that UVs are per vertex."""
    positions: list[list[float]] = []
    texcoords: list[list[float]] = []
    corners: list[tuple[int, int]] = []  # (position index, uv index or -1), three per face
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            positions.append([float(x) for x in parts[1:4]])
        elif parts[0] == "vt":
            texcoords.append([float(x) for x in parts[1:3]])
        elif parts[0] == "f":
            if len(parts) != 4:
                raise MeshFileError(f"{path.name}: line {number}: a face with {len(parts) - 1} corners; texture "
                                    "takes triangles only (Blender: Triangulate Faces, Ctrl+T, before export)")
            for corner in parts[1:]:
                fields = corner.split("/")
                v = int(fields[0])
                t = int(fields[1]) if len(fields) > 1 and fields[1] else 0
                v = v - 1 if v > 0 else len(positions) + v
                t = t - 1 if t > 0 else (len(texcoords) + t if t < 0 else -1)
                corners.append((v, t))
    vertices = np.asarray(positions, dtype=np.float64).reshape(-1, 3) @ _WORLD_FROM_YUP.T
    pairs = np.asarray(corners, dtype=np.int64).reshape(-1, 2)
    if len(pairs) == 0:
        return vertices, np.zeros((0, 3), np.int64), None
    if (pairs[:, 1] < 0).any() or not texcoords:
        return vertices, pairs[:, 0].reshape(-1, 3), None
    uv_table = np.asarray(texcoords, dtype=np.float64).reshape(-1, 2)
    if pairs[:, 1].max() >= len(uv_table) or pairs[:, 1].min() < 0:
        raise MeshFileError(f"{path.name}: faces index texture coordinates outside 1..{len(uv_table)}")
    if pairs[:, 0].max() >= len(vertices) or pairs[:, 0].min() < 0:
        raise MeshFileError(f"{path.name}: faces index vertices outside 1..{len(vertices)}")
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    if len(unique) == len(vertices) and (unique[:, 0] == np.arange(len(vertices))).all():
        # One UV per vertex already (every file this product writes): keep the file's vertex order.
        return vertices, pairs[:, 0].reshape(-1, 3), uv_table[unique[:, 1]]
    return vertices[unique[:, 0]], inverse.reshape(-1, 3), uv_table[unique[:, 1]]


_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def _ply(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """ASCII or binary PLY with a ``vertex`` element (x, y, z; s, t or u, v when present) and a ``face`` element
    whose only list is ``vertex_indices`` (or ``vertex_index``) of triangles."""
    data = path.read_bytes()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise MeshFileError(f"{path.name}: not a PLY file (no 'ply' magic or no end_header)")
    header = data[:end].decode("ascii", errors="replace").splitlines()
    body_start = data.index(b"\n", end) + 1
    fmt = next((line.split()[1] for line in header if line.startswith("format")), "")
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise MeshFileError(f"{path.name}: unknown PLY format '{fmt}'")
    elements: list[tuple[str, int, list[list[str]]]] = []
    for line in header:
        parts = line.split()
        if parts and parts[0] == "element":
            elements.append((parts[1], int(parts[2]), []))
        elif parts and parts[0] == "property" and elements:
            elements[-1][2].append(parts[1:])
    order = "<" if fmt == "binary_little_endian" else ">"
    arrays: dict[str, dict[str, np.ndarray]] = {}
    if fmt == "ascii":
        tokens = data[body_start:].split()
        pos = 0
        for name, count, props in elements:
            if any(p[0] == "list" for p in props):
                if [p[0] for p in props] != ["list"]:
                    raise MeshFileError(f"{path.name}: element '{name}' mixes a list with other properties")
                rows = []
                for _ in range(count):
                    n = int(tokens[pos])
                    rows.append([int(x) for x in tokens[pos + 1 : pos + 1 + n]])
                    pos += 1 + n
                arrays[name] = {props[0][-1]: _triangles(path.name, rows)}
            else:
                width = len(props)
                table = np.asarray(tokens[pos : pos + count * width], dtype=np.float64).reshape(count, width)
                pos += count * width
                arrays[name] = {p[-1]: table[:, i] for i, p in enumerate(props)}
    else:
        pos = body_start
        for name, count, props in elements:
            if any(p[0] == "list" for p in props):
                if [p[0] for p in props] != ["list"]:
                    raise MeshFileError(f"{path.name}: element '{name}' mixes a list with other properties")
                count_type, index_type = (np.dtype(order + _PLY_TYPES[t]) for t in props[0][1:3])
                # Triangles only: every row is then a count of 3 and three indices, a fixed-width record.
                record = np.dtype([("n", count_type), ("idx", index_type, (3,))])
                rows = np.frombuffer(data, dtype=record, count=count, offset=pos)
                if count and (rows["n"] != 3).any():
                    bad = int(rows["n"][rows["n"] != 3][0])
                    raise MeshFileError(f"{path.name}: a face with {bad} corners; texture takes triangles only "
                                        "(Blender: Triangulate Faces, Ctrl+T, before export)")
                arrays[name] = {props[0][-1]: rows["idx"].astype(np.int64)}
                pos += record.itemsize * count
            else:
                record = np.dtype([(p[-1], order + _PLY_TYPES[p[0]]) for p in props])
                table = np.frombuffer(data, dtype=record, count=count, offset=pos)
                arrays[name] = {p[-1]: table[p[-1]].astype(np.float64) for p in props}
                pos += record.itemsize * count
    vertex = arrays.get("vertex")
    if vertex is None or not {"x", "y", "z"} <= set(vertex):
        raise MeshFileError(f"{path.name}: no vertex element with x, y, z")
    vertices = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1)
    face = arrays.get("face", {})
    faces = face.get("vertex_indices", face.get("vertex_index", np.zeros((0, 3), np.int64)))
    uv_names = next((pair for pair in (("s", "t"), ("u", "v"), ("texture_u", "texture_v")) if set(pair) <= set(vertex)),
                    None)
    uvs = np.stack([vertex[uv_names[0]], vertex[uv_names[1]]], axis=1) if uv_names else None
    return vertices, np.asarray(faces, dtype=np.int64).reshape(-1, 3), uvs


def _triangles(name: str, rows: list[list[int]]) -> np.ndarray:
    bad = next((len(r) for r in rows if len(r) != 3), None)
    if bad is not None:
        raise MeshFileError(f"{name}: a face with {bad} corners; texture takes triangles only "
                            "(Blender: Triangulate Faces, Ctrl+T, before export)")
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


__all__ = ["FORMATS", "InputMesh", "MAX_FACES", "MeshFileError", "read_mesh"]

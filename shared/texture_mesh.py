"""The mesh a texture job's ``submit`` carries: its array names, dtypes, shapes and limits, and the check.

One definition for both ends: the server refuses a bad mesh at admission (backend/jobs/admission.py) with a
``bad_field`` error naming the array and what is allowed, and the add-on can say the same before sending. Imports
only the standard library and numpy, since Blender's Python imports it too.

Arrays (docs/PROTOCOL.md, Texture jobs): ``vertices`` float32 [V, 3] (+Z up, the object's own space), ``faces``
int32 or uint32 [F, 3] (triangles, counter-clockwise seen from outside), optional ``uvs`` float32 [V, 2] per
vertex (v up). With ``uvs`` the texture is baked into them and the result has exactly these vertices and faces;
without, the backend unwraps the mesh (xatlas), which splits vertices along its seams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from shared.protocol import ProtocolError

# The kinds of job a submit can ask for (its ``kind`` field; absent means "generate").
JOB_KINDS: tuple[str, ...] = ("generate", "texture")
TEXTURE_ARRAYS: tuple[str, ...] = ("vertices", "faces", "uvs")
# Why these: the whole message must fit MAX_SERVER_INBOUND_BYTES (16 MiB): 500k vertices with UVs (20 bytes each)
# and 500k faces (12 bytes each) are 16,000,000 bytes. A texture job rasterises every face for every training
# camera, so more faces cost time without showing: decimate first.
MAX_TEXTURE_VERTICES = 500_000
MAX_TEXTURE_FACES = 500_000
_DTYPES = {"vertices": ("float32",), "faces": ("int32", "uint32"), "uvs": ("float32",)}
_WIDTH = {"vertices": 3, "faces": 3, "uvs": 2}


@dataclass(frozen=True)
class TextureMesh:
    """A checked mesh: ``faces`` as int64, ``uvs`` None when none were sent."""

    vertices: Any  # numpy float32 [V, 3]
    faces: Any  # numpy int64 [F, 3]
    uvs: Any | None  # numpy float32 [V, 2]


def _bad(message: str, rid: Any) -> ProtocolError:
    return ProtocolError("bad_field", f"texture mesh: {message}", rid)


def check_texture_mesh(arrays: Mapping[str, Any], rid: Any = None) -> TextureMesh:
    """``arrays`` (decoded numpy arrays) as a TextureMesh, or ProtocolError ``bad_field`` naming the array, the
    problem and what is allowed. Checks names, dtypes, shapes, the limits, finiteness and face indices."""
    import numpy as np

    unknown = sorted(set(arrays) - set(TEXTURE_ARRAYS))
    if unknown:
        raise _bad(f"unknown array(s) {', '.join(unknown)}; allowed: {', '.join(TEXTURE_ARRAYS)}", rid)
    for name in ("vertices", "faces"):
        if name not in arrays:
            raise _bad(f"array '{name}' is missing; a texture job needs vertices float32 [V, 3] and faces "
                       "int32 [F, 3] (uvs float32 [V, 2] optional)", rid)
    out: dict[str, Any] = {}
    for name in TEXTURE_ARRAYS:
        if name not in arrays:
            continue
        a = np.asarray(arrays[name])
        allowed = _DTYPES[name]
        if a.dtype.name not in allowed:
            raise _bad(f"array '{name}' has dtype {a.dtype.name}; allowed: {' or '.join(allowed)}", rid)
        if a.ndim != 2 or a.shape[1] != _WIDTH[name]:
            raise _bad(f"array '{name}' has shape {list(a.shape)}; it must be [{'V' if name != 'faces' else 'F'}, "
                       f"{_WIDTH[name]}]", rid)
        out[name] = a
    vertices, faces, uvs = out["vertices"], out["faces"], out.get("uvs")
    if not 3 <= len(vertices) <= MAX_TEXTURE_VERTICES:
        raise _bad(f"array 'vertices' has {len(vertices)} vertices; allowed: 3 to {MAX_TEXTURE_VERTICES}"
                   + (" (decimate the mesh first)" if len(vertices) > MAX_TEXTURE_VERTICES else ""), rid)
    if not 1 <= len(faces) <= MAX_TEXTURE_FACES:
        raise _bad(f"array 'faces' has {len(faces)} faces; allowed: 1 to {MAX_TEXTURE_FACES}"
                   + (" (decimate the mesh first)" if len(faces) > MAX_TEXTURE_FACES else ""), rid)
    if uvs is not None and len(uvs) != len(vertices):
        raise _bad(f"array 'uvs' has {len(uvs)} rows; it must have one per vertex ({len(vertices)})", rid)
    for name, a in (("vertices", vertices), ("uvs", uvs)):
        if a is not None and not np.isfinite(a).all():
            bad = int((~np.isfinite(a)).any(axis=1).sum())
            raise _bad(f"array '{name}' has {bad} rows with NaN or infinity; every value must be finite", rid)
    wide = faces.astype(np.int64)
    low, high = int(wide.min()), int(wide.max())
    if low < 0 or high >= len(vertices):
        raise _bad(f"array 'faces' indexes vertices {low}..{high}; allowed: 0..{len(vertices) - 1}", rid)
    return TextureMesh(vertices.astype(np.float32), wide, None if uvs is None else uvs.astype(np.float32))


__all__ = ["JOB_KINDS", "MAX_TEXTURE_FACES", "MAX_TEXTURE_VERTICES", "TEXTURE_ARRAYS", "TextureMesh",
           "check_texture_mesh"]

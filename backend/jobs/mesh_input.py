"""The mesh a texture job's ``submit`` carried, kept in the job's folder so its worker (and a restarted server)
can build the job from disk: the JobSpec crosses processes as JSON and names only the file.

Written by the server before the job's record says ``queued`` (so a record never names a missing file), durably
(temporary name, fsync, rename: backend/files.py), as a binary little-endian PLY in the wire's axes (+Z up, which
PLY is read in: backend/export/meshread.py), float32 positions and UVs and int32 indices, so what the worker reads
back is bit for bit what was sent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backend.files import write_bytes
from shared.texture_mesh import TextureMesh

INPUT_MESH_FILE = "input_mesh.ply"


def ply_bytes(mesh: TextureMesh) -> bytes:
    """``mesh`` as a binary little-endian PLY: x y z (s t) float per vertex, a uchar 3 + int indices per face."""
    has_uvs = mesh.uvs is not None
    header = ["ply", "format binary_little_endian 1.0", "comment the mesh a texture job was sent",
              f"element vertex {len(mesh.vertices)}", "property float x", "property float y", "property float z"]
    if has_uvs:
        header += ["property float s", "property float t"]
    header += [f"element face {len(mesh.faces)}", "property list uchar int vertex_indices", "end_header"]
    columns = [np.asarray(mesh.vertices, "<f4")] + ([np.asarray(mesh.uvs, "<f4")] if has_uvs else [])
    vertex_rows = np.ascontiguousarray(np.concatenate(columns, axis=1), dtype="<f4")
    face_rows = np.zeros(len(mesh.faces), dtype=[("n", "u1"), ("idx", "<i4", (3,))])
    face_rows["n"] = 3
    face_rows["idx"] = mesh.faces
    return ("\n".join(header) + "\n").encode("ascii") + vertex_rows.tobytes() + face_rows.tobytes()


def save_input_mesh(folder: Path, mesh: TextureMesh) -> str:
    """Write ``mesh`` into ``folder`` (created if need be); the file's name, for ``JobSpec.input_mesh``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_bytes(folder / INPUT_MESH_FILE, ply_bytes(mesh))
    return INPUT_MESH_FILE


__all__ = ["INPUT_MESH_FILE", "ply_bytes", "save_input_mesh"]

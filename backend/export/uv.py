"""UV unwrapping with xatlas.

Why xatlas: it is a well-kept, widely used unwrapping library (Godot bakes lightmap UVs with it); its chart
segmentation, per-chart parameterisation and packing with padding are far better than anything we would write
here, and the Python binding ships wheels. We only choose its options.

Why these options: with xatlas's defaults (max_cost 2, one growing iteration) a marching-cubes mesh of 45k faces
took 10-30 s on 2 CPU cores, because a few huge charts make the per-chart solve superlinear. ``max_cost=0.5``
with no extra iteration gives a few dozen charts in about 3 s at similar packing utilisation (~0.7).

UV convention (used by texture.py and the writers): u to the right, v up, origin at the image's bottom-left, as
in OBJ and Blender; the texture array's row 0 is the image's top (v = 1). glTF flips v on writing.
"""

from __future__ import annotations

import numpy as np
import xatlas

from backend.export.mesh import Mesh


def unwrap_uvs(
    mesh: Mesh,
    texture_size: int = 1024,
    padding: int = 2,
    max_cost: float = 0.5,
    max_iterations: int = 0,
) -> tuple[Mesh, np.ndarray]:
    """(mesh with vertices duplicated along UV seams, per-vertex UVs float32 [V', 2] in [0, 1]).

    ``padding`` texels (at ``texture_size``) separate charts, so bilinear filtering and the seam dilation of
    the bake never mix two charts.
    """
    if mesh.n_faces == 0:
        raise ValueError("cannot unwrap a mesh with no faces")
    atlas = xatlas.Atlas()
    atlas.add_mesh(mesh.vertices.astype(np.float32), mesh.faces.astype(np.uint32))
    charts = xatlas.ChartOptions()
    charts.max_cost = float(max_cost)
    charts.max_iterations = int(max_iterations)
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding)
    pack.bilinear = True  # leave a texel between charts for bilinear lookups
    atlas.generate(charts, pack)
    vmapping, indices, uvs = atlas[0]
    out = Mesh(mesh.vertices[vmapping.astype(np.int64)], indices.astype(np.int64))
    return out, np.ascontiguousarray(uvs, dtype=np.float32)


__all__ = ["unwrap_uvs"]

"""UV unwrapping with xatlas.

Why xatlas: it is a well-kept, widely used unwrapping library (Godot bakes lightmap UVs with it); its chart
segmentation, per-chart parameterisation and packing with padding are far better than anything we would write
here, and the Python binding ships wheels. We only choose its options.

Why these options (measured on marching-cubes meshes of a sphere, a torus and a bumpy blob, 45k-190k faces, on
2 CPU cores): with xatlas's defaults (max_cost 2, one growing iteration, unbounded chart area) a 45k-face torus
took 10-30 s, because a few huge charts make the per-chart solve superlinear, and the result depended on the
mesh's scale (xatlas has absolute tolerances: the same sphere in world units, edges ~0.009, took 3x longer
than in voxel units). So the mesh is first scaled to a mean edge length of 1, and charts are bounded to 1/128
of the surface with ``max_cost=0.5`` and no extra growing iteration: 1.4-3.8 s at 45k-85k faces and 3-10 s at
100k-190k, with packing utilisation 0.55-0.8.

UV convention (used by texture.py and the writers): u to the right, v up, origin at the image's bottom-left, as
in OBJ and Blender; the texture array's row 0 is the image's top (v = 1). glTF flips v on writing.
"""

from __future__ import annotations

import numpy as np

from backend.export.mesh import Mesh


def unwrap_uvs(
    mesh: Mesh,
    texture_size: int = 1024,
    padding: int = 2,
    max_cost: float = 0.5,
    max_iterations: int = 0,
    max_chart_fraction: float = 1.0 / 128.0,
) -> tuple[Mesh, np.ndarray]:
    """(mesh with vertices duplicated along UV seams, per-vertex UVs float32 [V', 2] in [0, 1]).

    ``padding`` texels (at ``texture_size``) separate charts, so bilinear filtering and the seam dilation of
    the bake never mix two charts. ``max_chart_fraction`` bounds each chart's area as a fraction of the surface.
    """
    import xatlas  # at export only: a job's start does not need it

    if mesh.n_faces == 0:
        raise ValueError("cannot unwrap a mesh with no faces")
    v = mesh.vertices.astype(np.float64)
    tri = v[mesh.faces]
    mean_edge = float(np.linalg.norm(tri[:, 1] - tri[:, 0], axis=1).mean())
    if mean_edge <= 0.0:
        raise ValueError("cannot unwrap a mesh whose faces have no extent")
    v = (v - v.mean(axis=0)) / mean_edge  # UVs do not depend on scale; xatlas's tolerances do
    area = 0.5 * float(np.linalg.norm(np.cross((v[mesh.faces[:, 1]] - v[mesh.faces[:, 0]]),
                                               (v[mesh.faces[:, 2]] - v[mesh.faces[:, 0]])), axis=1).sum())
    atlas = xatlas.Atlas()
    atlas.add_mesh(v.astype(np.float32), mesh.faces.astype(np.uint32))
    charts = xatlas.ChartOptions()
    charts.max_chart_area = float(area * max_chart_fraction)
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

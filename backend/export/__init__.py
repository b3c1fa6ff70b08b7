"""Mesh extraction, UV unwrap, texture bake and export (GLB, OBJ, PLY) of a trained 3D representation.

One job per module: field.py samples the density and chooses the marching-cubes level from the renders,
mesh.py makes and cleans the triangle mesh, smooth.py flattens its lumps, uv.py unwraps it (xatlas), texture.py
bakes the albedo, writers.py writes the files, pipeline.py composes them (``extract_mesh`` then ``export_mesh``).
"""

from backend.export.field import (
    DEFAULT_BOUND,
    choose_level,
    density_grid,
    level_from_renders,
    ray_max_density,
    silhouette_iou,
)
from backend.export.mesh import (
    Mesh,
    decimate,
    face_normals,
    marching_cubes,
    remove_small_components,
    vertex_normals,
)
from backend.export.pipeline import FORMATS, export_mesh, extract_mesh
from backend.export.smooth import smooth_mesh
from backend.export.texture import UVRaster, bake_texture, dilate, rasterise_uv, vertex_colours
from backend.export.uv import unwrap_uvs
from backend.export.writers import write_glb, write_obj, write_ply, world_to_yup

__all__ = [
    "DEFAULT_BOUND",
    "FORMATS",
    "Mesh",
    "UVRaster",
    "bake_texture",
    "choose_level",
    "decimate",
    "density_grid",
    "dilate",
    "export_mesh",
    "extract_mesh",
    "face_normals",
    "level_from_renders",
    "marching_cubes",
    "rasterise_uv",
    "ray_max_density",
    "remove_small_components",
    "silhouette_iou",
    "smooth_mesh",
    "unwrap_uvs",
    "vertex_colours",
    "vertex_normals",
    "world_to_yup",
    "write_glb",
    "write_obj",
    "write_ply",
]

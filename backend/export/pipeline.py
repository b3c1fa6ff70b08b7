"""The two compositions the training loop calls: field -> clean mesh, and mesh -> textured files."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from backend.export.field import DEFAULT_BOUND, FieldFn, SurfaceFn, density_grid, fill_enclosed, level_from_renders
from backend.export.mesh import Mesh, decimate, marching_cubes, remove_small_components
from backend.export.meshfile import mesh_arrays
from backend.export.smooth import smooth_mesh
from backend.export.texture import bake_texture, rasterise_uv, vertex_colours
from backend.export.uv import unwrap_uvs
from backend.export.writers import WRITERS, Surface
from backend.scene.cameras import Views

FORMATS: tuple[str, ...] = tuple(WRITERS)
# Openings in a surface shell narrower than about twice this (world units; the objects span about 0.7) are closed
# before the inside is filled (`fill_enclosed`): where a splat or two is missing, so the flood from the border
# reached the whole inside and the mesh came out hollow with a hole (draft Gaussians: a green cylinder 0.725 ->
# 0.920 voxel IoU, a white cube 0.713 -> 0.756, on the same trained scenes; docs/METHODS.md). Twice this, 0.06, is
# far below any opening a shape means to have (the torus's hole is 0.36 wide).
FILL_GAP = 0.03


def extract_mesh(
    density_fn: FieldFn,
    views: Views,
    opacity: Tensor | np.ndarray,
    resolution: int = 128,
    bound: float = DEFAULT_BOUND,
    level: float | None = None,
    min_component_fraction: float = 0.05,
    target_faces: int | None = None,
    device: torch.device | str = "cpu",
    grid: np.ndarray | None = None,
    smooth_iterations: int = 0,
) -> tuple[Mesh, dict]:
    """Density grid -> level from the renders (``opacity`` [B, 1, H, W] of ``views``) -> enclosed cavities
    filled -> marching cubes -> floater removal -> ``smooth_iterations`` passes of Taubin smoothing
    (smooth.py) -> optional decimation. Returns the mesh and JSON-ready figures.

    ``level`` overrides the render-derived choice (then ``views``/``opacity`` are not used). ``grid`` is the
    density already sampled on the grid (a representation's faster path), else ``density_fn`` is sampled.
    """
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    if grid is None:
        grid = density_grid(density_fn, resolution, bound, device=device)
    elif grid.shape != (resolution,) * 3:
        raise ValueError(f"grid has shape {grid.shape}, expected {(resolution,) * 3}")
    seconds["grid"] = time.perf_counter() - t
    figures: dict = {"resolution": int(resolution), "bound": float(bound),
                     "field_min": float(grid.min()), "field_max": float(grid.max())}
    t = time.perf_counter()
    if level is None:
        level, iou = level_from_renders(grid, bound, views, opacity, device=device)
        figures["silhouette_iou"] = iou
        figures["level_source"] = "renders"
    else:
        figures["level_source"] = "given"
    figures["level"] = float(level)
    seconds["level"] = time.perf_counter() - t
    t = time.perf_counter()
    gap = max(1, round(FILL_GAP * (resolution - 1) / (2 * bound)))  # world units -> voxels of this grid
    grid, figures["filled_voxels"] = fill_enclosed(grid, level, gap)
    figures["fill_gap_voxels"] = gap
    seconds["fill"] = time.perf_counter() - t
    t = time.perf_counter()
    mesh = marching_cubes(grid, level, bound)
    seconds["marching_cubes"] = time.perf_counter() - t
    figures["faces_raw"] = mesh.n_faces
    t = time.perf_counter()
    mesh = remove_small_components(mesh, min_component_fraction)
    seconds["clean"] = time.perf_counter() - t
    figures["faces_after_clean"] = mesh.n_faces
    if smooth_iterations:
        # Before decimation: quadric collapse keeps the surface it is given, lumps included, and a smooth surface
        # needs fewer faces to keep.
        t = time.perf_counter()
        mesh = smooth_mesh(mesh, smooth_iterations)
        seconds["smooth"] = time.perf_counter() - t
    figures["smooth_iterations"] = int(smooth_iterations)
    if target_faces is not None:
        t = time.perf_counter()
        mesh = decimate(mesh, target_faces)
        seconds["decimate"] = time.perf_counter() - t
    figures["vertices"] = mesh.n_vertices
    figures["faces"] = mesh.n_faces
    figures["seconds"] = seconds
    return mesh, figures


def export_mesh(
    out_dir: str | Path,
    mesh: Mesh,
    colour_fn: SurfaceFn,
    texture_size: int = 1024,
    formats: tuple[str, ...] | list[str] = FORMATS,
    stem: str = "mesh",
    device: torch.device | str = "cpu",
    wire_arrays: bool = False,  # also return ``arrays``: the GLB's mesh as wire arrays (meshfile.py), not JSON
    uvs: np.ndarray | None = None,
) -> dict:
    """Unwrap, bake and write ``mesh`` as ``out_dir/<stem>.{glb,obj,ply}`` (OBJ with .mtl and PNG).

    ``uvs``: the mesh's own per-vertex UVs (a user's mesh being textured), baked into as they are, so the files
    keep its vertices and faces; without them xatlas unwraps (splitting vertices along its seams).

    Textured formats (GLB, OBJ: ``WRITERS``) carry the baked texture (no vertex colours: glTF would multiply them
    into it); the others (PLY) carry per-vertex colours. Unwrap and bake run only when a textured format is asked
    for. Returns JSON-ready figures: ``files`` (key -> path), vertex/face counts, texture coverage (fraction of
    texels covered by a triangle before dilation) and ``seconds`` per phase.
    """
    uvs_given = uvs
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; choose from {list(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    files: dict[str, str] = {}
    result: dict = {"vertices": mesh.n_vertices, "faces": mesh.n_faces, "files": files, "seconds": seconds}

    textured = [name for name, writer in WRITERS.items() if name in formats and writer.textured]
    plain = [name for name, writer in WRITERS.items() if name in formats and not writer.textured]
    if textured:
        t = time.perf_counter()
        uv_mesh, uvs = (mesh, np.asarray(uvs, dtype=np.float32)) if uvs is not None else unwrap_uvs(mesh, texture_size)
        seconds["unwrap"] = time.perf_counter() - t
        t = time.perf_counter()
        raster = rasterise_uv(uvs, uv_mesh.faces, texture_size)
        texture = bake_texture(uv_mesh, uvs, colour_fn, texture_size, raster=raster, device=device)
        seconds["bake"] = time.perf_counter() - t
        result.update(uv_vertices=uv_mesh.n_vertices, texture_size=int(texture_size),
                      texture_coverage=raster.coverage, uv_source="unwrapped" if uvs_given is None else "mesh")
        t = time.perf_counter()
        surface = Surface(uv_mesh, uvs=uvs, texture=texture)
        for name in textured:
            files.update({key: str(path) for key, path in WRITERS[name].write(out_dir, stem, surface).items()})
        if "glb" in textured and wire_arrays:  # what the server sends, instead of reading the file back
            result["arrays"] = mesh_arrays(uv_mesh, uvs, texture)
        seconds["write_textured"] = time.perf_counter() - t
    coloured: Surface | None = None
    for name in plain:  # each under its own name; the first also evaluates the vertex colours
        t = time.perf_counter()
        if coloured is None:
            coloured = Surface(mesh, vertex_colours=vertex_colours(mesh, colour_fn, device=device))
        files.update({key: str(path) for key, path in WRITERS[name].write(out_dir, stem, coloured).items()})
        seconds[name] = time.perf_counter() - t
    return result


__all__ = ["FORMATS", "extract_mesh", "export_mesh"]

"""The two compositions the training loop calls: field -> clean mesh, and mesh -> textured files."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from backend.export.field import DEFAULT_BOUND, FieldFn, GridLike, SurfaceFn, fill_enclosed, level_from_renders, sample_grid
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


class StageClock:
    """Seconds per stage of an export. On CUDA each mark waits for the device first, so a stage's seconds are its
    own work and not the queue it inherited; an export has a handful of stages, each of which hands its result to
    the host anyway, so these waits cost nothing a training step would feel (backend/phases.py is for those)."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def restart(self) -> None:
        """Start the next stage now (time since the last mark is nobody's)."""
        self._last = time.perf_counter()

    def mark(self, stage: str) -> None:
        """End ``stage`` (adding to it when it ran before) and start the next."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now


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
    grid: GridLike | None = None,
    smooth_iterations: int = 0,
    clock: StageClock | None = None,
) -> tuple[Mesh, dict]:
    """Density grid -> level from the renders (``opacity`` [B, 1, H, W] of ``views``) -> enclosed cavities
    filled -> marching cubes -> floater removal -> ``smooth_iterations`` passes of Taubin smoothing
    (smooth.py) -> optional decimation. Returns the mesh and JSON-ready figures.

    ``level`` overrides the render-derived choice (then ``views``/``opacity`` are not used). ``grid`` is the
    density already sampled on the grid (a representation's faster path), else ``density_fn`` is sampled. The
    grid, the level and the fill stay on ``device`` (a tensor grid on its own); the mesh is made on the host.
    ``clock`` carries stages timed before this call (the caller's renders and grid) into ``figures["seconds"]``.
    """
    clock = clock or StageClock(device)
    if grid is None:
        grid = sample_grid(density_fn, resolution, bound, device=device)
        clock.mark("grid")
    else:
        grid = torch.as_tensor(grid, dtype=torch.float32)
        if grid.device.type == "cpu":
            grid = grid.to(device)
        if tuple(grid.shape) != (resolution,) * 3:
            raise ValueError(f"grid has shape {tuple(grid.shape)}, expected {(resolution,) * 3}")
    field_min, field_max = torch.aminmax(grid)
    figures: dict = {"resolution": int(resolution), "bound": float(bound),
                     "field_min": float(field_min), "field_max": float(field_max)}
    if level is None:
        level, iou = level_from_renders(grid, bound, views, opacity, device=grid.device)
        figures["silhouette_iou"] = iou
        figures["level_source"] = "renders"
    else:
        figures["level_source"] = "given"
    figures["level"] = float(level)
    clock.mark("level")
    gap = max(1, round(FILL_GAP * (resolution - 1) / (2 * bound)))  # world units -> voxels of this grid
    grid, figures["filled_voxels"] = fill_enclosed(grid, level, gap)
    figures["fill_gap_voxels"] = gap
    clock.mark("fill")
    mesh = marching_cubes(grid, level, bound)
    clock.mark("marching_cubes")
    figures["faces_raw"] = mesh.n_faces
    mesh = remove_small_components(mesh, min_component_fraction)
    clock.mark("clean")
    figures["faces_after_clean"] = mesh.n_faces
    if smooth_iterations:
        # Before decimation: quadric collapse keeps the surface it is given, lumps included, and a smooth surface
        # needs fewer faces to keep.
        mesh = smooth_mesh(mesh, smooth_iterations)
        clock.mark("smooth")
    figures["smooth_iterations"] = int(smooth_iterations)
    if target_faces is not None:
        mesh = decimate(mesh, target_faces)
        clock.mark("decimate")
    figures["vertices"] = mesh.n_vertices
    figures["faces"] = mesh.n_faces
    figures["seconds"] = dict(clock.seconds)
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
    clock = StageClock(device)
    files: dict[str, str] = {}
    result: dict = {"vertices": mesh.n_vertices, "faces": mesh.n_faces, "files": files, "seconds": clock.seconds}

    textured = [name for name, writer in WRITERS.items() if name in formats and writer.textured]
    plain = [name for name, writer in WRITERS.items() if name in formats and not writer.textured]
    if textured:
        uv_mesh, uvs = (mesh, np.asarray(uvs, dtype=np.float32)) if uvs is not None else unwrap_uvs(mesh, texture_size)
        clock.mark("unwrap")
        raster = rasterise_uv(uvs, uv_mesh.faces, texture_size)
        texture = bake_texture(uv_mesh, uvs, colour_fn, texture_size, raster=raster, device=device)
        clock.mark("bake")
        result.update(uv_vertices=uv_mesh.n_vertices, texture_size=int(texture_size),
                      texture_coverage=raster.coverage, uv_source="unwrapped" if uvs_given is None else "mesh")
        surface = Surface(uv_mesh, uvs=uvs, texture=texture)
        for name in textured:
            files.update({key: str(path) for key, path in WRITERS[name].write(out_dir, stem, surface).items()})
        if "glb" in textured and wire_arrays:  # what the server sends, instead of reading the file back
            result["arrays"] = mesh_arrays(uv_mesh, uvs, texture)
        clock.mark("write_textured")
    coloured: Surface | None = None
    for name in plain:  # each under its own name; the first also evaluates the vertex colours
        clock.restart()
        if coloured is None:
            coloured = Surface(mesh, vertex_colours=vertex_colours(mesh, colour_fn, device=device))
        files.update({key: str(path) for key, path in WRITERS[name].write(out_dir, stem, coloured).items()})
        clock.mark(name)
    return result


__all__ = ["FORMATS", "StageClock", "extract_mesh", "export_mesh"]

"""Baking the field's albedo into a UV texture (and into vertex colours).

Each triangle is rasterised in UV space with a small vectorised barycentric rasteriser; every covered texel's
centre maps back to a 3D surface point and its interpolated normal, where the representation's surface colour is
queried (seen from outside, along the normal: Representation.surface_albedo). Texels no triangle covers are then
filled from covered neighbours (seam dilation), so bilinear filtering and mip-mapping at chart borders read the
chart's own colours instead of the background. UV convention: see uv.py (v up, texture row 0 = top).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from backend.export.field import SurfaceFn, evaluate_surface
from backend.export.mesh import Mesh, vertex_normals


@dataclass(frozen=True)
class UVRaster:
    """Which face covers each texel's centre (-1: none) and the centre's barycentric coordinates in it."""

    face_id: np.ndarray  # int32 [S, S]
    bary: np.ndarray  # float32 [S, S, 3]

    @property
    def covered(self) -> np.ndarray:
        return self.face_id >= 0

    @property
    def coverage(self) -> float:
        """Fraction of texels covered by some triangle."""
        return float(self.covered.mean())


def rasterise_uv(uvs: np.ndarray, faces: np.ndarray, size: int, chunk_faces: int = 32768) -> UVRaster:
    """Rasterise the triangles ``faces`` of per-vertex ``uvs`` into an S x S texel grid.

    A texel is covered when its centre lies inside (or on the edge of) a triangle; where triangles share an
    edge the later one wins, which is harmless since both map the texel to the same surface point.
    """
    s = int(size)
    uvs = np.asarray(uvs, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    # Texel space: x = u S to the right, y = (1 - v) S downward, texel (row r, col c) has its centre at
    # (c + 0.5, r + 0.5).
    px = uvs[:, 0] * s
    py = (1.0 - uvs[:, 1]) * s
    face_id = np.full((s, s), -1, dtype=np.int32)
    bary = np.zeros((s, s, 3), dtype=np.float32)
    for start in range(0, len(faces), chunk_faces):
        f = faces[start : start + chunk_faces]
        x, y = px[f], py[f]  # [n, 3]
        c0 = np.clip(np.ceil(x.min(axis=1) - 0.5), 0, s - 1).astype(np.int64)
        c1 = np.clip(np.floor(x.max(axis=1) - 0.5), 0, s - 1).astype(np.int64)
        r0 = np.clip(np.ceil(y.min(axis=1) - 0.5), 0, s - 1).astype(np.int64)
        r1 = np.clip(np.floor(y.max(axis=1) - 0.5), 0, s - 1).astype(np.int64)
        w = np.maximum(c1 - c0 + 1, 0)
        h = np.maximum(r1 - r0 + 1, 0)
        denom = (y[:, 1] - y[:, 2]) * (x[:, 0] - x[:, 2]) + (x[:, 2] - x[:, 1]) * (y[:, 0] - y[:, 2])
        count = np.where(np.abs(denom) > 1e-12, w * h, 0)  # zero-area triangles in UV cover nothing
        total = int(count.sum())
        if total == 0:
            continue
        # One candidate per (triangle, texel of its bounding box), without a Python loop over triangles.
        tri = np.repeat(np.arange(len(f)), count)
        offset = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
        col = c0[tri] + offset % w[tri]
        row = r0[tri] + offset // w[tri]
        cx, cy = col + 0.5, row + 0.5
        xt, yt, dt = x[tri], y[tri], denom[tri]
        l0 = ((yt[:, 1] - yt[:, 2]) * (cx - xt[:, 2]) + (xt[:, 2] - xt[:, 1]) * (cy - yt[:, 2])) / dt
        l1 = ((yt[:, 2] - yt[:, 0]) * (cx - xt[:, 2]) + (xt[:, 0] - xt[:, 2]) * (cy - yt[:, 2])) / dt
        l2 = 1.0 - l0 - l1
        eps = -1e-7
        inside = (l0 >= eps) & (l1 >= eps) & (l2 >= eps)
        row, col = row[inside], col[inside]
        face_id[row, col] = (tri[inside] + start).astype(np.int32)
        bary[row, col] = np.stack([l0[inside], l1[inside], l2[inside]], axis=-1).astype(np.float32)
    return UVRaster(face_id, bary)


def _box3(a: np.ndarray) -> np.ndarray:
    """Sum over each texel's 3x3 neighbourhood (zero outside), for [S, S, C] arrays: two separable passes."""
    p = np.pad(a, ((1, 1), (1, 1), (0, 0)))
    rows = p[:-2] + p[1:-1] + p[2:]
    return rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]


def dilate(texture: np.ndarray, mask: np.ndarray, passes: int = 16) -> np.ndarray:
    """Grow ``texture`` [S, S, C] outward from the texels in ``mask`` [S, S] by ``passes`` texels.

    Each pass gives every empty texel with a filled 8-neighbour the mean of those neighbours. Texels still
    empty afterwards get the mean colour of the masked texels, so coarse mip levels do not darken toward black.
    """
    mask = np.asarray(mask, dtype=bool)
    tex = np.where(mask[..., None], np.asarray(texture, dtype=np.float32), 0.0).astype(np.float32)
    filled = mask.copy()
    channels = tex.shape[2]
    for _ in range(int(passes)):
        if filled.all():
            break
        summed = _box3(np.concatenate([tex, filled[..., None].astype(np.float32)], axis=2))
        count = summed[..., channels]
        new = ~filled & (count > 0)
        if not new.any():
            break
        tex[new] = summed[new, :channels] / count[new, None]
        filled |= new
    if not filled.all():
        tex[~filled] = np.asarray(texture, dtype=np.float32)[mask].mean(axis=0) if mask.any() else 0.5
    return tex


def bake_texture(
    mesh: Mesh,
    uvs: np.ndarray,
    colour_fn: SurfaceFn,
    size: int = 1024,
    raster: UVRaster | None = None,
    dilation_passes: int = 16,
    chunk: int = 262144,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """The albedo texture float32 [S, S, 3] in [0, 1] of a mesh with per-vertex ``uvs`` (row 0 = top, v = 1).

    ``colour_fn`` maps torch points and outward unit normals [N, 3] to colours [N, 3]; ``raster`` may be passed
    when already computed.
    """
    if raster is None:
        raster = rasterise_uv(uvs, mesh.faces, size)
    covered = raster.covered
    texture = np.zeros((size, size, 3), dtype=np.float32)
    if covered.any():
        corners = mesh.faces[raster.face_id[covered]]  # [N, 3]
        bary = raster.bary[covered]
        points = np.einsum("nc,ncd->nd", bary, mesh.vertices[corners])
        normals = np.einsum("nc,ncd->nd", bary, vertex_normals(mesh)[corners])
        normals /= np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)
        texture[covered] = np.clip(evaluate_surface(colour_fn, points, normals, chunk, device), 0.0, 1.0)
    return dilate(texture, covered, dilation_passes)


def vertex_colours(
    mesh: Mesh, colour_fn: SurfaceFn, chunk: int = 262144, device: torch.device | str = "cpu"
) -> np.ndarray:
    """The surface colour at each vertex, float32 [V, 3] in [0, 1]."""
    return np.clip(evaluate_surface(colour_fn, mesh.vertices, vertex_normals(mesh), chunk, device), 0.0, 1.0)


__all__ = ["UVRaster", "rasterise_uv", "dilate", "bake_texture", "vertex_colours"]

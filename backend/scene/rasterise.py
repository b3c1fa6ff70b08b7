"""Which triangle each pixel sees, for fixed geometry: face id and barycentric coordinates per pixel.

Texturing a mesh optimises colour only, so a view's visibility never changes: it is computed once per camera
(``TexturedMesh`` caches it) and needs no gradient. Plain vectorised torch, so it runs on the CPU in tests and on
CUDA unchanged; no rasterisation library is needed for this (nvdiffrast and friends would buy speed on meshes far
larger than a texture job's at the prior's 32-256 px).

How: each triangle's screen bounding box gives candidate pixels (the same expansion texture.py uses in UV space),
the pixel's ray (the very rays ``ray_bundle`` gives every other renderer) is intersected with the triangle
(Moller-Trumbore, which yields perspective-correct barycentrics and the ray distance directly), and the nearest
hit per pixel wins (a z-buffer by ``scatter_reduce``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

# A pixel centre this close outside a triangle (in barycentric units) still counts as inside, so the shared edge
# of two triangles leaves no pixel uncovered through float rounding.
EDGE_SLACK = 1e-5
# Faces with a vertex nearer the camera plane than this (world units) are dropped: the orbit cameras stay over a
# unit away from the object, so only a mesh reaching the camera loses faces, and no clipping is needed.
NEAR = 1e-3
# Candidate (pixel, triangle) pairs per batch: bounds working memory (about 100 bytes a pair).
CANDIDATES_PER_CHUNK = 2_000_000


@dataclass(frozen=True)
class Raster:
    """One view's visibility: ``face_id`` -1 where no triangle is seen; ``bary`` weights of the face's corners."""

    face_id: Int[Tensor, "H W"]
    bary: Float[Tensor, "H W 3"]
    depth: Float[Tensor, "H W"]  # distance along the (unit) ray, inf where empty

    @property
    def covered(self) -> Tensor:
        return self.face_id >= 0


def _pixel_dirs(c2w: Float[Tensor, "4 4"], tan_half: Tensor, height: int, width: int, rows: Tensor,
                cols: Tensor) -> Float[Tensor, "N 3"]:
    """Unit world directions through pixel centres (row, col): ``cameras.ray_bundle``'s formula for chosen pixels."""
    aspect = width / height
    cx = (2 * (cols.to(c2w.dtype) + 0.5) / width - 1) * tan_half * aspect
    cy = (1 - 2 * (rows.to(c2w.dtype) + 0.5) / height) * tan_half
    dirs_cam = torch.stack([cx, cy, -torch.ones_like(cx)], dim=-1)
    return torch.nn.functional.normalize(dirs_cam @ c2w[:3, :3].T, dim=-1)


@torch.no_grad()
def rasterise(vertices: Float[Tensor, "V 3"], faces: Int[Tensor, "F 3"], c2w: Float[Tensor, "4 4"],
              fovy: Float[Tensor, ""], height: int, width: int) -> Raster:
    """The nearest triangle through each pixel centre of one pinhole camera (OpenGL frame, ``cameras.py``)."""
    device, dtype = vertices.device, vertices.dtype
    n_pix = height * width
    best = torch.full((n_pix,), float("inf"), device=device, dtype=dtype)
    face_id = torch.full((n_pix,), -1, device=device, dtype=torch.long)
    bary = torch.zeros(n_pix, 3, device=device, dtype=dtype)
    if faces.shape[0] == 0:
        return Raster(face_id.view(height, width), bary.view(height, width, 3), best.view(height, width))
    w2c = torch.linalg.inv(c2w.to(dtype))
    cam = vertices @ w2c[:3, :3].T + w2c[:3, 3]
    depth = -cam[:, 2]  # in front of the camera where positive
    tan_half = torch.tan(fovy.to(dtype) / 2)
    aspect = width / height
    safe = depth.clamp(min=NEAR)
    # Continuous pixel coordinates with pixel (r, c)'s centre at exactly (r, c).
    col = (cam[:, 0] / safe / (tan_half * aspect) + 1) / 2 * width - 0.5
    row = (1 - cam[:, 1] / safe / tan_half) / 2 * height - 0.5
    fcol, frow = col[faces], row[faces]  # F 3
    c0 = fcol.min(1).values.ceil().clamp(0, width - 1).long()
    c1 = fcol.max(1).values.floor().clamp(-1, width - 1).long()
    r0 = frow.min(1).values.ceil().clamp(0, height - 1).long()
    r1 = frow.max(1).values.floor().clamp(-1, height - 1).long()
    w = (c1 - c0 + 1).clamp(min=0)
    h = (r1 - r0 + 1).clamp(min=0)
    in_front = (depth[faces] > NEAR).all(1)
    off_screen = (fcol.max(1).values < -0.5) | (fcol.min(1).values > width - 0.5) | \
                 (frow.max(1).values < -0.5) | (frow.min(1).values > height - 0.5)
    count = torch.where(in_front & ~off_screen, w * h, torch.zeros_like(w))
    origin = c2w[:3, 3].to(dtype)
    tri = vertices[faces]  # F 3 3
    # Chunks of whole faces whose candidate counts sum to about CANDIDATES_PER_CHUNK.
    cumulative = torch.cumsum(count, 0)
    total = int(cumulative[-1])
    start = 0
    n_faces = faces.shape[0]
    while start < n_faces and total > 0:
        base = int(cumulative[start - 1]) if start > 0 else 0
        end = int(torch.searchsorted(cumulative, base + CANDIDATES_PER_CHUNK, right=True))
        end = max(end, start + 1)
        idx = torch.arange(start, min(end, n_faces), device=device)
        start = min(end, n_faces)
        cnt = count[idx]
        n = int(cnt.sum())
        if n == 0:
            continue
        f = torch.repeat_interleave(idx, cnt)
        first = torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
        offset = torch.arange(n, device=device) - first
        pc = c0[f] + offset % w[f]
        pr = r0[f] + torch.div(offset, w[f], rounding_mode="floor")
        d = _pixel_dirs(c2w.to(dtype), tan_half, height, width, pr, pc)
        v0, v1, v2 = tri[f, 0], tri[f, 1], tri[f, 2]
        e1, e2 = v1 - v0, v2 - v0
        p = torch.cross(d, e2, dim=-1)
        det = (e1 * p).sum(-1)
        ok = det.abs() > 1e-12
        inv = 1.0 / torch.where(ok, det, torch.ones_like(det))
        s = origin - v0
        u = (s * p).sum(-1) * inv
        q = torch.cross(s, e1, dim=-1)
        v = (d * q).sum(-1) * inv
        t = (e2 * q).sum(-1) * inv
        hit = ok & (u >= -EDGE_SLACK) & (v >= -EDGE_SLACK) & (u + v <= 1 + EDGE_SLACK) & (t > NEAR)
        if not bool(hit.any()):
            continue
        pix = (pr * width + pc)[hit]
        t, u, v, f = t[hit], u[hit], v[hit], f[hit]
        nearest = torch.full((n_pix,), float("inf"), device=device, dtype=dtype).scatter_reduce(
            0, pix, t, "amin")
        win = (t == nearest[pix]) & (t < best[pix])
        pix, t, u, v, f = pix[win], t[win], u[win], v[win], f[win]
        best[pix] = t
        face_id[pix] = f
        bary[pix] = torch.stack([1 - u - v, u, v], dim=-1).clamp(0, 1)
    bary = bary / bary.sum(-1, keepdim=True).clamp(min=1e-12)
    return Raster(face_id.view(height, width), bary.view(height, width, 3), best.view(height, width))


__all__ = ["Raster", "rasterise"]

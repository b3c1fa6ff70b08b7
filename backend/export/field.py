"""Sampling a trained field for mesh extraction, and choosing the marching-cubes level from the renders.

Why the level comes from the field: score-distilled densities are fuzzy (values of 1-5 spread wide) and their
scale depends on the representation, the method and the run, so a fixed threshold (threestudio uses 25 for its
softplus density) gives an empty mesh on one run and a bloated one on the next. What the prior actually judged
are the renders, and their silhouettes are trustworthy even when the field is fuzzy. A camera ray crosses the
mesh of level L exactly when the largest density along it exceeds L, so we pick the L whose silhouettes
{ray max > L} agree best (IoU) with the rendered silhouettes {opacity > 0.5}, over many rays from several views.
A render's opacity integrates density along the ray while a level set only sees its maximum, so no level matches
every ray; the IoU-best one is the level set whose silhouettes agree best with the renders the prior judged.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from backend.scene.cameras import Views, ray_bundle

# The object lives in the unit box [-0.5, 0.5]^3; the margin keeps surfaces that touch the box inside the grid.
DEFAULT_BOUND: float = 0.5 + 0.05

FieldFn = Callable[[Tensor], Tensor]
# Surface colour: (points [N, 3], outward unit normals [N, 3]) -> colours [N, 3]. The normal says from which
# side the surface is seen, which a colour field of points alone cannot know (Representation.surface_albedo).
SurfaceFn = Callable[[Tensor, Tensor], Tensor]
# A density grid: numpy on the host, or a tensor on the device that sampled it (extraction keeps it there).
GridLike = np.ndarray | Tensor


@torch.no_grad()
def evaluate(fn: FieldFn, points: np.ndarray, chunk: int = 262144, device: torch.device | str = "cpu") -> np.ndarray:
    """``fn`` (torch [N, 3] -> [N] or [N, C]) on numpy points [N, 3], in chunks; returns float32 numpy."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    out = []
    for start in range(0, len(points), chunk):
        batch = torch.from_numpy(points[start : start + chunk]).to(device)
        out.append(fn(batch).float().cpu().numpy())
    if not out:
        return np.zeros((0,), dtype=np.float32)
    return np.concatenate(out, axis=0)


@torch.no_grad()
def evaluate_surface(fn: SurfaceFn, points: np.ndarray, normals: np.ndarray, chunk: int = 262144,
                     device: torch.device | str = "cpu") -> np.ndarray:
    """``fn`` on numpy surface points and normals [N, 3], in chunks; returns float32 numpy [N, 3]."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    normals = np.ascontiguousarray(normals, dtype=np.float32)
    out = [fn(torch.from_numpy(points[i : i + chunk]).to(device), torch.from_numpy(normals[i : i + chunk]).to(device))
           .float().cpu().numpy() for i in range(0, len(points), chunk)]
    return np.concatenate(out, axis=0) if out else np.zeros((0, 3), dtype=np.float32)


@torch.no_grad()
def sample_grid(
    density_fn: FieldFn,
    resolution: int = 128,
    bound: float = DEFAULT_BOUND,
    chunk: int = 262144,
    device: torch.device | str = "cpu",
) -> Tensor:
    """The density on a regular R^3 grid over [-bound, bound]^3, float32 [R, R, R] on ``device``.

    Index order is (x, y, z): ``grid[i, j, k]`` is the density at ``(xs[i], xs[j], xs[k])`` with
    ``xs = linspace(-bound, bound, R)`` (samples on the box's faces included; spacing 2 bound / (R - 1)).
    Points are made per chunk, so memory stays at ``chunk`` points whatever the resolution; the values stay on
    the device (the level and the fill run there), so no chunk waits on a copy to the host.
    """
    r = int(resolution)
    if r < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}")
    axis = torch.linspace(-bound, bound, r, device=device)
    total = r**3
    out = torch.empty(total, dtype=torch.float32, device=device)
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        idx = torch.arange(start, stop, device=device)
        points = torch.stack([axis[idx // (r * r)], axis[(idx // r) % r], axis[idx % r]], dim=-1)
        values = density_fn(points).reshape(-1)
        if values.numel() != stop - start:
            raise ValueError(f"density_fn returned {values.numel()} values for {stop - start} points")
        out[start:stop] = values.float()
    return out.reshape(r, r, r)


def density_grid(
    density_fn: FieldFn,
    resolution: int = 128,
    bound: float = DEFAULT_BOUND,
    chunk: int = 262144,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """``sample_grid`` as float32 numpy on the host."""
    return sample_grid(density_fn, resolution, bound, chunk, device).cpu().numpy()


@torch.no_grad()
def ray_max_density(
    grid: GridLike,
    bound: float,
    origins: np.ndarray | Tensor,
    dirs: np.ndarray | Tensor,
    n_samples: int | None = None,
    chunk: int = 8192,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """The largest trilinearly interpolated grid value along each ray's segment inside the box, float32 [M].

    ``origins`` and ``dirs`` are [M, 3] world rays; rays that miss [-bound, bound]^3 get -inf (they can never
    be inside the mesh). ``n_samples`` per ray defaults to twice the grid resolution (stride under one cell).
    On a GPU ``device`` does this in milliseconds (about 1.2 s of a Gaussian export on the CPU, BENCHMARKS.md).
    """
    device = torch.device(device)
    g = torch.as_tensor(grid, dtype=torch.float32, device=device)
    if g.ndim != 3:
        raise ValueError(f"grid must be [X, Y, Z], got {tuple(g.shape)}")
    # grid_sample reads a [N, C, D, H, W] volume with coordinates ordered (W, H, D): our (x, y, z) grid is
    # D = x, H = y, W = z, so a point's coordinates go in as (z, y, x). align_corners=True because the grid's
    # first and last samples lie exactly on -bound and +bound.
    volume = g[None, None]
    n = int(n_samples) if n_samples is not None else 2 * max(g.shape)
    o_all = torch.as_tensor(origins, dtype=torch.float32).reshape(-1, 3).to(device)
    d_all = torch.as_tensor(dirs, dtype=torch.float32).reshape(-1, 3).to(device)
    out = torch.full((o_all.shape[0],), float("-inf"), device=device)
    steps = (torch.arange(n, dtype=torch.float32, device=device) + 0.5) / n
    if device.type == "cuda":
        chunk *= 8  # [chunk, n] samples at a time: 65k x 384 floats is small for a GPU
    for start in range(0, o_all.shape[0], chunk):
        o, d = o_all[start : start + chunk], d_all[start : start + chunk]
        # Slab test against the box; a zero direction component gets a huge inverse and a matching slab.
        safe = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
        t0, t1 = (-bound - o) / safe, (bound - o) / safe
        t_near = torch.minimum(t0, t1).amax(dim=-1).clamp(min=0.0)
        t_far = torch.maximum(t0, t1).amin(dim=-1)
        hit = t_far > t_near
        if not hit.any():
            continue
        o, d, t_near, t_far = o[hit], d[hit], t_near[hit], t_far[hit]
        t = t_near[:, None] + (t_far - t_near)[:, None] * steps[None]  # [m, n]
        points = o[:, None] + t[..., None] * d[:, None]
        coords = (points[..., [2, 1, 0]] / bound).clamp(-1.0, 1.0)
        values = F.grid_sample(volume, coords[None, :, :, None, :], mode="bilinear", align_corners=True)
        out[start : start + chunk][hit] = values[0, 0, :, :, 0].amax(dim=-1)  # slice is a view of out
    return out.cpu().numpy()


def choose_level(ray_max_density: np.ndarray, silhouette: np.ndarray) -> float:
    """The level L maximising IoU between {ray_max_density > L} and ``silhouette``, over M rays.

    Sort-based, O(M log M): with values sorted in decreasing order, predicting the top k rays as inside gives
    TP(k) = cumsum of the silhouette and IoU(k) = TP / (k + |silhouette| - TP); only cuts between distinct values
    are realisable by a threshold. The level returned lies midway between the last value kept and the next one.
    Non-finite values (rays that missed the grid) are never inside. Ties in IoU go to the higher level.
    """
    values = np.asarray(ray_max_density, dtype=np.float64).reshape(-1)
    sil = np.asarray(silhouette, dtype=bool).reshape(-1)
    if values.shape != sil.shape:
        raise ValueError(f"{values.shape[0]} ray maxima but {sil.shape[0]} silhouette entries")
    if np.isnan(values).any():
        raise ValueError("ray maxima contain NaN")
    n_sil = int(sil.sum())
    if n_sil == 0:
        raise ValueError("the silhouette is empty: no ray has opacity above the threshold, nothing to mesh")
    finite = np.isfinite(values)
    v, s = values[finite], sil[finite]
    if v.size == 0:
        raise ValueError("no ray crosses the grid")
    order = np.argsort(-v, kind="stable")
    v, s = v[order], s[order]
    tp = np.cumsum(s)
    k = np.arange(1, v.size + 1)
    iou = tp / (k + n_sil - tp)
    realisable = np.ones(v.size, dtype=bool)
    realisable[:-1] = v[:-1] > v[1:]
    best = int(np.argmax(np.where(realisable, iou, -1.0)))
    if best + 1 < v.size:
        return float(0.5 * (v[best] + v[best + 1]))
    return float(v[best] - max(1e-6, 1e-3 * abs(v[best])))


def silhouette_iou(ray_max_density: np.ndarray, silhouette: np.ndarray, level: float) -> float:
    """IoU between the rays whose maximum exceeds ``level`` and the silhouette."""
    pred = np.asarray(ray_max_density).reshape(-1) > level
    sil = np.asarray(silhouette, dtype=bool).reshape(-1)
    union = int((pred | sil).sum())
    return float((pred & sil).sum() / union) if union else 1.0


def level_from_renders(
    grid: GridLike,
    bound: float,
    views: Views,
    opacity: Tensor | np.ndarray,
    threshold: float = 0.5,
    n_samples: int | None = None,
    device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """(level, silhouette IoU at that level) from renders: ``opacity`` [B, 1, H, W] or [B, H, W] of ``views``."""
    op = torch.as_tensor(opacity).detach().float().cpu()
    if op.ndim == 4:
        op = op[:, 0]
    b, h, w = op.shape
    if b != len(views):
        raise ValueError(f"{b} opacity images for {len(views)} views")
    origins, dirs = ray_bundle(views.to("cpu"), h, w)
    maxima = ray_max_density(grid, bound, origins.reshape(-1, 3), dirs.reshape(-1, 3), n_samples, device=device)
    sil = (op.reshape(-1) > threshold).numpy()
    level = choose_level(maxima, sil)
    return level, silhouette_iou(maxima, sil, level)


__all__ = [
    "DEFAULT_BOUND",
    "FieldFn",
    "evaluate",
    "density_grid",
    "fill_enclosed",
    "sample_grid",
    "ray_max_density",
    "choose_level",
    "silhouette_iou",
    "level_from_renders",
]


def fill_enclosed(grid: GridLike, level: float, gap: int = 0) -> tuple[GridLike, int]:
    """Raise every below-level voxel that the grid's border cannot reach (6-connected) above the level.

    Score distillation only ever sees a surface, so the matter behind it is often thin: Gaussians sit on the
    surface as a shell and a NeRF may leave its inside empty. Marching cubes would then give a second, inward-
    facing surface inside the object, which an artist's tools (booleans, 3D printing, volume) read as a
    hollow. A shell is rarely watertight: one missing splat lets the border reach the whole inside. So the
    outside is flooded through the empty space left when the matter is grown by ``gap`` voxels (openings up to
    about ``2 gap`` voxels wide are closed), then grown back by ``gap`` voxels into the empty space, so the outer
    surface and any opening wider than that stay where they were. Returns the filled grid (numpy for numpy, else a
    tensor on the grid's own device, where the work runs) and how many voxels were filled.
    """
    as_numpy = isinstance(grid, np.ndarray)
    g = torch.from_numpy(np.ascontiguousarray(grid)) if as_numpy else grid
    empty = g <= level
    passable = empty
    if gap > 0:
        passable = ~_grow(~empty, gap)
    outside = _flood_outside(passable)
    if gap > 0:
        # Give back the layer the grown matter hid. No voxel farther than `gap` from the flooded outside is
        # reached, so this cannot pass through a wall or an opening into the inside.
        outside = _grow(outside, gap) & empty
    cavity = empty & ~outside
    count = int(cavity.sum())
    value = max(float(g.max()), level * 2.0 if level > 0 else level + 1.0)
    filled = torch.where(cavity, torch.tensor(value, dtype=g.dtype, device=g.device), g)
    return (filled.numpy() if as_numpy else filled), count


def _grow(mask: Tensor, radius: int) -> Tensor:
    """``mask`` dilated by a cube of side ``2 radius + 1`` (what a max-pool of that size gives), one axis at a
    time: a cube is separable, and a 3D max-pool of side 11 over a 192^3 grid took 9.5 s on two CPU threads
    (twice per export), these passes a few hundredths of that."""
    for axis in range(mask.ndim):
        mask = _grow_axis(mask, radius, axis)
    return mask


def _grow_axis(mask: Tensor, radius: int, axis: int) -> Tensor:
    """``mask`` OR-ed over a window of ``radius`` voxels on each side along ``axis``: windows of radius c double
    up to 3c + 1 by OR-ing copies shifted by up to 2c + 1 each way, so radius r takes about log3(r) steps."""
    n = mask.shape[axis]
    covered = 0
    while covered < radius:
        shift = min(2 * covered + 1, radius - covered, n - 1)
        if shift <= 0:
            break
        grown = mask.clone()
        grown.narrow(axis, shift, n - shift).logical_or_(mask.narrow(axis, 0, n - shift))
        grown.narrow(axis, 0, n - shift).logical_or_(mask.narrow(axis, shift, n - shift))
        mask, covered = grown, covered + shift
    return mask


def _flood_outside(passable: Tensor) -> Tensor:
    """``_flood_from_border`` over the box around the walls (and one voxel beyond) only: everything outside that
    box is passable and touches the border, and the box's own faces are then passable voxels reached from
    outside, so flooding the box from its faces reaches what flooding the grid would (an object fills about a
    quarter of the grid)."""
    walls = ~passable
    outside = torch.ones_like(passable)
    box = []
    for axis in range(3):
        present = torch.nonzero(walls.any(dim=tuple(a for a in range(3) if a != axis)), as_tuple=True)[0]
        if present.numel() == 0:
            return outside
        box.append(slice(max(int(present[0]) - 1, 0), min(int(present[-1]) + 2, passable.shape[axis])))
    outside[tuple(box)] = _flood_from_border(passable[tuple(box)])
    return outside


def _flood_from_border(passable: Tensor) -> Tensor:
    """Voxels of ``passable`` reachable (6-connected, through ``passable``) from the grid's faces.

    Sweeps along each axis in turn, each carrying the reached set to the whole passable run of voxels it lies in
    (``_sweep``), until a round of three sweeps adds nothing: a path needs one sweep per straight leg, so a few
    rounds suffice where growing one voxel a step took as many steps as the longest path (two hundred at 192^3).
    """
    seeds = torch.zeros_like(passable)
    for axis in range(3):
        for end in (0, -1):
            index = [slice(None)] * 3
            index[axis] = end
            seeds[tuple(index)] = passable[tuple(index)]
    reached, count = seeds, int(seeds.sum())
    while True:
        for axis in range(3):
            reached = _sweep(reached, passable, axis)
        grown = int(reached.sum())
        if grown == count:
            return reached
        count = grown


def _sweep(reached: Tensor, passable: Tensor, axis: int) -> Tensor:
    """Every passable voxel whose run along ``axis`` (the passable voxels between two walls) holds a reached
    one. Each voxel's nearest event before it (a wall: even code, a reached voxel: odd) is a running maximum of
    codes that grow along the axis, and likewise after it on the reversed axis; a voxel is reached when either
    nearest event is a reached voxel. The axis is moved last first: a running maximum along the last, contiguous
    axis took a tenth of the time of one along the first on a CPU."""
    reached_t = reached.movedim(axis, -1).contiguous()
    passable_t = passable.movedim(axis, -1).contiguous()
    n = passable_t.shape[-1]
    index = torch.arange(n, device=passable.device, dtype=torch.int32)
    none = torch.tensor(-1, device=passable.device, dtype=torch.int32)
    out = reached_t.clone()
    for position in (index, (n - 1) - index):  # forward, then backward along the flipped axis
        code = torch.where(reached_t, 2 * position + 1, torch.where(passable_t, none, 2 * position))
        if position is not index:
            code = code.flip(-1)
        last = torch.cummax(code, dim=-1).values
        if position is not index:
            last = last.flip(-1)
        out |= (last & 1).bool() & (last >= 0)
    return out.movedim(-1, axis)

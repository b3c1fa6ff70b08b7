"""Splatting of 3D Gaussians: a dense torch renderer (CPU, tests, reference) and gsplat on CUDA.

Conventions follow gsplat 1.5.3 so both paths give the same images:
- ``viewmats`` are world-to-camera in OpenCV convention (camera looks down +Z, +X right, +Y down);
  ``Ks`` are pinhole intrinsics in pixels, pixel (i, j) has its centre at (j + 0.5, i + 0.5).
- quaternions are w, x, y, z; scales and opacities are already activated.
- EWA projection ``Sigma2d = J W Sigma W^T J^T + eps2d I`` with gsplat's clamp of ``x/z, y/z`` to 1.3x the
  field of view inside J (it keeps J finite for Gaussians far outside the frame).
- ``alpha = min(ALPHA_MAX, o exp(-0.5 d^T Sigma2d^-1 d))``, contributions below 1/255 are skipped, and a
  pixel stops once its transmittance would fall to 1e-4 (the Gaussian that would cross it is left out).
- Outputs are channel-last: rgb [B, H, W, 3] composited over the background, alpha [B, H, W, 1], and the
  expected depth (camera z) [B, H, W, 1], which is 0 where nothing was hit.

Our cameras (cameras.py) are OpenGL-style c2w + vertical fov: ``views_to_opencv`` converts them.

The dense renderer evaluates, per 16x16 tile, every Gaussian whose box reaches the tile at every pixel of
it (gsplat's tiling without its CUDA kernels): memory is O(tile pixels x Gaussians there) with autograd.
Views are rendered one after the other to bound memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from backend.scene.cameras import Views

# gsplat's defaults (rendering.py and cuda/include/Common.h of 1.5.3); the dense path uses the same numbers
# so that it is a reference for the CUDA path rather than a look-alike.
NEAR_PLANE = 0.01
EPS2D = 0.3  # px^2 added to the 2D covariance: every splat covers at least about a pixel (anti-aliasing)
ALPHA_MIN = 1.0 / 255.0  # contributions below this are skipped
ALPHA_MAX = 0.999  # gsplat's kernel clamps at 0.999 (min(0.999f, opac * exp(-sigma)))
T_MIN = 1e-4  # a pixel is done once its transmittance would drop to this
EXTENT_MAX = 3.33  # gsplat's bounding-box half width, in standard deviations


@dataclass
class SplatOutput:
    rgb: Float[Tensor, "B H W 3"]
    alpha: Float[Tensor, "B H W 1"]
    depth: Float[Tensor, "B H W 1"]
    # Projected centres in pixels; when the inputs need gradients, ``retain_grad`` was called on this tensor
    # so that after ``backward`` its ``.grad`` holds the view-space positional gradient (densification).
    means2d: Float[Tensor, "B N 2"]
    # Which Gaussians each view sees (gsplat's ``radii > 0``): in front of the near plane, opaque enough,
    # and with a bounding box that overlaps the image.
    visible: Bool[Tensor, "B N"]


# ---------------------------------------------------------------------------------------------
# Cameras
# ---------------------------------------------------------------------------------------------


def intrinsics(fovy: Float[Tensor, "B"], height: int, width: int) -> Float[Tensor, "B 3 3"]:
    """Pinhole intrinsics with square pixels and the principal point at the image centre."""
    fy = 0.5 * height / torch.tan(0.5 * fovy)
    K = torch.zeros(fovy.shape[0], 3, 3, dtype=fovy.dtype, device=fovy.device)
    K[:, 0, 0] = fy  # square pixels: ray_bundle scales x by the aspect ratio, which is the same focal length
    K[:, 1, 1] = fy
    K[:, 0, 2] = 0.5 * width
    K[:, 1, 2] = 0.5 * height
    K[:, 2, 2] = 1.0
    return K


def opengl_c2w_to_opencv_viewmat(c2w: Float[Tensor, "B 4 4"]) -> Float[Tensor, "B 4 4"]:
    """World-to-camera in OpenCV convention from an OpenGL-style camera-to-world matrix."""
    # OpenGL camera axes (x right, y up, looking down -z) -> OpenCV (x right, y down, looking down +z).
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=c2w.dtype, device=c2w.device))
    c2w_cv = c2w @ flip
    # Rigid inverse: cheaper and more exact than a general inverse.
    rot_t = c2w_cv[:, :3, :3].transpose(1, 2)
    w2c = torch.zeros_like(c2w_cv)
    w2c[:, :3, :3] = rot_t
    w2c[:, :3, 3] = -(rot_t @ c2w_cv[:, :3, 3:4])[..., 0]
    w2c[:, 3, 3] = 1.0
    return w2c


def views_to_opencv(views: Views, height: int, width: int) -> tuple[Float[Tensor, "B 4 4"], Float[Tensor, "B 3 3"]]:
    """(viewmats, Ks) in gsplat's conventions for our views."""
    return opengl_c2w_to_opencv_viewmat(views.c2w), intrinsics(views.fovy, height, width)


# ---------------------------------------------------------------------------------------------
# Gaussians
# ---------------------------------------------------------------------------------------------


def quat_to_rotmat(quats: Float[Tensor, "N 4"]) -> Float[Tensor, "N 3 3"]:
    """Rotation matrices from quaternions (w, x, y, z); the quaternions are normalised here."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*quats.shape[:-1], 3, 3)


def covariance_3d(quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3 3"]:
    """Sigma = R S S^T R^T."""
    m = quat_to_rotmat(quats) * scales[..., None, :]  # R diag(s): scales the columns
    return m @ m.transpose(-1, -2)


@dataclass
class Projection:
    means2d: Float[Tensor, "B N 2"]
    conics: Float[Tensor, "B N 3"]  # upper triangle (a, b, c) of the inverse 2D covariance [[a, b], [b, c]]
    depths: Float[Tensor, "B N"]  # camera z
    visible: Bool[Tensor, "B N"]
    radii: Float[Tensor, "B N 2"]  # half sizes (px) of the box outside which alpha < 1/255 (gsplat's)
    # sqrt(det Sigma2d / det(Sigma2d + eps2d I)): the opacity factor that keeps a splat's integrated alpha when
    # eps2d widens it (gsplat's "antialiased" mode, Mip-Splatting's 2D filter); 1 where nothing is widened.
    compensation: Float[Tensor, "B N"]


def project(
    means: Float[Tensor, "N 3"],
    quats: Float[Tensor, "N 4"],
    scales: Float[Tensor, "N 3"],
    opacities: Float[Tensor, "N"],
    viewmats: Float[Tensor, "B 4 4"],
    Ks: Float[Tensor, "B 3 3"],
    width: int,
    height: int,
    eps2d: float = EPS2D,
    near_plane: float = NEAR_PLANE,
) -> Projection:
    """EWA projection of 3D Gaussians to pixel space (gsplat's pinhole model and culling)."""
    rot = viewmats[:, None, :3, :3]  # B 1 3 3
    means_c = (rot @ means[None, :, :, None])[..., 0] + viewmats[:, None, :3, 3]  # B N 3
    cov_c = rot @ covariance_3d(quats, scales)[None] @ rot.transpose(-1, -2)  # B N 3 3
    tx, ty, tz = means_c.unbind(-1)
    in_front = tz > near_plane
    # Gaussians behind the near plane are culled; a safe depth keeps their (unused) values finite so that
    # no NaN reaches the gradients through torch.where.
    tz = torch.where(in_front, tz, torch.ones_like(tz))
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # gsplat clamps the direction used in the Jacobian to 1.3x the frustum so off-screen Gaussians do not
    # get huge, badly conditioned footprints.
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    u = (tx / tz).clamp(min=-(cx / fx + 0.3 * tan_x), max=(width - cx) / fx + 0.3 * tan_x)
    v = (ty / tz).clamp(min=-(cy / fy + 0.3 * tan_y), max=(height - cy) / fy + 0.3 * tan_y)
    zero = torch.zeros_like(tz)
    jac = torch.stack([fx / tz, zero, -fx * u / tz, zero, fy / tz, -fy * v / tz], dim=-1).reshape(*tz.shape, 2, 3)
    cov2d = jac @ cov_c @ jac.transpose(-1, -2)
    det_unfiltered = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    a, b, c = cov2d[..., 0, 0], 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]), cov2d[..., 1, 1]
    det = a * c - b * b
    valid = in_front & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    compensation = torch.sqrt((det_unfiltered / det).clamp(min=0.0))
    means2d = torch.stack([fx * tx / tz + cx, fy * ty / tz + cy], dim=-1)
    # gsplat's opacity-aware bounding box: alpha >= 1/255 only inside `extend` standard deviations.
    with torch.no_grad():
        opa = opacities.detach()[None].expand_as(tz)
        valid = valid & (opa >= ALPHA_MIN)
        extend = torch.sqrt(2.0 * torch.log(opa.clamp(min=ALPHA_MIN) / ALPHA_MIN)).clamp(max=EXTENT_MAX)
        rx = torch.ceil(extend * a.detach().clamp(min=0).sqrt())
        ry = torch.ceil(extend * c.detach().clamp(min=0).sqrt())
        mx, my = means2d.detach().unbind(-1)
        inside = (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        visible = valid & inside
    return Projection(means2d, conics, means_c[..., 2], visible, torch.stack([rx, ry], dim=-1), compensation)


# ---------------------------------------------------------------------------------------------
# Dense rasteriser
# ---------------------------------------------------------------------------------------------


def _splat_exponents(
    means2d: Float[Tensor, "M 2"],
    conics: Float[Tensor, "M 3"],
    log_opacities: Float[Tensor, "M"],
    pixels: Float[Tensor, "P 2"],
) -> Float[Tensor, "P M"]:
    """``0.5 d^T Sigma2d^-1 d - log(o)`` for every pixel and Gaussian, so that ``o exp(-sigma) = exp(-result)``.

    The quadratic form is a polynomial of degree 2 in the pixel coordinates whose coefficients depend on
    the Gaussian only, which makes it ONE matrix product [P, 6] @ [6, M] instead of about ten elementwise
    passes over P x M (4x faster on CPU, forward and backward). It runs in float64 because the expanded
    terms are much larger than their sum (pixel coordinates squared).
    """
    f64 = torch.float64
    x, y = pixels[:, 0:1].to(f64), pixels[:, 1:2].to(f64)
    basis = torch.cat([x * x, x * y, y * y, x, y, torch.ones_like(x)], dim=1)  # P 6
    mx, my = means2d[:, 0].to(f64), means2d[:, 1].to(f64)
    a, b, c = 0.5 * conics[:, 0].to(f64), conics[:, 1].to(f64), 0.5 * conics[:, 2].to(f64)
    constant = a * mx * mx + b * mx * my + c * my * my - log_opacities.to(f64)
    coeffs = torch.stack([a, b, c, -2 * a * mx - b * my, -2 * c * my - b * mx, constant])  # 6 M
    return (basis @ coeffs).to(means2d.dtype)


def _composite_view(
    means2d: Float[Tensor, "M 2"],
    conics: Float[Tensor, "M 3"],
    opacities: Float[Tensor, "M"],
    colors: Float[Tensor, "M 3"],
    depths: Float[Tensor, "M"],
    pixels: Float[Tensor, "P 2"],
) -> tuple[Float[Tensor, "P 3"], Float[Tensor, "P"], Float[Tensor, "P"]]:
    """Front-to-back compositing of Gaussians already sorted near to far, at every pixel."""
    exponent = _splat_exponents(means2d, conics, torch.log(opacities.clamp(min=1e-30)), pixels)
    alpha = torch.exp(-exponent).clamp(max=ALPHA_MAX)
    # gsplat also skips sigma < 0, which cannot happen here: the conics are positive definite (eps2d).
    alpha = torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))
    # Transmittance in log space: a cumulative sum is stabler than a cumulative product and its gradient
    # needs no division by (1 - alpha).
    log_1m = torch.log1p(-alpha)
    log_t_incl = torch.cumsum(log_1m, dim=1)
    t_excl = torch.exp(log_t_incl - log_1m)
    # gsplat stops a pixel at the first Gaussian that would bring its transmittance to 1e-4 or below and
    # leaves that one out; transmittance only falls, so the kept ones are a prefix.
    in_prefix = (log_t_incl > math.log(T_MIN)).detach()
    weights = torch.where(in_prefix, alpha * t_excl, torch.zeros_like(alpha))
    rgb = weights @ colors
    acc = weights.sum(dim=1)
    depth = (weights @ depths) / acc.clamp(min=1e-10)
    return rgb, acc, depth


TILE = 16  # px; gsplat's tile size


def _tiles(height: int, width: int, device: torch.device) -> list[tuple[tuple[int, int, int, int], Tensor]]:
    """Tiles as (x0, y0, x1, y1) with the row-major indices of their pixels."""
    out = []
    for y0 in range(0, height, TILE):
        for x0 in range(0, width, TILE):
            y1, x1 = min(y0 + TILE, height), min(x0 + TILE, width)
            ys = torch.arange(y0, y1, device=device)[:, None]
            xs = torch.arange(x0, x1, device=device)[None, :]
            out.append(((x0, y0, x1, y1), (ys * width + xs).reshape(-1)))
    return out


def rasterize_dense(
    means: Float[Tensor, "N 3"],
    quats: Float[Tensor, "N 4"],
    scales: Float[Tensor, "N 3"],
    opacities: Float[Tensor, "N"],
    colors: Float[Tensor, "N 3"] | Float[Tensor, "B N 3"],
    viewmats: Float[Tensor, "B 4 4"],
    Ks: Float[Tensor, "B 3 3"],
    width: int,
    height: int,
    backgrounds: Float[Tensor, "B 3"] | None = None,
    eps2d: float = EPS2D,
    antialiased: bool = False,
) -> SplatOutput:
    """Dense torch splatting (see the module docstring): every Gaussian at every pixel, one view at a time.

    ``antialiased`` scales each splat's opacity by ``Projection.compensation`` (gsplat's rasterize_mode)."""
    B = viewmats.shape[0]
    proj = project(means, quats, scales, opacities, viewmats, Ks, width, height, eps2d)
    view_opacities = opacities[None] * proj.compensation if antialiased else opacities[None].expand(B, -1)
    means2d = proj.means2d
    if means2d.requires_grad:
        means2d.retain_grad()
    if colors.dim() == 2:
        colors = colors[None].expand(B, -1, -1)
    ys, xs = torch.meshgrid(
        torch.arange(height, device=means.device, dtype=means.dtype) + 0.5,
        torch.arange(width, device=means.device, dtype=means.dtype) + 0.5,
        indexing="ij",
    )
    pixels = torch.stack([xs, ys], dim=-1).reshape(-1, 2)
    tiles = _tiles(height, width, means.device)
    order = torch.argsort(torch.cat([pix for _, pix in tiles]))  # tile-major rows back to row-major pixels
    rgbs, alphas, depths = [], [], []
    for b in range(B):
        # Only visible Gaussians, sorted by camera depth (gsplat sorts per tile by depth, the same order).
        idx = torch.nonzero(proj.visible[b], as_tuple=True)[0]
        idx = idx[torch.argsort(proj.depths[b, idx].detach())]
        centre, radius = means2d[b, idx].detach(), proj.radii[b, idx]
        lo, hi = centre - radius, centre + radius
        parts = []
        for (x0, y0, x1, y1), pix in tiles:
            # As in gsplat, a Gaussian only reaches the tiles its box overlaps; outside it alpha < 1/255,
            # which compositing skips anyway, so this changes the cost, not the image.
            near = (hi[:, 0] > x0) & (lo[:, 0] < x1) & (hi[:, 1] > y0) & (lo[:, 1] < y1)
            t = idx[near]
            parts.append(_composite_view(means2d[b, t], proj.conics[b, t], view_opacities[b, t], colors[b, t],
                                         proj.depths[b, t], pixels[pix]))
        rgb, acc, depth = (torch.cat([p[i] for p in parts])[order] for i in range(3))
        if backgrounds is not None:
            rgb = rgb + backgrounds[b] * (1.0 - acc[:, None])
        rgbs.append(rgb.reshape(height, width, -1))
        alphas.append(acc.reshape(height, width, 1))
        depths.append(depth.reshape(height, width, 1))
    return SplatOutput(torch.stack(rgbs), torch.stack(alphas), torch.stack(depths), means2d, proj.visible)


def rasterize_gsplat(
    means: Float[Tensor, "N 3"],
    quats: Float[Tensor, "N 4"],
    scales: Float[Tensor, "N 3"],
    opacities: Float[Tensor, "N"],
    colors: Float[Tensor, "N 3"] | Float[Tensor, "B N 3"],
    viewmats: Float[Tensor, "B 4 4"],
    Ks: Float[Tensor, "B 3 3"],
    width: int,
    height: int,
    backgrounds: Float[Tensor, "B 3"] | None = None,
    eps2d: float = EPS2D,
    antialiased: bool = False,
) -> SplatOutput:
    """gsplat's CUDA rasteriser with the same inputs and outputs as ``rasterize_dense``."""
    import gsplat  # lazily: CUDA only, and its first call compiles kernels (about a minute)

    render, alpha, meta = gsplat.rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        near_plane=NEAR_PLANE, eps2d=eps2d, render_mode="RGB+ED", backgrounds=backgrounds,
        rasterize_mode="antialiased" if antialiased else "classic",
        # Unpacked: meta["means2d"] and meta["radii"] are [B, N, ...], indexed like the Gaussians, which is
        # what the densification statistics need.
        packed=False,
    )
    means2d = meta["means2d"]
    if means2d.requires_grad:
        means2d.retain_grad()  # gsplat's documented way to read the 2D positional gradient after backward
    visible = (meta["radii"] > 0).all(dim=-1) if meta["radii"].dim() == 3 else meta["radii"] > 0
    return SplatOutput(render[..., :3], alpha, render[..., 3:4], means2d, visible)


def rasterize(
    means: Float[Tensor, "N 3"],
    quats: Float[Tensor, "N 4"],
    scales: Float[Tensor, "N 3"],
    opacities: Float[Tensor, "N"],
    colors: Float[Tensor, "N 3"] | Float[Tensor, "B N 3"],
    viewmats: Float[Tensor, "B 4 4"],
    Ks: Float[Tensor, "B 3 3"],
    width: int,
    height: int,
    backgrounds: Float[Tensor, "B 3"] | None = None,
    backend: str = "auto",
    antialiased: bool = False,
) -> SplatOutput:
    """Render Gaussians: gsplat for CUDA tensors, the dense renderer otherwise (``backend`` forces one).

    ``antialiased``: opacity compensation for the eps2d widening (see ``Projection.compensation``)."""
    if backend == "auto":
        backend = "gsplat" if means.is_cuda else "dense"
    if backend == "gsplat":
        return rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds,
                                antialiased=antialiased)
    if backend == "dense":
        return rasterize_dense(means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds,
                               antialiased=antialiased)
    raise ValueError(f"unknown splatting backend {backend!r}: use 'auto', 'gsplat' or 'dense'")


__all__ = [
    "SplatOutput",
    "Projection",
    "intrinsics",
    "opengl_c2w_to_opencv_viewmat",
    "views_to_opencv",
    "quat_to_rotmat",
    "covariance_3d",
    "project",
    "rasterize_dense",
    "rasterize_gsplat",
    "rasterize",
    "NEAR_PLANE",
    "EPS2D",
    "ALPHA_MIN",
    "ALPHA_MAX",
    "T_MIN",
]

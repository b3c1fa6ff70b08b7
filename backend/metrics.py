"""Figures that measure an image against the procedural world's ground truth.

- silhouette IoU: pixels classified as object (nearer the object's true mean colour than the
  background colour, and clearly off the background) against the same classification of the
  true render;
- colour error: distance between mean colours over the true object region;
- background error: how far the rest of the image strays from the background (halos, noise,
  oversaturated rims land here, so they are reported rather than hidden in the IoU).
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from backend.priors.procedural.world import BACKGROUND

# A pixel can only be object when its RGB differs from the background by more than this
# (Euclidean, [0, 1]): above the speckle a 3x3 median leaves of the 2D experiment's initial noise
# (std 0.05 per channel), below the distance of any non-white catalogue colour's shadowed side.
OBJECT_THRESHOLD = 0.12


def median3(image: Float[Tensor, "C H W"]) -> Float[Tensor, "C H W"]:
    """3x3 median per channel: a silhouette is a region, so isolated speckle must not count as one."""
    padded = torch.nn.functional.pad(image[None], (1, 1, 1, 1), mode="replicate")[0]
    patches = padded.unfold(1, 3, 1).unfold(2, 3, 1)  # C H W 3 3
    return patches.flatten(-2).median(dim=-1).values


def _background(image: Tensor) -> Tensor:
    return torch.tensor(BACKGROUND, dtype=image.dtype, device=image.device).view(3, 1, 1)


def true_region(truth: Float[Tensor, "3 H W"]) -> Float[Tensor, "H W"]:
    return ((truth - _background(truth)).norm(dim=0) > OBJECT_THRESHOLD).float()


def object_mask(image: Float[Tensor, "3 H W"], object_colour: Float[Tensor, "3"]) -> Float[Tensor, "H W"]:
    px = median3(image)
    d_bg = (px - _background(image)).norm(dim=0)
    d_obj = (px - object_colour.view(3, 1, 1)).norm(dim=0)
    return ((d_bg > OBJECT_THRESHOLD) & (d_obj < d_bg)).float()


def _mean_colour(image: Tensor, region: Tensor) -> Tensor:
    return (image * region).flatten(1).sum(-1) / region.sum().clamp(min=1)


def silhouette_iou(image: Float[Tensor, "3 H W"], truth: Float[Tensor, "3 H W"]) -> float:
    colour = _mean_colour(truth, true_region(truth))
    a, b = object_mask(image, colour), object_mask(truth, colour)
    union = torch.clamp(a + b, max=1).sum()
    return float((a * b).sum() / union) if union > 0 else 1.0


def colour_error(image: Float[Tensor, "3 H W"], truth: Float[Tensor, "3 H W"]) -> float:
    """Distance (RGB, [0, 1]) between the mean colours of the two images over the true object region."""
    m = true_region(truth)
    return float((_mean_colour(image, m) - _mean_colour(truth, m)).norm())


def background_error(image: Float[Tensor, "3 H W"], truth: Float[Tensor, "3 H W"]) -> float:
    """Mean RGB distance from the background colour outside the true object region."""
    outside = 1 - true_region(truth)
    d = (image - _background(image)).norm(dim=0)
    return float((d * outside).sum() / outside.sum().clamp(min=1))


def image_figures(image: Float[Tensor, "3 H W"], truth: Float[Tensor, "3 H W"]) -> dict[str, float]:
    return {
        "silhouette_iou": silhouette_iou(image, truth),
        "colour_error": colour_error(image, truth),
        "background_error": background_error(image, truth),
    }


def mesh_occupancy(vertices: np.ndarray, faces: np.ndarray, points_axis: np.ndarray) -> np.ndarray:
    """Which points of the grid ``points_axis``^3 (indexing ij) lie inside a closed triangle mesh.

    Casts one ray along +x per (y, z) grid line and counts crossings (parity), so the mesh an artist
    gets is what is measured: a hollow density field whose inner shell was removed as a separate
    component still counts as solid, and a mesh with holes loses what leaks.
    """
    n = len(points_axis)
    lo, step = float(points_axis[0]), float(points_axis[1] - points_axis[0])
    # A tiny irrational offset keeps rays off mesh edges and vertices, which lie on grid planes.
    y_axis, z_axis = points_axis + step * 1.3e-3 * np.sqrt(2), points_axis + step * 1.7e-3 * np.sqrt(3)
    tri = vertices[faces].astype(np.float64)  # F 3 3
    crossings = np.zeros((n, n, n + 1), dtype=np.int32)
    (a, b, c) = tri[:, 0], tri[:, 1], tri[:, 2]
    ymin, ymax = tri[..., 1].min(1), tri[..., 1].max(1)
    zmin, zmax = tri[..., 2].min(1), tri[..., 2].max(1)
    j0 = np.searchsorted(y_axis, ymin); j1 = np.searchsorted(y_axis, ymax, side="right")
    k0 = np.searchsorted(z_axis, zmin); k1 = np.searchsorted(z_axis, zmax, side="right")
    counts = (j1 - j0).clip(0) * (k1 - k0).clip(0)
    face_of = np.repeat(np.arange(len(tri)), counts)
    if len(face_of) == 0:
        return np.zeros((n, n, n), dtype=bool)
    start = np.repeat(np.cumsum(counts) - counts, counts)
    local = np.arange(len(face_of)) - start
    width = (k1 - k0).clip(1)[face_of]
    j = j0[face_of] + local // width
    k = k0[face_of] + local % width
    py, pz = y_axis[j], z_axis[k]
    fa, fb, fc = a[face_of], b[face_of], c[face_of]
    # Barycentric coordinates of (py, pz) in the triangle's projection on the y-z plane.
    det = (fb[:, 1] - fa[:, 1]) * (fc[:, 2] - fa[:, 2]) - (fc[:, 1] - fa[:, 1]) * (fb[:, 2] - fa[:, 2])
    ok = np.abs(det) > 1e-15
    safe = np.where(ok, det, 1.0)
    u = ((py - fa[:, 1]) * (fc[:, 2] - fa[:, 2]) - (fc[:, 1] - fa[:, 1]) * (pz - fa[:, 2])) / safe
    v = ((fb[:, 1] - fa[:, 1]) * (pz - fa[:, 2]) - (py - fa[:, 1]) * (fb[:, 2] - fa[:, 2])) / safe
    inside = ok & (u >= 0) & (v >= 0) & (u + v <= 1)
    x_hit = fa[:, 0] + u * (fb[:, 0] - fa[:, 0]) + v * (fc[:, 0] - fa[:, 0])
    first = np.ceil((x_hit - lo) / step).clip(0, n).astype(np.int64)  # first grid x beyond the crossing
    np.add.at(crossings, (j[inside], k[inside], first[inside]), 1)
    parity = np.cumsum(crossings, axis=2)[..., :n] % 2 == 1  # (y, z, x)
    return parity.transpose(2, 0, 1)


def voxel_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0

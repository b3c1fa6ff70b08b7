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

from backend.export.mesh import connected_components
from backend.priors.procedural import world
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


# ---------------------------------------------------------------------------------------------
# Figures of an exported mesh (what the artist gets) against the procedural world's true object
# ---------------------------------------------------------------------------------------------

# Scales tried by scale_aligned_iou: log-spaced so a mesh half or twice the true size is found alike.
ALIGN_SCALES = np.exp(np.linspace(np.log(0.5), np.log(2.0), 29))


def scale_aligned_iou(vertices: np.ndarray, faces: np.ndarray, shape: str, resolution: int = 64,
                      scales: np.ndarray = ALIGN_SCALES) -> tuple[float, float]:
    """The best voxel IoU of the mesh scaled about the origin by one of ``scales``, and that scale.

    IoU(s M, T) = IoU(M, T / s), so the mesh is voxelised once, on a grid that holds it and every scaled truth
    (T / s reaches 0.45 / s), and the truth is resampled per scale.
    """
    extent = max(float(np.abs(vertices).max()), 0.45 / float(scales.min())) * 1.02
    axis = np.linspace(-extent, extent, resolution)
    grid = torch.as_tensor(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3))
    occupied = mesh_occupancy(vertices, faces, axis)
    best = (0.0, 1.0)
    for s in scales:
        truth = (world.sdf(shape, grid * float(s)) < 0).numpy().reshape((resolution,) * 3)
        iou = voxel_iou(occupied, truth)
        if iou > best[0]:
            best = (iou, float(s))
    return best


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` points uniform over the surface's area: (points [n, 3], face index [n], barycentrics [n, 3])."""
    tri = vertices[faces].astype(np.float64)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    face = rng.choice(len(faces), size=n, p=area / area.sum())
    r1, r2 = np.sqrt(rng.random(n)), rng.random(n)
    bary = np.stack([1 - r1, r1 * (1 - r2), r1 * r2], axis=1)
    return np.einsum("nk,nkj->nj", bary, tri[face]), face, bary


def true_surface_points(shape: str, n: int, rng: np.random.Generator, shell: float = 0.01) -> np.ndarray:
    """About ``n`` points on the zero set of ``shape``'s SDF, near-uniform over its area: points drawn uniformly
    in the box, kept within a thin shell around the surface, then projected onto it along the SDF gradient."""
    kept: list[np.ndarray] = []
    while sum(len(k) for k in kept) < n:
        p = torch.as_tensor(rng.uniform(-0.5, 0.5, size=(400_000, 3)), dtype=torch.float64)
        kept.append(p[world.sdf(shape, p).abs() < shell].numpy())
    p = torch.as_tensor(np.concatenate(kept)[:n])
    for _ in range(4):  # Newton steps onto the surface: exact SDFs have unit gradients
        q = p.clone().requires_grad_(True)
        d = world.sdf(shape, q)
        (grad,) = torch.autograd.grad(d.sum(), q)
        # sqrt(0) in an SDF (a cone's apex) has no gradient: such points stay where they are, within the shell.
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        p = (q - d[:, None] * torch.nn.functional.normalize(grad, dim=-1)).detach()
    return p.numpy()


# Surface normals. A sample's true normal is the SDF's gradient at the sample's nearest true surface point (the
# sample projected along the gradient). At a sharp edge (a cylinder's or cone's rim, a cone's apex; the cube's
# edges are rounded by only 0.02, less than a draft voxel) that gradient jumps, while any mesh, even marching cubes
# of the exact SDF, bevels the edge over about a voxel: there the angle measures the grid, not lumps, and which side
# a sample inside the bevel projects to is a coin toss. So samples whose true normal is not constant within
# NORMAL_EDGE_BAND of their surface point are left out (the share left out is reported, so a measure that leaves out
# most of a surface shows it). The band is in world units, fixed, so runs at any export resolution are measured alike:
# 0.03 is under two draft voxels (1.1 / 63), and leaves out about a fifth of a cube, a tenth of a cylinder.
NORMAL_EDGE_BAND = 0.03
# A sample is in the edge band when a probe NORMAL_EDGE_BAND inward or along the surface finds a true normal turned
# more than this from its own: a 90-degree edge turns it fully, the most curved smooth part of the catalogue (the
# torus's tube, radius 0.12) only 0.03 / 0.12 rad = 14 degrees.
NORMAL_EDGE_TURN_DEG = 30.0
# A sample whose face normal is off the true one by more than this counts as "off" (normal_off_share): well above the
# few degrees of a clean marching-cubes facet, below the tilt of a voxel-sized step.
NORMAL_OFF_DEG = 20.0


def _sdf_gradient(shape: str, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The SDF's value and unit gradient (autograd) at ``points``; a gradient that does not exist (sqrt(0) at a
    cone's apex) comes back as zeros."""
    q = torch.as_tensor(points, dtype=torch.float64).requires_grad_(True)
    d = world.sdf(shape, q)
    (grad,) = torch.autograd.grad(d.sum(), q)
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    return d.detach().numpy(), torch.nn.functional.normalize(grad, dim=-1).numpy()


def normal_figures(points: np.ndarray, normals: np.ndarray, shape: str,
                   band: float = NORMAL_EDGE_BAND) -> dict[str, float]:
    """Angles between mesh normals ``normals`` [N, 3] (unit, outward) at area-uniform surface samples ``points``
    and the true surface's normal at each sample's nearest true point, away from sharp edges (see NORMAL_EDGE_BAND):

    - ``normal_error_mean_deg``: mean angle, degrees (a flipped face counts 180);
    - ``normal_off_share``: share of the measured area off by more than NORMAL_OFF_DEG;
    - ``normal_edge_share``: share of the samples left out as within ``band`` of a sharp edge.
    """
    d, grad = _sdf_gradient(shape, points)
    # An exact SDF's one step lands on the nearest true point; the normal is read a hair outside it, because an SDF
    # built on sqrt (the cone's) has no gradient exactly on its zero set. Outside the surface the gradient at
    # q + e n is n itself for e below the smallest concave radius (the torus's inner 0.18).
    surface = points - d[:, None] * grad + 1e-3 * grad
    _, true_normal = _sdf_gradient(shape, surface)
    # Two tangents per sample, then probes inward and along the surface, each compared with the sample's own normal.
    helper = np.where(np.abs(true_normal[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    t1 = np.cross(true_normal, helper)
    t1 /= np.maximum(np.linalg.norm(t1, axis=1, keepdims=True), 1e-12)
    t2 = np.cross(true_normal, t1)
    cos_edge = np.cos(np.radians(NORMAL_EDGE_TURN_DEG))
    edge = np.linalg.norm(true_normal, axis=1) < 0.5  # no gradient: on the apex itself
    for direction in (-true_normal, t1, -t1, t2, -t2):
        _, probe = _sdf_gradient(shape, surface + band * direction)
        edge |= (probe * true_normal).sum(1) < cos_edge
    cos = np.clip((normals * true_normal).sum(1), -1.0, 1.0)
    angle = np.degrees(np.arccos(cos))[~edge]
    if len(angle) == 0:
        return {"normal_error_mean_deg": float("nan"), "normal_off_share": float("nan"), "normal_edge_share": 1.0}
    return {"normal_error_mean_deg": float(angle.mean()), "normal_off_share": float((angle > NORMAL_OFF_DEG).mean()),
            "normal_edge_share": float(edge.mean())}


def _nearest_distance(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Distance from each point of ``a`` to its nearest point of ``b``."""
    tb = torch.as_tensor(b, dtype=torch.float32)
    out = [torch.cdist(torch.as_tensor(a[i:i + chunk], dtype=torch.float32), tb).min(dim=1).values
           for i in range(0, len(a), chunk)]
    return torch.cat(out).numpy() if out else np.zeros(0)


def count_components(vertices: np.ndarray, faces: np.ndarray) -> int:
    """Connected pieces of the surface. Vertices are merged by position first: UV seams split a vertex into
    copies with the same position, which are one point of the surface."""
    if len(faces) == 0:
        return 0
    _, merged = np.unique(np.round(vertices, 6), axis=0, return_inverse=True)
    merged = merged.reshape(-1)
    labels = connected_components(merged[faces], int(merged.max()) + 1)
    return int(len(np.unique(labels[merged[faces[:, 0]]])))


def shape_ious(occupied: np.ndarray, axis: np.ndarray) -> dict[str, float]:
    """Voxel IoU of an occupancy grid (``mesh_occupancy`` over ``axis``) with every catalogue shape's solid."""
    grid = torch.as_tensor(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3))
    shape = occupied.shape
    return {name: voxel_iou(occupied, (world.sdf(name, grid) < 0).numpy().reshape(shape)) for name in world.SHAPES}


def nearest_colour(rgb: np.ndarray) -> str:
    """The catalogue colour nearest an albedo (RGB in [0, 1])."""
    return min(world.COLOURS, key=lambda name: float(np.linalg.norm(np.asarray(rgb) - np.array(world.COLOURS[name]))))


def landed_object(glb: dict[str, np.ndarray], samples: int = 20000, seed: int = 0,
                  resolution: int = 64) -> dict[str, object]:
    """Which catalogue object a mesh is (for a prompt with many: "a cube" is ten): the shape whose solid it overlaps
    most (voxel IoU) and the colour nearest its surface's mean albedo. ``landed`` reads as a prompt ("a blue cube"),
    so ``mesh_figures(glb, landed)`` measures the mesh against it."""
    vertices, faces = glb["vertices"].astype(np.float64), glb["faces"]
    if len(faces) == 0:
        return {"landed": None, "nearest_shape": None, "nearest_colour": None, "shape_ious": {}}
    axis = np.linspace(-0.55, 0.55, resolution)
    ious = shape_ious(mesh_occupancy(vertices, faces, axis), axis)
    points, face, bary = sample_surface(vertices, faces, samples, np.random.default_rng(seed))
    uv = np.einsum("nk,nkj->nj", bary, glb["uvs"][faces[face]].astype(np.float64))
    texture = glb["texture"]
    h, w = texture.shape[:2]
    cols = np.clip((uv[:, 0] * w).astype(np.int64), 0, w - 1)
    rows = np.clip(((1.0 - uv[:, 1]) * h).astype(np.int64), 0, h - 1)
    mean = (texture[rows, cols, :3].astype(np.float64) / 255.0).mean(0)
    shape, colour = max(ious, key=ious.get), nearest_colour(mean)
    return {"landed": f"a {colour} {shape}", "nearest_shape": shape, "nearest_colour": colour,
            "shape_ious": {k: round(v, 4) for k, v in ious.items()}}


def mesh_figures(glb: dict[str, np.ndarray], prompt: str, samples: int = 20000, seed: int = 0,
                 resolution: int = 64) -> dict[str, object]:
    """Figures of a textured mesh (``backend.export.meshfile.read_glb``'s arrays, world +Z up) against the one
    object ``prompt`` names in the procedural world:

    - ``voxel_iou``: with the true solid on a ``resolution``^3 grid (the mesh voxelised by ray parity);
    - ``scaled_iou`` / ``best_scale``: the voxel IoU after scaling the mesh about the centre by the factor (0.5-2)
      that maximises it, and that factor: shape apart from size. A prior that is not told the camera's distance
      (Stable Diffusion) does not fix an object's size, so this tells "the right object, too small" from "the wrong
      object" (docs/METHODS.md, world-SD);
    - ``excess_volume`` / ``missing_volume``: the mesh's solid outside the true solid / the true solid outside the
      mesh's, each as a share of the true volume;
    - ``chamfer``: mean of the two one-sided mean distances (world units; the object spans about 0.7) between
      area-uniform samples of the mesh and of the true surface;
    - ``colour_error_mean`` / ``colour_error_median``: distance of the surface's mean / per-channel median
      albedo (texture at area-uniform samples) to the named colour, RGB in [0, 1];
    - ``wrong_colour_share``: share of the surface whose albedo is nearer another catalogue colour;
    - ``nearest_colour``: the catalogue colour nearest the mean albedo; ``components``: pieces of the surface;
    - ``wrong_colour_by_facing``: the wrong-colour share of the surface facing down (normal z < -0.7), up (> 0.7)
      and sideways, with each part's share of the area: the training cameras see bottoms least, so this tells
      an unseen underside from a wrongly coloured object;
    - ``normal_error_mean_deg`` / ``normal_off_share`` / ``normal_edge_share``: how far the faces' normals turn from
      the true surface's (``normal_figures``): lumps and voxel steps that the IoU does not see.
    """
    meaning = world.parse_prompt(prompt)
    if len(meaning.shapes) != 1 or len(meaning.colours) != 1:
        raise ValueError(f"mesh figures need a prompt naming one shape and one colour, got {prompt!r}")
    shape, named = meaning.shapes[0], meaning.colours[0]
    vertices, faces = glb["vertices"].astype(np.float64), glb["faces"]
    if len(faces) == 0:
        return {"voxel_iou": 0.0, "chamfer": float("inf"), "colour_error_mean": float("inf"),
                "colour_error_median": float("inf"), "wrong_colour_share": 1.0, "nearest_colour": None,
                "components": 0, "faces": 0, "scaled_iou": 0.0, "best_scale": None,
                "normal_error_mean_deg": float("nan"), "normal_off_share": float("nan"), "normal_edge_share": 1.0}
    rng = np.random.default_rng(seed)
    axis = np.linspace(-0.55, 0.55, resolution)
    grid = torch.as_tensor(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3))
    truth = (world.sdf(shape, grid) < 0).numpy().reshape((resolution,) * 3)
    occupied = mesh_occupancy(vertices, faces, axis)
    iou = voxel_iou(occupied, truth)
    scaled_iou, best_scale = scale_aligned_iou(vertices, faces, shape, resolution + resolution // 4)

    points, face, bary = sample_surface(vertices, faces, samples, rng)
    to_truth = np.abs(world.sdf(shape, torch.as_tensor(points)).numpy())
    to_mesh = _nearest_distance(true_surface_points(shape, samples, rng), points)
    chamfer = 0.5 * (float(to_truth.mean()) + float(to_mesh.mean()))

    uv = np.einsum("nk,nkj->nj", bary, glb["uvs"][faces[face]].astype(np.float64))
    texture = glb["texture"]
    h, w = texture.shape[:2]
    cols = np.clip((uv[:, 0] * w).astype(np.int64), 0, w - 1)
    rows = np.clip(((1.0 - uv[:, 1]) * h).astype(np.int64), 0, h - 1)
    albedo = texture[rows, cols, :3].astype(np.float64) / 255.0
    catalogue = np.array([world.COLOURS[c] for c in world.COLOURS])
    names = list(world.COLOURS)
    nearest = np.argmin(np.linalg.norm(albedo[:, None] - catalogue[None], axis=-1), axis=1)
    true_colour = np.array(world.COLOURS[named])
    mean, median = albedo.mean(0), np.median(albedo, axis=0)
    wrong = nearest != names.index(named)
    corners = vertices[faces[face]]
    face_normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    face_normal /= np.maximum(np.linalg.norm(face_normal, axis=1, keepdims=True), 1e-12)
    normal_z = face_normal[:, 2]
    by_facing = {}
    for part, sel in (("down", normal_z < -0.7), ("side", np.abs(normal_z) <= 0.7), ("up", normal_z > 0.7)):
        by_facing[part] = {"area": float(sel.mean()), "wrong": float(wrong[sel].mean()) if sel.any() else 0.0}
    return {
        "voxel_iou": iou,
        "scaled_iou": scaled_iou,
        "best_scale": best_scale,
        # What the IoU lost, split: solid outside the true object (bulges, floaters, a filled hole) and true solid
        # the mesh lacks, each as a share of the true volume.
        "excess_volume": float((occupied & ~truth).sum() / truth.sum()),
        "missing_volume": float((truth & ~occupied).sum() / truth.sum()),
        "chamfer": chamfer,
        "colour_error_mean": float(np.linalg.norm(mean - true_colour)),
        "colour_error_median": float(np.linalg.norm(median - true_colour)),
        "wrong_colour_share": float(wrong.mean()),
        "wrong_colour_by_facing": by_facing,
        "nearest_colour": names[int(np.argmin(np.linalg.norm(catalogue - mean, axis=1)))],
        "mean_albedo": mean.round(4).tolist(),
        **normal_figures(points, face_normal, shape),
        "components": count_components(vertices, faces),
        "faces": int(len(faces)),
    }

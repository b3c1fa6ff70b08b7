"""A user's triangle mesh with a learnable colour field: the representation a texture job trains.

Only appearance is optimised. The geometry is a fixed buffer, so each camera's visibility (face id and barycentrics
per pixel, ``rasterise.py``) is computed once and cached; a render is then a differentiable colour lookup at the
cached surface points, shaded like the other representations (lit diffuse with the view's light, or textureless)
and composited over the prior's background (mid grey when it has none, as the Gaussians do).

Why a hash-grid colour field at surface points (CSD's choice) and not a texture image looked up by UV: at the
prior's 32-64 px a render touches a few hundred texels of a 256-1024 texel image, so most texels would never get
a gradient and a bake would be speckled; the hash grid's coarse levels share colour between nearby points, and
the bake then samples the field at each texel's surface point (``export/texture.py``), at any texture size.

Why a Representation outside ``REPRESENTATIONS``: the training loop (``Trainer``) takes any representation
instance, so a texture job reuses it whole (cameras, camera bank, methods, cadence, previews); but this one cannot
be built from settings alone (it needs the user's mesh), so it is not a choice of the ``representation`` setting
that ``generate``, the wire and the panel offer. A checkpoint keeps the mesh (``extra_state``), so a texture job
resumes, refines and is edited by text from its checkpoint alone (``registry.checkpoint_class``).

The same scene serves a generated asset's texture refinement (``backend/jobs/texture_refine.py``): the extracted
mesh, in the cameras' frame already, with the UVs its bake will use.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from backend.export.mesh import Mesh, vertex_normals
from backend.scene.cameras import Views
from backend.scene.hashgrid import HashGrid
from backend.scene.rasterise import rasterise
from backend.scene.representation import RenderOutput, Representation

# Renders are rasterised at this many times the asked size and averaged down: a pixel's area, as the procedural
# world renders its truth and the Gaussians theirs, so silhouettes are anti-aliased like the prior's images.
SUPERSAMPLE = 2
# Cameras whose visibility is kept; the camera bank (96 by default for camera-aware priors) and the turntable fit.
RASTER_CACHE = 256
# A mesh is fitted into the world the cameras orbit when it does not already fill it: its bounding box centred on
# the origin and its longest side scaled to FIT_SIZE (the generator's objects span 0.6-0.8). A mesh already inside
# [-FIT_BOUND, FIT_BOUND]^3 with a longest side of at least FIT_MIN is left as it is (the catalogue's shapes).
FIT_SIZE = 0.7
FIT_BOUND = 0.5
FIT_MIN = 0.35


@dataclass(frozen=True)
class Fit:
    """World point = (mesh point - centre) * scale: where the mesh sits for the cameras."""

    centre: tuple[float, float, float]
    scale: float

    @classmethod
    def for_vertices(cls, vertices: np.ndarray) -> Fit:
        lo, hi = vertices.min(0).astype(np.float64), vertices.max(0).astype(np.float64)
        longest = float((hi - lo).max())
        if longest <= 0:
            raise ValueError("the mesh has no extent (all its vertices coincide)")
        if (np.abs(lo) <= FIT_BOUND).all() and (np.abs(hi) <= FIT_BOUND).all() and longest >= FIT_MIN:
            return cls((0.0, 0.0, 0.0), 1.0)
        centre = (lo + hi) / 2
        return cls((float(centre[0]), float(centre[1]), float(centre[2])), FIT_SIZE / longest)

    def apply(self, points: Tensor) -> Tensor:
        return (points - points.new_tensor(self.centre)) * self.scale


class ColourField(nn.Module):
    """Albedo in [0, 1] at world points of the unit box: a hash grid and a one-layer head, as the NeRF's albedo."""

    def __init__(self, levels: int, log2_table: int, hidden: int = 64, bound: float = 0.5) -> None:
        super().__init__()
        self.bound = bound
        self.encoding = HashGrid(levels, 2, log2_table)
        self.mlp = nn.Sequential(nn.Linear(self.encoding.output_dim, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        return torch.sigmoid(self.mlp(self.encoding((points / self.bound + 1) / 2)))


class TexturedMesh(Representation):
    kind = "textured_mesh"

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any],
                      background: tuple[float, float, float] | None) -> TexturedMesh:
        raise ValueError("a textured mesh is built from a mesh (TexturedMesh.from_mesh), not from settings alone")

    @classmethod
    def from_mesh(cls, mesh: Mesh, settings: Mapping[str, Any], background: tuple[float, float, float] | None,
                  uvs: np.ndarray | None = None, name: str = "") -> TexturedMesh:
        """The scene of ``mesh`` (its own coordinates; fitted for the cameras when ``texture_fit``), with a colour
        field sized like the NeRF's hash grid (``nerf_grid_levels``, ``nerf_grid_log2_table``). ``uvs`` (per
        vertex) and ``name`` travel with it for the export and the record."""
        fit = Fit.for_vertices(mesh.vertices) if settings["texture_fit"] else Fit((0.0, 0.0, 0.0), 1.0)
        return cls(mesh, fit, settings["nerf_grid_levels"], settings["nerf_grid_log2_table"], background, uvs, name)

    @classmethod
    def from_checkpoint(cls, state_dict: dict[str, Tensor], extra: dict[str, Any], settings: Mapping[str, Any],
                        background: tuple[float, float, float] | None) -> TexturedMesh:
        """The scene a checkpoint saved: its mesh, UVs, fit and grid from ``extra``, its colour from the weights."""
        uvs = extra["uvs"]
        scene = cls(Mesh(extra["vertices"].cpu().numpy(), extra["faces"].cpu().numpy()),
                    Fit(tuple(float(c) for c in extra["fit_centre"]), float(extra["fit_scale"])),
                    int(extra["grid_levels"]), int(extra["grid_log2_table"]), background,
                    None if uvs is None else uvs.cpu().numpy(), str(extra["name"]))
        scene.load_state_dict(state_dict)
        return scene

    def __init__(self, mesh: Mesh, fit: Fit, grid_levels: int = 16, grid_log2_table: int = 19,
                 background: tuple[float, float, float] | None = None, uvs: np.ndarray | None = None,
                 name: str = "") -> None:
        super().__init__()
        if mesh.n_faces == 0:
            raise ValueError("cannot texture a mesh with no faces")
        self.mesh, self.uvs, self.name = mesh, uvs, name  # as given: what the export writes and the record names
        self.fit = fit
        self._grid = (grid_levels, grid_log2_table)
        vertices = fit.apply(torch.as_tensor(mesh.vertices, dtype=torch.float32))
        self.register_buffer("vertices", vertices, persistent=False)
        self.register_buffer("faces", torch.as_tensor(mesh.faces, dtype=torch.long), persistent=False)
        self.register_buffer("normals", torch.as_tensor(vertex_normals(mesh), dtype=torch.float32), persistent=False)
        self.register_buffer("background_colour", torch.tensor(background or (0.5, 0.5, 0.5), dtype=torch.float32),
                             persistent=False)
        self.field = ColourField(grid_levels, grid_log2_table)
        self._cache: OrderedDict[bytes, tuple[Tensor, Tensor, Tensor]] = OrderedDict()

    # --- visibility, once per camera -------------------------------------------------------------------
    def _surface(self, views: Views, i: int, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
        """(flat pixel index [N], world point [N, 3], unit normal facing the camera [N, 3]) of view ``i``."""
        key = b"".join(t.detach().to("cpu", torch.float32).numpy().tobytes()
                       for t in (views.c2w[i], views.fovy[i : i + 1])) + f"{height}x{width}".encode()
        hit = self._cache.get(key)
        if hit is not None and hit[0].device == self.vertices.device:
            self._cache.move_to_end(key)
            return hit
        raster = rasterise(self.vertices, self.faces, views.c2w[i], views.fovy[i], height, width)
        pix = raster.covered.reshape(-1).nonzero().squeeze(-1)
        corners = self.faces[raster.face_id.reshape(-1)[pix]]  # N 3
        bary = raster.bary.reshape(-1, 3)[pix]
        points = torch.einsum("nc,ncd->nd", bary, self.vertices[corners])
        normals = F.normalize(torch.einsum("nc,ncd->nd", bary, self.normals[corners]), dim=-1)
        # Lit from whichever side faces the camera: a user's mesh may be open or wound inconsistently, and the
        # side a camera sees is the side its colour is for.
        toward_camera = views.c2w[i, :3, 3] - points
        normals = torch.where(((normals * toward_camera).sum(-1, keepdim=True) < 0), -normals, normals)
        entry = (pix, points, normals)
        self._cache[key] = entry
        if len(self._cache) > RASTER_CACHE:
            self._cache.popitem(last=False)
        return entry

    # --- Representation ---------------------------------------------------------------------------------
    def render(self, views: Views, height: int, width: int, shading: str = "diffuse") -> RenderOutput:
        h, w = height * SUPERSAMPLE, width * SUPERSAMPLE
        rgbs, alphas = [], []
        for i in range(len(views)):
            pix, points, normals = self._surface(views, i, h, w)
            if shading == "textureless":
                base = torch.ones_like(points)
            else:
                base = self.field(points)
            if shading == "albedo":
                colour = base
            else:
                lambert = (normals * views.light_dir[i]).sum(-1, keepdim=True).clamp(min=0)
                colour = base * (views.ambient + (1 - views.ambient) * lambert)
            covered = torch.zeros(h * w, 1, device=points.device, dtype=colour.dtype).index_fill(0, pix, 1.0)
            image = self.background_colour.to(colour.dtype).repeat(h * w, 1).index_put((pix,), colour)
            rgbs.append(image.reshape(h, w, 3).permute(2, 0, 1))
            alphas.append(covered.reshape(h, w, 1).permute(2, 0, 1))
        rgb = F.avg_pool2d(torch.stack(rgbs), SUPERSAMPLE)
        opacity = F.avg_pool2d(torch.stack(alphas), SUPERSAMPLE)
        return RenderOutput(rgb=rgb, opacity=opacity)

    def density(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N"]:
        raise NotImplementedError("a textured mesh has fixed geometry: it is never re-meshed from a density")

    def albedo(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        """The colour at world points (the fitted frame: ``mesh_albedo`` takes the mesh's own coordinates)."""
        return self.field(points)

    def mesh_albedo(self, points: Float[Tensor, "N 3"], normals: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        """The colour at points in the input mesh's own coordinates: what the bake samples at each texel."""
        return self.field(self.fit.apply(points))

    def optimiser_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": list(self.field.encoding.parameters()), "lr": lr, "weight_decay": 0.0},
                {"params": list(self.field.mlp.parameters()), "lr": lr * 0.1}]

    def extra_state(self) -> dict[str, Any]:
        """The mesh as given (own coordinates), its UVs, the fit and the grid's size: a checkpoint alone rebuilds
        the scene (plain tensors and numbers, for ``weights_only`` loading)."""
        return {"vertices": torch.from_numpy(self.mesh.vertices.copy()),
                "faces": torch.from_numpy(self.mesh.faces.astype(np.int64)),
                "uvs": None if self.uvs is None else torch.from_numpy(np.asarray(self.uvs, np.float32).copy()),
                "fit_centre": list(self.fit.centre), "fit_scale": self.fit.scale, "name": self.name,
                "grid_levels": self._grid[0], "grid_log2_table": self._grid[1]}


__all__ = ["ColourField", "Fit", "TexturedMesh"]

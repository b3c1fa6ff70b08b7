"""What the training loop and mesh export need from a 3D representation (NeRF or 3D Gaussians)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from backend.scene.cameras import Views

# Shading of a render (threestudio's names): "albedo" is the raw colour, "diffuse" multiplies it by
# ambient + (1 - ambient) max(0, n.l) with the view's light, "textureless" shades a white albedo.
SHADINGS: tuple[str, ...] = ("albedo", "diffuse", "textureless")


@dataclass
class RenderOutput:
    rgb: Float[Tensor, "B 3 H W"]  # composited over the background, [0, 1]
    opacity: Float[Tensor, "B 1 H W"]  # accumulated alpha of the object, [0, 1]
    depth: Float[Tensor, "B 1 H W"] | None = None
    # Regularisation terms this render makes available (e.g. NeRF's orientation loss), unweighted.
    losses: dict[str, Tensor] = field(default_factory=dict)


class Representation(nn.Module, ABC):
    """A 3D scene in the unit box around the origin (world +Z up, see cameras.py)."""

    kind: str

    @abstractmethod
    def render(self, views: Views, height: int, width: int, shading: str = "diffuse") -> RenderOutput:
        """Differentiable render of every view."""

    @abstractmethod
    def density(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N"]:
        """Volume density at world points (for mesh extraction)."""

    def density_grid(self, resolution: int, bound: float) -> Float[Tensor, "R R R"] | None:
        """The density on the grid ``linspace(-bound, bound, R)^3`` (index order x, y, z) when the representation
        has a faster way to fill it than evaluating ``density`` point by point; None otherwise."""
        return None

    @abstractmethod
    def albedo(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        """Colour in [0, 1] of the field at world points."""

    def surface_albedo(self, points: Float[Tensor, "N 3"], normals: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        """The albedo a camera sees at surface ``points`` looking along ``-normals`` (outward unit normals): what
        texture baking stores. A field whose colour at the surface is what the renderer shows (a NeRF's albedo
        at its density's level set) needs no more than ``albedo``; Gaussians override it."""
        return self.albedo(points)

    @abstractmethod
    def optimiser_groups(self, lr: float) -> list[dict[str, Any]]:
        """Parameter groups with their learning rates."""

    def before_step(self, step: int, total: int) -> None:
        """Hook before a training step (occupancy-grid updates and similar)."""

    def after_step(self, step: int, total: int, optimiser: torch.optim.Optimizer) -> None:
        """Hook after the optimiser step (densification and pruning of Gaussians and similar)."""

    def extra_state(self) -> dict[str, Any]:
        """What a checkpoint needs besides ``state_dict`` to rebuild this object (shapes, counts)."""
        return {}

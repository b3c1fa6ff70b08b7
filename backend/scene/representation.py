"""What the training loop and mesh export need from a 3D representation (NeRF or 3D Gaussians)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
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
    # What the representation's strategy reads from this render once the loss has been backpropagated (Gaussians:
    # the projected means, whose gradient drives densification); None for a representation without one.
    info: Any = None


class Strategy:
    """What changes a representation after each optimiser step besides the update itself (gsplat's strategy
    pattern: Gaussian densification and pruning). The training loop keeps the state that ``initialize_state``
    returns and hands it back every step with the step's render info, so the representation carries nothing from
    one call to the next for it. This base changes nothing: a representation without a strategy uses it."""

    def initialize_state(self) -> Any:
        return None

    def step_post_optimiser(self, scene: Representation, optimiser: torch.optim.Optimizer, state: Any, step: int,
                            total: int, info: Any) -> Any:
        """After ``optimiser.step()`` of step ``step`` (counted from 0) of a ``total``-step run; ``info`` is the
        step's ``RenderOutput.info``. May replace the scene's parameters and the optimiser's state for them."""
        return None


class Representation(nn.Module, ABC):
    """A 3D scene in the unit box around the origin (world +Z up, see cameras.py).

    A job names its representation by ``kind`` (the ``representation`` setting); ``backend/scene/registry.py``
    maps the names to the classes."""

    kind: str

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Mapping[str, Any],
                      background: tuple[float, float, float] | None) -> Representation:
        """A fresh scene sized by a job's settings, over the prior's background colour (None: the prior has none),
        on the CPU. Draws its initial weights from torch's global RNG or the ``seed`` setting."""

    @classmethod
    def from_checkpoint(cls, state_dict: dict[str, Tensor], extra: dict[str, Any], settings: Mapping[str, Any],
                        background: tuple[float, float, float] | None) -> Representation:
        """The scene a checkpoint saved (``state_dict`` and ``extra_state()``), on the CPU. By default the
        settings fix every shape, so a fresh scene takes the weights; a scene whose shapes change in training
        (Gaussians) rebuilds from ``extra``."""
        scene = cls.from_settings(settings, background)
        scene.load_state_dict(state_dict)
        return scene

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

    def strategy(self) -> Strategy:
        """The strategy the training loop runs after each optimiser step (see ``Strategy``)."""
        return Strategy()

    def extra_state(self) -> dict[str, Any]:
        """What a checkpoint needs besides ``state_dict`` to rebuild this object (shapes, counts)."""
        return {}

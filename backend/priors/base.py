"""The interface every diffusion prior implements.

A prior predicts noise for a batch of noisy samples under several text conditions
("branches") in one denoiser call, encodes renders into its own space with
gradients, and exposes its scheduler's cumulative alphas. Methods (backend/distill)
only ever see the predictions, never the prior.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from backend.scene.cameras import Views

# Conditioning branches a method may ask for (REFERENCE.md notation):
#   target          e_tgt  = eps(x_t; y)
#   null            e_null = eps(x_t; "")
#   negative        e_neg  = eps(x_t; y_gnp)   general negative prompt, no target words
#   target_negative e_tnp  = eps(x_t; y_tnp)   y_tnp = y + ", " + descriptors
BRANCHES: tuple[str, ...] = ("target", "null", "negative", "target_negative")


class PriorError(RuntimeError):
    """The prior cannot be built or cannot read a prompt; the message says why and what to do."""


@dataclass(frozen=True)
class PromptSet:
    """The texts behind each branch of one job."""

    target: str
    negative: str = ""
    target_negative_descriptors: str = ""

    @property
    def target_negative(self) -> str:
        d = self.target_negative_descriptors.strip().lstrip(",").strip()
        return f"{self.target}, {d}" if d else self.target

    def text(self, branch: str) -> str:
        if branch == "target":
            return self.target
        if branch == "null":
            return ""
        if branch == "negative":
            return self.negative
        if branch == "target_negative":
            return self.target_negative
        raise ValueError(f"unknown branch '{branch}'; branches are {', '.join(BRANCHES)}")


class DiffusionPrior(ABC):
    """A text-conditioned noise predictor with an encoder into its sample space."""

    name: str
    device: torch.device
    #: abar_t for t = 0 .. num_train_timesteps - 1, float32 on ``device``.
    alphas_cumprod: Float[Tensor, "T"]
    #: Shape of one sample in the prior's space, e.g. (4, 64, 64) for SD latents.
    sample_shape: tuple[int, int, int]
    #: Side of the square RGB image ``encode`` expects.
    image_size: int
    #: Whether the prior's predictions depend on the camera (the procedural world is; SD is not).
    camera_aware: bool = False
    #: A background colour the prior's images always have (renders then use it), or None to learn one.
    background: tuple[float, float, float] | None = None
    #: The shading the prior's images always have ("diffuse"), or None for the usual random mix.
    fixed_shading: str | None = None

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @abstractmethod
    def encode(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B C h w"]:
        """Images in [0, 1] -> samples in the prior's space, differentiably."""

    @abstractmethod
    def decode(self, samples: Float[Tensor, "B C h w"]) -> Float[Tensor, "B 3 H W"]:
        """Samples -> images in [0, 1] (for previews and the 2D experiment's output)."""

    def check_prompts(self, prompts: PromptSet) -> None:
        """Raise PriorError if the prior cannot read one of the prompts. Default: anything goes."""

    def predict_noise(
        self,
        x_t: Float[Tensor, "B C h w"],
        t: Int[Tensor, "B"],
        prompts: PromptSet,
        branches: Sequence[str],
        views: "Views | None" = None,
    ) -> dict[str, Float[Tensor, "B C h w"]]:
        """Noise predictions for each requested branch, from ONE batched denoiser evaluation."""
        unknown = [b for b in branches if b not in BRANCHES]
        if unknown or not branches:
            raise ValueError(f"branches must be a non-empty subset of {BRANCHES}, got {list(branches)}")
        if len(set(branches)) != len(branches):
            raise ValueError(f"branches repeat: {list(branches)}")
        stacked = self._denoise(x_t, t, [prompts.text(b) for b in branches], views)
        return {b: stacked[i] for i, b in enumerate(branches)}

    @abstractmethod
    def _denoise(
        self,
        x_t: Float[Tensor, "B C h w"],
        t: Int[Tensor, "B"],
        texts: list[str],
        views: "Views | None",
    ) -> Float[Tensor, "N B C h w"]:
        """One denoiser evaluation of every (text, sample) pair; N = len(texts)."""

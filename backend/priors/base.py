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
# Image-prompt branches (ModeDreamer's IP prior, seed 004 eq. 7), in the same one denoiser call:
#   image_target    e_IP(x_t; y, x_ref)   the target text and the reference image
#   image_null      e_IP(x_t; "", 0)      the IP prior's unconditional branch: empty text, a zero image embedding
# Only priors with ``supports_image_prompts`` answer them.
IMAGE_BRANCHES: tuple[str, ...] = ("image_target", "image_null")
ALL_BRANCHES: tuple[str, ...] = BRANCHES + IMAGE_BRANCHES


class PriorError(RuntimeError):
    """The prior cannot be built or cannot read a prompt; the message says why and what to do."""


@dataclass(frozen=True, eq=False)
class ImagePrompt:
    """A job's reference image and how strongly the image branches read it.

    ``scale`` is the IP-Adapter scale (ModeDreamer: 0.5); ``temperature`` is the procedural prior's (how sharply a
    reference picks the mixture's components, backend/priors/procedural/prior.py); a prior reads what applies to
    it. ``views`` is the camera the reference was seen from (None: ``front_view``, where the 2D experiment looks
    and where a reference drawn from a prior is rendered). Compared by identity: it holds a tensor.
    """

    image: Float[Tensor, "3 H W"]  # RGB in [0, 1]
    scale: float
    temperature: float
    views: "Views | None" = None


@dataclass(frozen=True)
class BranchImage:
    """What one image-prompt branch shows the IP prior: the reference, or nothing (``zero``: a zero image
    embedding, IP-Adapter's unconditional image input)."""

    prompt: ImagePrompt
    zero: bool


@dataclass(frozen=True)
class PromptSet:
    """The texts behind each branch of one job, and its reference image when it has one."""

    target: str
    negative: str = ""
    target_negative_descriptors: str = ""
    reference: ImagePrompt | None = None

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
        if branch == "image_target":
            return self.target
        if branch == "image_null":
            return ""
        raise ValueError(f"unknown branch '{branch}'; branches are {', '.join(ALL_BRANCHES)}")

    def image(self, branch: str) -> BranchImage | None:
        """The image an image-prompt branch reads (None for a text branch); ValueError when there is no reference."""
        if branch not in IMAGE_BRANCHES:
            return None
        if self.reference is None:
            raise ValueError(f"branch '{branch}' needs a reference image and this job has none (image-prompt "
                             "methods such as isd take one: --image PATH, or reference_source 'sample')")
        return BranchImage(self.reference, zero=branch == "image_null")


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
    #: Whether the prior answers the image-prompt branches (its ``_denoise`` then takes ``images=``).
    supports_image_prompts: bool = False

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
        unknown = [b for b in branches if b not in ALL_BRANCHES]
        if unknown or not branches:
            raise ValueError(f"branches must be a non-empty subset of {ALL_BRANCHES}, got {list(branches)}")
        if len(set(branches)) != len(branches):
            raise ValueError(f"branches repeat: {list(branches)}")
        texts = [prompts.text(b) for b in branches]
        if not any(b in IMAGE_BRANCHES for b in branches):
            stacked = self._denoise(x_t, t, texts, views)
        else:
            if not self.supports_image_prompts:
                raise PriorError(f"the prior '{self.name}' has no image prompt (IP-Adapter), so it cannot answer "
                                 f"the branches {', '.join(b for b in branches if b in IMAGE_BRANCHES)}; use the "
                                 "procedural prior, or a method without a reference image")
            # Text branches ride along as None: the plain prior (e_SD), not the IP prior with a zero image.
            stacked = self._denoise(x_t, t, texts, views, images=[prompts.image(b) for b in branches])
        return {b: stacked[i] for i, b in enumerate(branches)}

    def sample_reference(self, prompts: PromptSet, generator: torch.Generator) -> Float[Tensor, "3 H W"]:
        """A reference image drawn from this prior for ``prompts.target`` (ModeDreamer's default: generated from
        the prompt by the text-to-image model), RGB in [0, 1]. Priors that cannot yet draw one say so."""
        raise PriorError(f"the prior '{self.name}' cannot draw a reference image yet; give one (--image PATH)")

    @abstractmethod
    def _denoise(
        self,
        x_t: Float[Tensor, "B C h w"],
        t: Int[Tensor, "B"],
        texts: list[str],
        views: "Views | None",
    ) -> Float[Tensor, "N B C h w"]:
        """One denoiser evaluation of every (text, sample) pair; N = len(texts).

        A prior with ``supports_image_prompts`` also takes ``images=``: one ``BranchImage | None`` per text (None:
        a text-only branch of the plain prior)."""

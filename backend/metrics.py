"""Figures that measure an image against the procedural world's ground truth.

- silhouette IoU: pixels classified as object (nearer the object's true mean colour than the
  background colour, and clearly off the background) against the same classification of the
  true render;
- colour error: distance between mean colours over the true object region;
- background error: how far the rest of the image strays from the background (halos, noise,
  oversaturated rims land here, so they are reported rather than hidden in the IoU).
"""

from __future__ import annotations

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

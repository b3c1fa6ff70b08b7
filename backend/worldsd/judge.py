"""What a 2D image of the procedural world shows, judged by the world itself: its colour and its shape.

A sample has no camera, so it cannot be compared with one render. The judge instead asks which catalogue object
could have made it:

- **colour**: each foreground pixel (far enough from the grey background) is explained as a catalogue albedo times a
  shading factor in the world's range [ambient, 1]; the colour that explains most pixels is the image's colour;
- **shape**: the image's silhouette is compared with every shape's silhouette from a bank of cameras over the
  training band (restricted to the sample's view words when it has them: a "front view" sample is compared with
  front views); the shape with the best IoU over the bank is the image's shape.

A sample "is the named object" when both match the prompt. Shapes that look alike from some views (a cube's and a
cylinder's side view are both rectangles) make the shape call conservative: a failure can be a fair image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from backend.priors.procedural import world
from backend.scene.cameras import orbit_views, view_suffix

AMBIENT = 0.35
# A pixel is foreground when a channel differs from the background grey by more than this (image units).
FOREGROUND_THRESHOLD = 0.08


@dataclass(frozen=True)
class Verdict:
    colour: str | None  # None: no foreground
    colour_share: float  # share of foreground pixels the colour explains
    shape: str | None
    shape_iou: dict[str, float]  # best silhouette IoU per shape over the view bank
    foreground: float  # share of the image that is foreground

    def names(self, shape: str, colour: str) -> bool:
        return self.shape == shape and self.colour == colour


def foreground(image: Float[Tensor, "3 H W"]) -> Float[Tensor, "H W"]:
    bg = torch.tensor(world.BACKGROUND, dtype=image.dtype).view(3, 1, 1)
    return ((image - bg).abs().amax(dim=0) > FOREGROUND_THRESHOLD).float()


def colour_of(image: Float[Tensor, "3 H W"], mask: Float[Tensor, "H W"]) -> tuple[str | None, float]:
    """The catalogue colour that explains most foreground pixels as albedo x shading (shading in [ambient, 1])."""
    pixels = image.permute(1, 2, 0)[mask > 0]  # P 3
    if pixels.shape[0] == 0:
        return None, 0.0
    names = list(world.COLOURS)
    albedo = torch.tensor([world.COLOURS[c] for c in names], dtype=pixels.dtype)  # K 3
    # Best shading factor per (pixel, colour), clamped to the world's range, then the residual.
    k = (pixels @ albedo.T) / (albedo * albedo).sum(dim=1).clamp(min=1e-6)  # P K
    k = k.clamp(AMBIENT, 1.0)
    residual = (pixels[:, None, :] - k[..., None] * albedo[None]).norm(dim=-1)  # P K
    counts = torch.bincount(residual.argmin(dim=1), minlength=len(names)).float()
    best = int(counts.argmax())
    return names[best], float(counts[best] / counts.sum())


class ShapeBank:
    """Silhouettes of every shape from cameras over the training band, per view word (cached renders)."""

    def __init__(self, size: int = 64, views_per_word: int = 192, seed: int = 0,
                 elevation: tuple[float, float] = (-30.0, 85.0), distance: tuple[float, float] = (1.5, 2.3),
                 fovy: tuple[float, float] = (30.0, 55.0)) -> None:
        self.size = size
        self.views_per_word = views_per_word
        self.generator = torch.Generator().manual_seed(seed)
        self.band = (elevation, distance, fovy)
        self._banks: dict[str, Float[Tensor, "V S H W"]] = {}

    def silhouettes(self, view_word: str) -> Float[Tensor, "V S H W"]:
        """Coverage of each shape from cameras whose view words are ``view_word`` ('' for any camera)."""
        if view_word not in self._banks:
            (el_lo, el_hi), (d_lo, d_hi), (f_lo, f_hi) = self.band
            az, el = [], []
            while len(az) < self.views_per_word:
                a = float(torch.rand(1, generator=self.generator)) * 360.0 - 180.0
                e = el_lo + float(torch.rand(1, generator=self.generator)) * (el_hi - el_lo)
                if not view_word or view_suffix(a, e) == f", {view_word} view":
                    az.append(a)
                    el.append(e)
            n = len(az)
            dist = d_lo + torch.rand(n, generator=self.generator) * (d_hi - d_lo)
            fovy = f_lo + torch.rand(n, generator=self.generator) * (f_hi - f_lo)
            views = orbit_views(torch.tensor(az), torch.tensor(el), dist, fovy)
            self._banks[view_word] = world.render_shapes(views, self.size, supersample=1).coverage[:, :, 0]
        return self._banks[view_word]

    def shape_of(self, mask: Float[Tensor, "H W"], view_word: str = "") -> tuple[str | None, dict[str, float]]:
        bank = self.silhouettes(view_word)
        if mask.shape[-1] != self.size:
            mask = (F.interpolate(mask[None, None], size=(self.size, self.size), mode="area")[0, 0] > 0.5).float()
        if mask.sum() == 0:
            return None, {s: 0.0 for s in world.SHAPES}
        inter = (bank * mask).sum(dim=(-2, -1))
        union = (bank + mask - bank * mask).sum(dim=(-2, -1))
        iou = (inter / union.clamp(min=1e-6)).amax(dim=0)  # best over views, per shape
        per_shape = {s: float(iou[i]) for i, s in enumerate(world.SHAPES)}
        return max(per_shape, key=per_shape.get), per_shape


def judge(image: Float[Tensor, "3 H W"], bank: ShapeBank, view_word: str = "") -> Verdict:
    """The colour and shape an image in [0, 1] shows; ``view_word`` narrows the cameras ('front', ... or '')."""
    image = image.float().cpu().clamp(0.0, 1.0)
    mask = foreground(image)
    colour, share = colour_of(image, mask)
    shape, ious = bank.shape_of(mask, view_word)
    return Verdict(colour, share, shape, ious, float(mask.mean()))

"""Image files: tensors in [0, 1] to PNG and back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image
from torch import Tensor


def to_uint8(image: Float[Tensor, "3 H W"]) -> np.ndarray:
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def save_png(image: Float[Tensor, "3 H W"], path: str | Path) -> None:
    Image.fromarray(to_uint8(image)).save(path)


def load_png(path: str | Path) -> Float[Tensor, "3 H W"]:
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def side_by_side(images: list[Tensor], scale: int = 1) -> Tensor:
    """Images of equal height in a row, each enlarged ``scale`` times (nearest) for viewing."""
    row = torch.cat([img.float().cpu() for img in images], dim=-1)
    return torch.nn.functional.interpolate(row[None], scale_factor=scale, mode="nearest")[0] if scale > 1 else row

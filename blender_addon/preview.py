"""The live preview: the backend's latest preview render as an image datablock and a panel icon."""

from __future__ import annotations

from typing import Any

import bpy
import numpy as np

IMAGE_NAME = "TBSD Preview"


def image() -> Any:
    return bpy.data.images.get(IMAGE_NAME)


def show(pixels: np.ndarray) -> Any:
    """Write ``pixels`` ([H, W, 3|4], uint8 or float in [0, 1], row 0 = top) to the preview image."""
    px = np.asarray(pixels)
    px = px.astype(np.float32) / 255.0 if px.dtype == np.uint8 else px.astype(np.float32)
    if px.ndim == 2:
        px = np.repeat(px[..., None], 3, axis=2)
    h, w = px.shape[:2]
    if px.shape[2] == 3:
        px = np.concatenate([px, np.ones((h, w, 1), np.float32)], axis=2)
    img = image()
    if img is None or tuple(img.size) != (w, h):
        if img is not None:
            bpy.data.images.remove(img)
        img = bpy.data.images.new(IMAGE_NAME, width=w, height=h, alpha=True)
    flipped = np.ascontiguousarray(px[::-1]).ravel()
    img.pixels.foreach_set(flipped)
    img.update()
    # The panel draws the image's preview icon; write the pixels into it directly (no render job, no GPU).
    prev = img.preview_ensure()
    prev.image_size = (w, h)
    prev.image_pixels_float.foreach_set(flipped)
    return img


def icon_id() -> int:
    img = image()
    if img is None or img.preview is None:
        return 0
    return img.preview.icon_id


def clear() -> None:
    img = image()
    if img is not None:
        bpy.data.images.remove(img)

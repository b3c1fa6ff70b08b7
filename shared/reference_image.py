"""The reference image an image-prompt job (method ``isd``) may carry: its limits, its array on the wire, the check.

One definition for every way in: a ``submit`` may carry it as the array ``reference`` (docs/PROTOCOL.md, Image
prompts), checked at admission (backend/jobs/admission.py) with a ``bad_field`` error naming what is wrong and what
is allowed; ``--image PATH`` on the command line is read through the same limits (backend/reference.py). Imports
only the standard library and numpy, since Blender's Python imports it too.

On the wire: ``reference`` uint8 [H, W, 3], RGB, rows top to bottom, no alpha (composite it first: the backend's
renders sit on mid grey, 0.5, so that is the neutral background). A prior reads the largest centred square of it,
resized to its own working size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from shared.protocol import ProtocolError

REFERENCE_ARRAY = "reference"
# Why these: at most 2048 x 2048 pixels (any aspect up to 4096 on a side) is 12 MiB of RGB, inside the server's 16 MiB
# inbound message limit with room for the header; every prior reads at most 512 px, so more would only be shrunk.
MIN_REFERENCE_SIDE = 16
MAX_REFERENCE_SIDE = 4096
MAX_REFERENCE_PIXELS = 2048 * 2048
# A file on disk (PNG or JPEG) may be compressed; this bounds what is read before decoding.
MAX_REFERENCE_FILE_BYTES = 32 * 1024 * 1024
REFERENCE_FORMATS: tuple[str, ...] = ("PNG", "JPEG")


class ReferenceImageError(ValueError):
    """A reference image that cannot be used; the message says what is wrong and what is allowed."""


@dataclass(frozen=True)
class ReferenceImage:
    """A checked reference: ``pixels`` numpy uint8 [H, W, 3], RGB."""

    pixels: Any


def limits_text() -> str:
    return (f"sides {MIN_REFERENCE_SIDE}-{MAX_REFERENCE_SIDE} px and at most {MAX_REFERENCE_PIXELS:,} pixels "
            f"({int(MAX_REFERENCE_PIXELS ** 0.5)} x {int(MAX_REFERENCE_PIXELS ** 0.5)})")


def check_size(height: int, width: int, what: str = "the reference image") -> None:
    """ReferenceImageError when an image of this size is outside the limits (checked before decoding a file)."""
    if min(height, width) < MIN_REFERENCE_SIDE or max(height, width) > MAX_REFERENCE_SIDE \
            or height * width > MAX_REFERENCE_PIXELS:
        raise ReferenceImageError(f"{what} is {width} x {height} px; allowed: {limits_text()}")


def check_reference_pixels(array: Any, what: str = "the reference image") -> ReferenceImage:
    """``array`` as a ReferenceImage, or ReferenceImageError naming the dtype, shape or size that is not allowed."""
    import numpy as np

    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise ReferenceImageError(f"{what} has dtype {a.dtype.name}; allowed: uint8 (0-255 per channel)")
    if a.ndim != 3 or a.shape[2] != 3:
        raise ReferenceImageError(f"{what} has shape {list(a.shape)}; it must be [H, W, 3] (RGB, no alpha)")
    check_size(int(a.shape[0]), int(a.shape[1]), what)
    return ReferenceImage(np.ascontiguousarray(a))


def reference_from_pixels(flat: Any, width: int, height: int, channels: int, linear: bool = False) -> Any:
    """A reference to send from an image's float pixels (Blender's ``Image.pixels``: rows bottom to top, 1-4
    channels in [0, 1]): uint8 [H, W, 3], rows top to bottom, alpha laid over mid grey (0.5, the renders'
    background), linear values (a float image, e.g. a render) encoded as sRGB, and shrunk by a whole factor (box
    average) until it fits the limits. ReferenceImageError for an image too small or empty."""
    import numpy as np

    if width < 1 or height < 1 or channels not in (1, 2, 3, 4):
        raise ReferenceImageError(f"the reference image is empty or has {channels} channels ({width} x {height})")
    a = np.asarray(flat, dtype=np.float32).reshape(height, width, channels)[::-1]
    if channels in (1, 2):
        a = np.concatenate([np.repeat(a[..., :1], 3, axis=2), a[..., 1:]], axis=2)
    rgb, alpha = a[..., :3], (a[..., 3:4] if a.shape[2] == 4 else np.ones_like(a[..., :1]))
    rgb = np.clip(rgb, 0.0, 1.0)
    if linear:  # the sRGB transfer function: the picture as displayed, which is what a prior was trained on
        rgb = np.where(rgb <= 0.0031308, 12.92 * rgb, 1.055 * np.power(rgb, 1 / 2.4) - 0.055)
    rgb = rgb * alpha + 0.5 * (1 - alpha)
    factor = 1
    while (height // factor) * (width // factor) > MAX_REFERENCE_PIXELS or max(height, width) // factor > \
            MAX_REFERENCE_SIDE:
        factor += 1
    if factor > 1:
        h, w = height // factor, width // factor
        rgb = rgb[: h * factor, : w * factor].reshape(h, factor, w, factor, 3).mean(axis=(1, 3))
    out = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    return check_reference_pixels(out).pixels


def check_reference_arrays(arrays: Mapping[str, Any], rid: Any = None) -> ReferenceImage | None:
    """The ``reference`` array of a submit's arrays (None when absent), or ProtocolError ``bad_field`` naming the
    array, the problem and what is allowed."""
    if REFERENCE_ARRAY not in arrays:
        return None
    try:
        return check_reference_pixels(arrays[REFERENCE_ARRAY], f"array '{REFERENCE_ARRAY}'")
    except ReferenceImageError as exc:
        raise ProtocolError("bad_field", f"reference image: {exc}", rid) from None


__all__ = ["MAX_REFERENCE_FILE_BYTES", "MAX_REFERENCE_PIXELS", "MAX_REFERENCE_SIDE", "MIN_REFERENCE_SIDE",
           "REFERENCE_ARRAY", "REFERENCE_FORMATS", "ReferenceImage", "ReferenceImageError", "check_reference_arrays",
           "check_reference_pixels", "check_size", "limits_text", "reference_from_pixels"]

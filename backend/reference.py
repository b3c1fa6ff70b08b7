"""An image-prompt job's reference image: read from a file safely, drawn from the prior, kept beside the results.

The reference a job uses is always 8-bit RGB, and ``reference.png`` in its folder holds exactly those pixels, so a
job run again from its folder (a restarted server, ``--resume``) reads the same reference, and what an artist sees
beside the result is what the method saw. Limits and the wire's array: shared/reference_image.py.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from backend.files import write_bytes
from shared.reference_image import (
    MAX_REFERENCE_FILE_BYTES,
    REFERENCE_FORMATS,
    ReferenceImageError,
    check_reference_pixels,
    check_size,
)

if TYPE_CHECKING:  # torch only where tensors are made: the server saves a sent reference without it
    from jaxtyping import Float
    from torch import Tensor

REFERENCE_FILE = "reference.png"
# A reference drawn from the prior uses its own stream of the job's seed, so drawing it changes nothing else.
REFERENCE_SEED_OFFSET = 104_729
# Transparent pixels of a file are laid over the grey the product's renders sit on (the procedural world's
# background), the neutral choice for every prior.
ALPHA_BACKGROUND = 128


@dataclass(frozen=True)
class Reference:
    """The reference a job uses: ``pixels`` uint8 [H, W, 3], where it came from (``source``: 'image' or 'sample')
    and, for a given image, its original name."""

    pixels: np.ndarray
    source: str
    given_name: str | None = None

    def tensor(self) -> Float[Tensor, "3 H W"]:
        return pixels_to_tensor(self.pixels)

    def record(self) -> dict[str, Any]:
        """What job.json says about it."""
        out: dict[str, Any] = {"file": REFERENCE_FILE, "source": self.source,
                               "size": [int(self.pixels.shape[0]), int(self.pixels.shape[1])]}
        if self.given_name is not None:
            out["given"] = self.given_name
        return out


def pixels_to_tensor(pixels: np.ndarray) -> Float[Tensor, "3 H W"]:
    import torch

    return torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0


def tensor_to_pixels(image: Float[Tensor, "3 H W"]) -> np.ndarray:
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def read_reference_file(path: Path) -> np.ndarray:
    """A PNG or JPEG file's pixels as uint8 [H, W, 3] RGB, or ReferenceImageError naming the file, what is wrong
    and what is allowed. The size is checked from the header before any pixel is decoded, the file's length before
    it is read, and the format by content (not by its name)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise ReferenceImageError(f"reference image {name}: no such file")
    size = path.stat().st_size
    if size > MAX_REFERENCE_FILE_BYTES:
        raise ReferenceImageError(f"reference image {name} is {size:,} bytes; allowed: at most "
                                  f"{MAX_REFERENCE_FILE_BYTES:,} (a PNG or JPEG)")
    data = path.read_bytes()
    try:
        with warnings.catch_warnings():
            # Pillow's decompression-bomb warning becomes an error; our own size limit is far below it anyway.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(REFERENCE_FORMATS)) as img:
                check_size(img.height, img.width, f"reference image {name}")
                img.load()
                pixels = _rgb(img)
    except ReferenceImageError:
        raise
    except UnidentifiedImageError:
        raise ReferenceImageError(f"reference image {name} is not a PNG or JPEG file; allowed formats: "
                                  f"{', '.join(REFERENCE_FORMATS)}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ReferenceImageError(f"reference image {name} cannot be decoded ({type(exc).__name__}: {exc}); it must "
                                  f"be a complete PNG or JPEG file") from None
    return check_reference_pixels(pixels, f"reference image {name}").pixels


def _rgb(img: Any) -> np.ndarray:
    """8-bit RGB of any PNG/JPEG mode; transparency laid over ALPHA_BACKGROUND grey."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: keep the top 8 bits rather than let a mode conversion clip it to white.
        img = Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        out = rgba[..., :3] * alpha + ALPHA_BACKGROUND * (1 - alpha)
        return (out + 0.5).clip(0, 255).astype(np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def save_reference(folder: Path, pixels: np.ndarray, name: str = REFERENCE_FILE) -> Path:
    """``pixels`` as ``folder``/``name`` (PNG), written durably (temporary name, fsync, rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_bytes(folder / name, png_bytes(pixels))


def sample_reference(prior: Any, prompt: str, settings: Any) -> Reference:
    """ModeDreamer's default reference: a sample of the prior for the prompt, by the job's seed, in 8 bits."""
    import torch

    from backend.distill.step import prompt_set

    generator = torch.Generator().manual_seed(int(settings["seed"]) + REFERENCE_SEED_OFFSET)
    image = prior.sample_reference(prompt_set(prompt, settings), generator)
    return Reference(tensor_to_pixels(image), "sample")


def job_reference(prior: Any, prompt: str, settings: Mapping[str, Any],
                  reference: Reference | None) -> Reference | None:
    """The reference image a job's method reads: the one given, else (reference_source 'sample') one drawn from the
    prior by the job's seed; None for a method without image prompts. SettingsError when they do not fit."""
    from backend.distill.methods import METHODS
    from shared.settings import SettingsError

    method = settings["method"]
    if not METHODS[method].image_prompt:
        if reference is not None:
            raise SettingsError(f"method '{method}' reads no reference image; image prompts are for method isd")
        return None
    if not getattr(prior, "supports_image_prompts", False):
        from backend.priors.base import PriorError

        raise PriorError(f"method '{method}' needs a prior with an image prompt; '{settings['model']}' was loaded "
                         "without one: set ip_adapter (--ip-adapter world-sd-ip for world-SD, or a folder with "
                         "ip-adapter.safetensors and image_encoder/, or a hub id), or use --model procedural")
    if reference is not None:
        return reference
    if settings["reference_source"] == "image":
        raise SettingsError("reference_source is 'image' but the job was given no reference image: pass --image "
                            "PATH (PNG or JPEG), send the submit's 'reference' array, or use reference_source "
                            "'sample' to draw one from the prior")
    return sample_reference(prior, prompt, settings)


__all__ = ["REFERENCE_FILE", "job_reference", "Reference", "ReferenceImageError", "pixels_to_tensor", "png_bytes",
           "read_reference_file", "sample_reference", "save_reference", "tensor_to_pixels"]

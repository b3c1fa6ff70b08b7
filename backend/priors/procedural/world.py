"""The procedural world: a catalogue of shapes and colours, its renderer, and its vocabulary.

Everything the exact-score prior knows lives here: shapes as signed distance functions in
the unit box, named albedo colours, the shading and background model, degradations that
give negative descriptors a meaning, and the parser from prompt text to mixture components.
Its definition is a measuring device: do not tune it to flatter a method.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from backend.priors.base import PriorError
from backend.scene.cameras import Views, ray_bundle

# ---------------------------------------------------------------------------------------------
# Shapes: signed distance functions, points [..., 3] -> distances [...], all inside |x| <= 0.45
# ---------------------------------------------------------------------------------------------


def _sphere(p: Tensor) -> Tensor:
    return p.norm(dim=-1) - 0.4


def _cube(p: Tensor) -> Tensor:
    # Slightly rounded so normals are defined on the edges.
    q = p.abs() - (0.3 - 0.02)
    return q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0) - 0.02


def _cylinder(p: Tensor) -> Tensor:
    d = torch.stack([p[..., :2].norm(dim=-1) - 0.3, p[..., 2].abs() - 0.35], dim=-1)
    return d.clamp(min=0).norm(dim=-1) + d.max(dim=-1).values.clamp(max=0)


def _cone(p: Tensor) -> Tensor:
    # Apex at z = +0.35, base radius 0.35 at z = -0.35 (exact 2D distance to the profile).
    r = p[..., :2].norm(dim=-1)
    z = p[..., 2]
    h, rb = 0.7, 0.35
    # Profile segment from apex (0, 0.35) to base rim (rb, -0.35) in (r, z).
    ax, az = 0.0, 0.35
    bx, bz = rb, -0.35
    vx, vz = bx - ax, bz - az
    wx, wz = r - ax, z - az
    s = ((wx * vx + wz * vz) / (vx * vx + vz * vz)).clamp(0, 1)
    d_side = torch.sqrt((wx - s * vx) ** 2 + (wz - s * vz) ** 2)
    d_base = torch.sqrt((r - r.clamp(max=rb)) ** 2 + (z + 0.35) ** 2)
    d = torch.minimum(d_side, d_base)
    inside = (z > -0.35) & (z < 0.35) & (r < rb * (0.35 - z) / h)
    return torch.where(inside, -d, d)


def _torus(p: Tensor) -> Tensor:
    q = torch.stack([p[..., :2].norm(dim=-1) - 0.3, p[..., 2]], dim=-1)
    return q.norm(dim=-1) - 0.12


def _capsule(p: Tensor) -> Tensor:
    z = p[..., 2].clamp(-0.2, 0.2)
    q = p - torch.stack([torch.zeros_like(z), torch.zeros_like(z), z], dim=-1)
    return q.norm(dim=-1) - 0.22


SHAPES: dict[str, Callable[[Tensor], Tensor]] = {
    "sphere": _sphere,
    "cube": _cube,
    "cylinder": _cylinder,
    "cone": _cone,
    "torus": _torus,
    "capsule": _capsule,
}
SHAPE_SYNONYMS = {"ball": "sphere", "box": "cube", "donut": "torus", "ring": "torus", "pill": "capsule"}

# Albedo in [0, 1] (display RGB). The background (below) is none of these.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "orange": (0.95, 0.50, 0.08),
    "yellow": (0.92, 0.85, 0.15),
    "green": (0.15, 0.70, 0.20),
    "cyan": (0.10, 0.75, 0.80),
    "blue": (0.12, 0.25, 0.85),
    "purple": (0.50, 0.18, 0.70),
    "pink": (0.95, 0.50, 0.70),
    "white": (0.92, 0.92, 0.92),
    "black": (0.08, 0.08, 0.08),
}
BACKGROUND = (0.5, 0.5, 0.5)
FOG = (0.82, 0.82, 0.85)

# ---------------------------------------------------------------------------------------------
# Degradations: what a negative descriptor means in this world (image ops on renders in [0, 1])
# ---------------------------------------------------------------------------------------------


def _luma(img: Tensor) -> Tensor:
    return (0.299 * img[:, 0:1] + 0.587 * img[:, 1:2] + 0.114 * img[:, 2:3])


def _gaussian_blur(img: Tensor, sigma: float) -> Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=img.dtype, device=img.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
    out = F.conv2d(F.pad(img, (radius, radius, 0, 0), mode="replicate"), k, groups=3)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), k.transpose(2, 3), groups=3)


def _saturate(img: Tensor) -> Tensor:
    y = _luma(img)
    return (y + 2.2 * (img - y)).mul(1.15).clamp(0, 1)


def _cartoon(img: Tensor) -> Tensor:
    return (torch.round(_saturate(img) * 3) / 3).clamp(0, 1)


def _blur(img: Tensor) -> Tensor:
    return _gaussian_blur(img, img.shape[-1] / 24)


def _smooth(img: Tensor) -> Tensor:
    return _gaussian_blur(img, img.shape[-1] / 48)


def _fog(img: Tensor) -> Tensor:
    fog = torch.tensor(FOG, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    return 0.5 * img + 0.5 * fog


def _pixelate(img: Tensor) -> Tensor:
    h, w = img.shape[-2:]
    small = F.adaptive_avg_pool2d(img, (max(1, h // 8), max(1, w // 8)))
    return F.interpolate(small, size=(h, w), mode="nearest")


def _dark(img: Tensor) -> Tensor:
    return img * 0.45


def _dull(img: Tensor) -> Tensor:
    y = _luma(img)
    return 0.5 + 0.55 * (y + 0.35 * (img - y) - 0.5)


def _noisy(img: Tensor) -> Tensor:
    # A noisy image is not one image: "noisy" widens the component instead (NOISY_STD below).
    return img


def _tiling(img: Tensor) -> Tensor:
    h, w = img.shape[-2:]
    small = F.interpolate(img, size=(h // 2, w // 2), mode="bilinear", align_corners=False, antialias=True)
    return small.repeat(1, 1, 2, 2)[..., :h, :w]


def _malformed(img: Tensor) -> Tensor:
    h, w = img.shape[-2:]
    ys = torch.linspace(-1, 1, h, device=img.device, dtype=img.dtype)
    xs = torch.linspace(-1, 1, w, device=img.device, dtype=img.dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([xx + 0.12 * torch.sin(3.0 * math.pi * yy), yy * 0.8 + 0.1 * torch.sin(2.0 * math.pi * xx)], -1)
    return F.grid_sample(img, grid[None].expand(img.shape[0], -1, -1, -1), mode="bilinear",
                         padding_mode="border", align_corners=True)


def _low_quality(img: Tensor) -> Tensor:
    return _dull(_gaussian_blur(img, img.shape[-1] / 40))


DEGRADATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "saturate": _saturate,
    "cartoon": _cartoon,
    "blur": _blur,
    "smooth": _smooth,
    "fog": _fog,
    "pixelate": _pixelate,
    "dark": _dark,
    "dull": _dull,
    "noisy": _noisy,
    "tiling": _tiling,
    "malformed": _malformed,
    "low_quality": _low_quality,
}
# Extra per-pixel standard deviation (image units, [0, 1]) of a degradation's components: the
# "noisy" variant of an object is the set of its renders plus pixel noise, a wider Gaussian,
# so that pushing away from it removes noise anywhere rather than one fixed noise pattern.
DEGRADATION_STD: dict[str, float] = {"noisy": 0.2}
# Descriptor phrase -> degradation. Covers every negative text in shared/settings.py.
DESCRIPTORS: dict[str, str] = {
    "oversaturated": "saturate",
    "oversaturated color": "saturate",
    "oversaturated colour": "saturate",
    "saturated": "saturate",
    "cartoon": "cartoon",
    "blurry": "blur",
    "out of focus": "blur",
    "smooth": "smooth",
    "foggy": "fog",
    "hazy": "fog",
    "pixelated": "pixelate",
    "low-resolution": "pixelate",
    "low resolution": "pixelate",
    "dark": "dark",
    "gloomy": "dark",
    "dull": "dull",
    "low contrast": "dull",
    "noisy": "noisy",
    "tiling": "tiling",
    "malformed": "malformed",
    "bad structure": "malformed",
    "ugly": "low_quality",
    "unrealistic": "low_quality",
    "low quality": "low_quality",
}
FILLER = {"a", "an", "the", "of", "one", "single", "object", "shaped", "photo", "render", "3d", "model"}
# View-dependent suffixes Stable Diffusion prompts carry; this world is camera-aware, so they say nothing.
VIEW_WORDS = {"front", "side", "back", "overhead", "view"}


def vocabulary() -> str:
    return (
        f"shapes: {', '.join(SHAPES)} (also {', '.join(SHAPE_SYNONYMS)}); colours: {', '.join(COLOURS)}; "
        f"descriptors: {', '.join(DESCRIPTORS)}; filler: {', '.join(sorted(FILLER | VIEW_WORDS))}"
    )


@dataclass(frozen=True)
class Component:
    shape: str
    colour: str
    degradation: str | None = None


@dataclass(frozen=True)
class PromptMeaning:
    shapes: tuple[str, ...]
    colours: tuple[str, ...]
    degradations: tuple[str | None, ...]

    def components(self) -> tuple[Component, ...]:
        return tuple(Component(s, c, d) for s in self.shapes for c in self.colours for d in self.degradations)


_PHRASES = sorted(
    [(p, "descriptor") for p in DESCRIPTORS]
    + [(p, "shape") for p in list(SHAPES) + list(SHAPE_SYNONYMS)]
    + [(p, "colour") for p in COLOURS]
    + [(p, "filler") for p in FILLER | VIEW_WORDS],
    key=lambda pk: -len(pk[0]),
)


def parse_prompt(text: str) -> PromptMeaning:
    """Read a prompt into the mixture it names. Unknown words raise PriorError listing the vocabulary.

    "a red cube" -> one object; "a torus" -> a torus of every colour (multi-modal);
    "" -> the whole catalogue; "a red cube, blurry, dark" -> its blurred and darkened variants;
    "blurry, low quality" (no target words) -> degraded variants of the whole catalogue.
    """
    shapes: list[str] = []
    colours: list[str] = []
    degradations: list[str] = []
    words = re.sub(r"[,.;:!?()\"']", " ", text.lower()).split()
    i = 0
    while i < len(words):
        for phrase, kind in _PHRASES:
            n = len(phrase.split())
            if " ".join(words[i : i + n]) == phrase:
                if kind == "shape":
                    shapes.append(SHAPE_SYNONYMS.get(phrase, phrase))
                elif kind == "colour":
                    colours.append(phrase)
                elif kind == "descriptor":
                    degradations.append(DESCRIPTORS[phrase])
                i += n
                break
        else:
            raise PriorError(
                f"the procedural prior does not know the word '{words[i]}' in prompt {text!r}. "
                f"Its vocabulary: {vocabulary()}"
            )
    if len(set(shapes)) > 1:
        raise PriorError(f"prompt {text!r} names several shapes ({', '.join(shapes)}); name at most one")
    if len(set(colours)) > 1:
        raise PriorError(f"prompt {text!r} names several colours ({', '.join(colours)}); name at most one")
    return PromptMeaning(
        shapes=tuple(dict.fromkeys(shapes)) or tuple(SHAPES),
        colours=tuple(dict.fromkeys(colours)) or tuple(COLOURS),
        degradations=tuple(dict.fromkeys(degradations)) or (None,),
    )


# ---------------------------------------------------------------------------------------------
# Rendering: sphere-traced SDFs, diffuse shading with the view's light, constant background
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeRender:
    """Geometry of every shape seen from a batch of views (colour-independent)."""

    coverage: Float[Tensor, "B S 1 H W"]  # anti-aliased silhouette in [0, 1]
    shading: Float[Tensor, "B S 1 H W"]  # ambient + diffuse factor, premultiplied by coverage


def sdf(shape: str, points: Float[Tensor, "... 3"]) -> Float[Tensor, "..."]:
    return SHAPES[shape](points)


def render_shapes(views: Views, size: int, supersample: int = 2, max_steps: int = 64) -> ShapeRender:
    """Sphere-trace every catalogue shape from every view."""
    res = size * supersample
    origins, dirs = ray_bundle(views, res, res)  # B R R 3
    b = origins.shape[0]
    o = origins.reshape(b, 1, -1, 3)
    d = dirs.reshape(b, 1, -1, 3)
    n_shapes = len(SHAPES)
    # Start each ray where it enters the bounding sphere of radius 0.75 around the origin.
    bc = (o * d).sum(-1)
    disc = bc * bc - ((o * o).sum(-1) - 0.75**2)
    t = (-bc - disc.clamp(min=0).sqrt()).clamp(min=0).expand(b, n_shapes, -1).contiguous()
    hit = torch.zeros_like(t, dtype=torch.bool)
    names = list(SHAPES)

    def dist_all(pts: Tensor) -> Tensor:
        return torch.stack([SHAPES[s](pts[:, k]) for k, s in enumerate(names)], dim=1)

    for _ in range(max_steps):
        pts = o + t[..., None] * d
        dist = dist_all(pts)
        hit = hit | (dist < 1e-3)
        t = torch.where(hit, t, t + dist.clamp(min=0) * 0.9)
    pts = o + t[..., None] * d
    hit = hit & (disc > 0)
    eps = 1e-3
    grads = []
    for axis in range(3):
        e = torch.zeros(3, device=pts.device, dtype=pts.dtype)
        e[axis] = eps
        grads.append(dist_all(pts + e) - dist_all(pts - e))
    normals = F.normalize(torch.stack(grads, dim=-1), dim=-1)
    light = views.light_dir[:, None, None, :]
    lambert = (normals * light).sum(-1).clamp(min=0)
    shade = views.ambient + (1 - views.ambient) * lambert
    cover = hit.float()
    shade = shade * cover
    cover = cover.reshape(b, n_shapes, 1, res, res)
    shade = shade.reshape(b, n_shapes, 1, res, res)
    if supersample > 1:
        cover = F.avg_pool2d(cover.flatten(0, 1), supersample).reshape(b, n_shapes, 1, size, size)
        shade = F.avg_pool2d(shade.flatten(0, 1), supersample).reshape(b, n_shapes, 1, size, size)
    return ShapeRender(coverage=cover, shading=shade)


def compose(geometry: ShapeRender, components: tuple[Component, ...]) -> Float[Tensor, "B K 3 H W"]:
    """Images in [0, 1] of each component under each view."""
    names = list(SHAPES)
    device = geometry.coverage.device
    shape_idx = torch.tensor([names.index(c.shape) for c in components], device=device)
    albedo = torch.tensor([COLOURS[c.colour] for c in components], device=device).view(1, -1, 3, 1, 1)
    bg = torch.tensor(BACKGROUND, device=device).view(1, 1, 3, 1, 1)
    cover = geometry.coverage[:, shape_idx]
    shade = geometry.shading[:, shape_idx]
    images = albedo * shade + bg * (1 - cover)
    out = images.clone()
    b, k = images.shape[:2]
    for deg in {c.degradation for c in components if c.degradation is not None}:
        idx = [i for i, c in enumerate(components) if c.degradation == deg]
        sel = images[:, idx].flatten(0, 1)
        out[:, idx] = DEGRADATIONS[deg](sel).reshape(b, len(idx), *images.shape[2:])
    return out


def component_std(components: tuple[Component, ...]) -> Float[Tensor, "K"]:
    """Extra standard deviation of each component beyond the world's data noise, image units."""
    return torch.tensor([DEGRADATION_STD.get(c.degradation or "", 0.0) for c in components])


def ground_truth(prompt: str, views: Views, size: int) -> tuple[Float[Tensor, "B 3 H W"], Float[Tensor, "B 1 H W"]]:
    """The clean render and silhouette of the single object a prompt names (for measuring)."""
    meaning = parse_prompt(prompt)
    if len(meaning.shapes) != 1 or len(meaning.colours) != 1:
        raise PriorError(f"ground truth needs a prompt naming one shape and one colour, got {prompt!r}")
    geometry = render_shapes(views, size)
    comp = Component(meaning.shapes[0], meaning.colours[0])
    image = compose(geometry, (comp,))[:, 0]
    cover = geometry.coverage[:, list(SHAPES).index(comp.shape)]
    return image, cover

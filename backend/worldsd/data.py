"""world-SD's training distribution: procedural-world renders with captions in the product's own grammar.

An image is one catalogue shape in one named colour, seen from a camera over (a little more than) the product's
training band, lit from any side, as ``world.render_shapes`` renders the world's own truth (2x2 supersampled).
Its caption is what the product sends a Stable Diffusion model for it:

- the target prompt: "a red cube", "a cube" (any colour), "a red object" (any shape), with the world's synonyms;
- the view words the trainer appends (``cameras.view_suffix``: ", front view", ...);
- the degradation words the product's negative prompts use (``shared/settings.py``), with the image degraded as the
  world defines that word (``world.DESCRIPTORS``); a list of descriptors means any one of them, as the world's
  mixture does, and a negative prompt names no object ("blurry, low quality" is any object, degraded);
- "" with ``caption_dropout`` probability, for classifier-free guidance.

Every choice is drawn from generators seeded by (seed, step), so a resumed run sees the data an uninterrupted one
would have.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from backend.priors.procedural import world
from backend.scene.cameras import CameraConfig, sample_orbit_views, view_suffix
from shared.settings import BSD_NEGATIVE, CSD_NEGATIVE, NFSD_NEGATIVE, TARGET_NEGATIVE_DESCRIPTORS, defaults

# The product's negative texts, which world-SD must know as it knows any descriptor.
PRODUCT_NEGATIVES = (NFSD_NEGATIVE, CSD_NEGATIVE, BSD_NEGATIVE, TARGET_NEGATIVE_DESCRIPTORS)
SYNONYMS_OF = {shape: [w for w, s in world.SHAPE_SYNONYMS.items() if s == shape] for shape in world.SHAPES}


@dataclass(frozen=True)
class CaptionConfig:
    """How often each form of caption appears (probabilities)."""

    caption_dropout: float = 0.1
    article: float = 0.85  # "a red cube" rather than "red cube"
    shape_only: float = 0.1  # "a cube": the colour is left open
    colour_only: float = 0.05  # "a red object": the shape is left open
    synonym: float = 0.1  # "ball" for sphere, when the shape has synonyms
    view_words: float = 0.85  # ", front view" appended, as the product does when view_prompts is on
    degraded: float = 0.3  # the image degraded and the caption carrying descriptor words
    product_negative: float = 0.5  # of degraded: one of the product's own negative texts, else 1-3 descriptors
    descriptors_only: float = 0.3  # of degraded: no object words, as a negative prompt is


@dataclass(frozen=True)
class Item:
    """One training image's content and caption."""

    shape: str
    colour: str
    degradation: str | None
    caption: str


@dataclass(frozen=True)
class CameraBand:
    """Training cameras: the product's band (shared/settings.py) widened a little, so views the product renders sit
    inside what the model saw, overhead views (over 60 degrees) included."""

    elevation: tuple[float, float] = (-40.0, 85.0)
    distance: tuple[float, float] = (1.5, 2.3)
    fovy: tuple[float, float] = (30.0, 55.0)

    def settings(self) -> dict:
        s = defaults()  # lights from any side: the product's default light settings
        s.update(camera_elevation_min=self.elevation[0], camera_elevation_max=self.elevation[1],
                 camera_distance_min=self.distance[0], camera_distance_max=self.distance[1],
                 camera_fovy_min=self.fovy[0], camera_fovy_max=self.fovy[1])
        return s


def stream_seed(seed: int, stream: int, index: int) -> int:
    """A seed for one (stream, index) of a run: fixed across processes, unlike Python's salted ``hash``."""
    return (seed * 1_000_003 + stream * 7_919 + index * 104_729) % (2**31 - 1)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def descriptor_degradations(text: str) -> list[str]:
    """The world's degradations a comma-separated descriptor text names, in order, without repeats."""
    found = [world.DESCRIPTORS[p.strip()] for p in text.split(",") if p.strip()]
    return list(dict.fromkeys(found))


def draw_item(shape: str, colour: str, azimuth: float, elevation: float, rng: random.Random,
              config: CaptionConfig = CaptionConfig()) -> Item:
    """The caption (and the degradation it implies) for one render of ``colour`` ``shape`` seen from a camera."""
    degradation: str | None = None
    descriptors = ""
    if rng.random() < config.degraded:
        if rng.random() < config.product_negative:
            descriptors = rng.choice(PRODUCT_NEGATIVES)
        else:
            descriptors = ", ".join(rng.sample(sorted(world.DESCRIPTORS), rng.randint(1, 3)))
        degradation = rng.choice(descriptor_degradations(descriptors))
    if rng.random() < config.caption_dropout:
        return Item(shape, colour, degradation, "")
    if degradation is not None and rng.random() < config.descriptors_only:
        return Item(shape, colour, degradation, descriptors)

    shape_word = shape
    if SYNONYMS_OF[shape] and rng.random() < config.synonym:
        shape_word = rng.choice(SYNONYMS_OF[shape])
    u = rng.random()
    if u < config.shape_only:
        words = shape_word
    elif u < config.shape_only + config.colour_only:
        words = f"{colour} object"
    else:
        words = f"{colour} {shape_word}"
    text = f"{_article(words)} {words}" if rng.random() < config.article else words
    if rng.random() < config.view_words:
        text += view_suffix(azimuth, elevation)
    if descriptors:
        text += ", " + descriptors
    return Item(shape, colour, degradation, text)


def compose_items(coverage: Float[Tensor, "N 1 H W"], shading: Float[Tensor, "N 1 H W"], items: list[Item],
                  generator: torch.Generator | None = None) -> Float[Tensor, "N 3 H W"]:
    """Each item's image in [0, 1] (the "noisy" degradation can leave it): its colour over its shape's geometry,
    then its degradation, as ``world.compose`` makes a component's image."""
    device = coverage.device
    albedo = torch.tensor([world.COLOURS[it.colour] for it in items], device=device).view(-1, 3, 1, 1)
    background = torch.tensor(world.BACKGROUND, device=device).view(1, 3, 1, 1)
    images = albedo * shading + background * (1 - coverage)
    out = images.clone()
    for name in sorted({it.degradation for it in items if it.degradation is not None}):
        idx = torch.tensor([i for i, it in enumerate(items) if it.degradation == name], device=device)
        degraded = world.DEGRADATIONS[name](images[idx])
        std = world.DEGRADATION_STD.get(name, 0.0)
        if std > 0:
            degraded = degraded + std * torch.randn(degraded.shape, generator=generator, device=device)
        out[idx] = degraded
    return out


class WorldImages:
    """Batches of (image, caption) drawn on the device from a pool of rendered views.

    Sphere tracing renders every shape from a view at once, so the pool renders ``pool_views`` views x 6 shapes and
    batches pick (view, shape) pairs from it with fresh colours, degradations and captions; the pool is re-rendered
    after every ``refresh_images`` images drawn (its views seeded by the pool's index, which (step, batch size)
    decide, so a resumed run rebuilds the same pool).
    """

    def __init__(self, size: int, device: torch.device | str, seed: int = 0, pool_views: int = 512,
                 refresh_images: int = 12_800, band: CameraBand = CameraBand(), captions: CaptionConfig = CaptionConfig(),
                 render_chunk: int = 64) -> None:
        self.size = size
        self.device = torch.device(device)
        self.seed = seed
        self.pool_views = pool_views
        self.refresh_images = refresh_images
        self.band = band
        self.captions = captions
        self.render_chunk = render_chunk
        self._pool_index = -1
        self._pool: tuple[world.ShapeRender, list[tuple[float, float]]] | None = None

    def _render_pool(self, index: int) -> tuple[world.ShapeRender, list[tuple[float, float]]]:
        generator = torch.Generator().manual_seed(stream_seed(self.seed, 1, index))
        views, angles = sample_orbit_views(self.pool_views, CameraConfig.from_settings(self.band.settings()), generator)
        views = views.to(self.device)
        parts = [world.render_shapes(views.select(list(range(i, min(i + self.render_chunk, len(views))))),
                                     self.size)
                 for i in range(0, len(views), self.render_chunk)]
        return world.ShapeRender(torch.cat([p.coverage for p in parts]), torch.cat([p.shading for p in parts])), angles

    def pool(self, step: int, n: int) -> tuple[world.ShapeRender, list[tuple[float, float]]]:
        """The rendered views (coverage and shading [V, 6, 1, H, W]) and their (azimuth, elevation) that ``step``'s
        batch of ``n`` draws from."""
        index = step * n // self.refresh_images
        if index != self._pool_index or self._pool is None:
            self._pool = self._render_pool(index)
            self._pool_index = index
        return self._pool

    def batch(self, step: int, n: int) -> tuple[Float[Tensor, "N 3 H W"], list[str]]:
        """The ``n`` training images and captions of ``step`` (the same for the same seed and step)."""
        geometry, angles = self.pool(step, n)
        rng = random.Random(stream_seed(self.seed, 2, step))
        shapes = list(world.SHAPES)
        colours = list(world.COLOURS)
        views = [rng.randrange(len(angles)) for _ in range(n)]
        shape_idx = [rng.randrange(len(shapes)) for _ in range(n)]
        items = [draw_item(shapes[s], rng.choice(colours), *angles[v], rng, self.captions)
                 for v, s in zip(views, shape_idx)]
        v = torch.tensor(views, device=self.device)
        s = torch.tensor(shape_idx, device=self.device)
        generator = torch.Generator(device=self.device).manual_seed(stream_seed(self.seed, 3, step))
        images = compose_items(geometry.coverage[v, s], geometry.shading[v, s], items, generator)
        return images, [it.caption for it in items]


def vocabulary_words() -> str:
    """Every word a world-SD caption can hold, for the tokenizer (one token per known word)."""
    words = " ".join([*world.SHAPES, *world.SHAPE_SYNONYMS, *world.COLOURS, *world.DESCRIPTORS, *world.FILLER,
                      *world.VIEW_WORDS, *PRODUCT_NEGATIVES])
    return " ".join(sorted(set(re.findall(r"[a-z]+", words))))

"""world-SD's IP-Adapter training pairs: a reference render of one object from one view, and the same object from
another view as the image to denoise, with the caption the product would send for that view.

Both images come from the pool of rendered views ``WorldImages`` keeps (the same renders, cameras, lights and
captions as world-SD's own training, ``backend/worldsd/data.py``), so the adapter learns what ModeDreamer's IP prior
does: which object a reference shows, whatever the camera. The reference is always clean (no degradation: a
reference is a picture of the object the user wants); the target carries its caption's degradation as in world-SD's
data. Captions that leave the colour or the shape open ("a cube", "a red object") are where the reference carries
information the text does not. ``reference_dropout`` of the references become a zero image embedding (IP-Adapter's
unconditional image input), so the adapter also learns the ``image_null`` branch.

Everything is drawn from generators seeded by (seed, step): a resumed run sees the pairs an uninterrupted one would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from backend.priors.procedural import world
from backend.worldsd.data import Item, WorldImages, compose_items, draw_item, stream_seed


@dataclass(frozen=True)
class PairBatch:
    targets: Float[Tensor, "N 3 H W"]  # the images to denoise, in [0, 1]
    references: Float[Tensor, "N 3 H W"]  # the same objects from another view, clean
    captions: list[str]  # each target's caption (its view words, its degradation words)
    keep_reference: Bool[Tensor, "N"]  # False: the row gets a zero image embedding (reference dropout)


class WorldPairs:
    """Batches of (target, reference, caption) pairs from world-SD's pool of rendered views."""

    def __init__(self, images: WorldImages, reference_dropout: float = 0.1) -> None:
        self.images = images
        self.reference_dropout = reference_dropout

    def batch(self, step: int, n: int) -> PairBatch:
        images = self.images
        geometry, angles = images.pool(step, n)
        rng = random.Random(stream_seed(images.seed, 12, step))
        shapes, colours = list(world.SHAPES), list(world.COLOURS)
        n_views = len(angles)
        targets_v, refs_v, shape_idx, items, refs = [], [], [], [], []
        for _ in range(n):
            v = rng.randrange(n_views)
            r = (v + 1 + rng.randrange(n_views - 1)) % n_views if n_views > 1 else v  # another view of the pool
            s = rng.randrange(len(shapes))
            colour = rng.choice(colours)
            item = draw_item(shapes[s], colour, *angles[v], rng, images.captions)
            targets_v.append(v)
            refs_v.append(r)
            shape_idx.append(s)
            items.append(item)
            refs.append(Item(shapes[s], colour, None, ""))
        keep = [rng.random() >= self.reference_dropout for _ in range(n)]
        device = images.device
        s_t = torch.tensor(shape_idx, device=device)
        v_t, r_t = torch.tensor(targets_v, device=device), torch.tensor(refs_v, device=device)
        generator = torch.Generator(device=device).manual_seed(stream_seed(images.seed, 13, step))
        targets = compose_items(geometry.coverage[v_t, s_t], geometry.shading[v_t, s_t], items, generator)
        references = compose_items(geometry.coverage[r_t, s_t], geometry.shading[r_t, s_t], refs)
        return PairBatch(targets, references, [it.caption for it in items], torch.tensor(keep, device=device))


__all__ = ["PairBatch", "WorldPairs"]

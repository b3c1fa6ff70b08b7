"""The `procedural` prior: exact noise prediction of a diffused Gaussian mixture of renders.

For prompt y and camera c the data distribution is ``mean_k N(x; R_k(c), s^2 I)`` over the
catalogue components that y names (world.py). Diffused to time t it stays a mixture, with
variance ``abar_t s^2 + 1 - abar_t``, so its noise prediction is closed-form:

    eps_hat = sqrt(1 - abar_t) * sum_k gamma_k (x_t - sqrt(abar_t) R_k) / (abar_t s_k^2 + 1 - abar_t)

with gamma the posterior responsibilities of the components given x_t. s_k = s for every clean
and most degraded components; a "noisy" component is wider (world.DEGRADATION_STD), which keeps
the mixture Gaussian and the prediction exact. Samples live in pixel
space scaled to [-1, 1] at ``resolution`` (the same convention as Stable Diffusion's VAE input).

Image prompts (ModeDreamer's IP prior, the ``image_*`` branches): eq. 3 of seed 004 writes the text prior as
``p(x | y) = integral p(x | y, x_ref) p(x_ref | y) dx_ref``. In this world a reference is a picture of one of the
prompt's objects, so ``p(x | y, x_ref) = sum_k p(k | y, x_ref) N(x; R_k(c), s_k^2 I)``: the same components, weighted
by how well each, rendered from the reference's camera, explains the reference. The weights are

    w_k  proportional to  exp(-ip_scale * mse_k / temperature),   mse_k = mean over pixels of (x_ref - R_k(c_ref))^2

(image units, [0, 1]; per pixel, so the temperature means the same at every resolution). The diffused conditional is
then still a Gaussian mixture, and its noise prediction is exact: the weights only add ``log w_k`` to the
responsibilities' logits. ``ip_scale`` is the exponent of a tempered likelihood ``p(x_ref | k)^ip_scale``: 0 is the
text prior, 1 the full image posterior, and every value in between stays an exact mixture of the same objects (a
blend of the two noise predictions would not be the score of any mixture). The IP prior's null branch has no image
(a zero embedding), so its weights are uniform: ``e_IP(""; 0) = e_null`` here.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from backend.priors.base import BranchImage, DiffusionPrior, ImagePrompt, PromptSet
from backend.priors.procedural import world
from backend.scene.cameras import Views, front_view


def square_resize(image: Float[Tensor, "3 H W"], size: int) -> Float[Tensor, "3 S S"]:
    """The largest centred square of ``image``, resized to ``size`` (area-averaged when shrinking), as the
    image encoders of IP-Adapters crop their input."""
    h, w = image.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[..., top : top + side, left : left + side].float()
    if side == size:
        return square
    return F.interpolate(square[None], size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)[0]


def scaled_linear_alphas_cumprod(steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """Stable Diffusion's training schedule, so t means the same thing for both priors."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


class ProceduralPrior(DiffusionPrior):
    camera_aware = True
    background = world.BACKGROUND
    fixed_shading = "diffuse"
    supports_image_prompts = True

    def __init__(self, resolution: int = 64, data_std: float = 0.1, device: torch.device | str = "cpu",
                 cache_views: int = 256, cache_composed: int = 64) -> None:
        self.name = "procedural"
        self.device = torch.device(device)
        self.resolution = resolution
        self.data_std = data_std
        self.alphas_cumprod = scaled_linear_alphas_cumprod().to(self.device)
        self.sample_shape = (3, resolution, resolution)
        self.image_size = resolution
        self._geometry: OrderedDict[bytes, world.ShapeRender] = OrderedDict()
        self._cache_views = cache_views
        self._meanings: dict[str, world.PromptMeaning] = {}
        self._composed: OrderedDict[tuple, tuple[Tensor, Tensor]] = OrderedDict()
        self._cache_composed = cache_composed
        # (text, reference identity) -> mse_k: a job reads one reference for thousands of steps.
        self._reference_mse: OrderedDict[tuple, tuple[Tensor, Tensor]] = OrderedDict()

    # --- prompts --------------------------------------------------------------------------------
    def meaning(self, text: str) -> world.PromptMeaning:
        if text not in self._meanings:
            self._meanings[text] = world.parse_prompt(text)
        return self._meanings[text]

    def check_prompts(self, prompts: PromptSet) -> None:
        for text in (prompts.target, prompts.negative, prompts.target_negative):
            self.meaning(text)

    # --- renders --------------------------------------------------------------------------------
    def _geometry_for(self, views: Views) -> world.ShapeRender:
        keys = [views.key(i) for i in range(len(views))]
        # One render per distinct uncached view (a batch often repeats a view).
        first_index = {k: i for i, k in reversed(list(enumerate(keys)))}
        missing = [i for k, i in first_index.items() if k not in self._geometry]
        if missing:
            fresh = world.render_shapes(views.select(missing).to(self.device), self.resolution)
            for j, i in enumerate(missing):
                self._geometry[keys[i]] = world.ShapeRender(fresh.coverage[j : j + 1], fresh.shading[j : j + 1])
        for k in keys:
            self._geometry.move_to_end(k)
        while len(self._geometry) > self._cache_views:
            self._geometry.popitem(last=False)
        parts = [self._geometry[k] for k in keys]
        return world.ShapeRender(torch.cat([p.coverage for p in parts]), torch.cat([p.shading for p in parts]))

    def components(self, text: str, views: Views) -> tuple[Float[Tensor, "B K 3 H W"], Float[Tensor, "K"]]:
        """The mixture means R_k(c) for ``text`` in [-1, 1] and each component's data variance."""
        keys = tuple(views.key(i) for i in range(len(views)))
        cached = self._composed.get((text, keys))
        if cached is not None:
            self._composed.move_to_end((text, keys))
            return cached
        comps = self.meaning(text).components()
        means = world.compose(self._geometry_for(views), comps) * 2 - 1
        # Image units -> [-1, 1] units doubles a standard deviation.
        variance = (self.data_std**2 + (2 * world.component_std(comps)) ** 2).to(self.device)
        self._composed[(text, keys)] = (means, variance)
        while len(self._composed) > self._cache_composed:
            self._composed.popitem(last=False)
        return means, variance

    # --- image prompts ----------------------------------------------------------------------------
    def reference_mse(self, text: str, prompt: ImagePrompt) -> Float[Tensor, "K"]:
        """Mean squared difference per pixel (image units) between the reference and each of ``text``'s
        components rendered from the reference's camera."""
        key = (text, id(prompt.image), None if prompt.views is None else prompt.views.key(0))
        cached = self._reference_mse.get(key)
        if cached is not None and cached[0] is prompt.image:
            return cached[1]
        views = (front_view(1) if prompt.views is None else prompt.views.select([0])).to(self.device)
        means, _ = self.components(text, views)
        renders = (means[0].double() + 1) / 2  # K 3 R R in [0, 1]; float64: the weights divide by a small temperature
        ref = square_resize(prompt.image.to(self.device), self.resolution).clamp(0, 1).double()
        mse = (renders - ref[None]).pow(2).flatten(1).mean(-1)
        # Kept with the image itself, so a new tensor at a reused address never reads another's figures.
        self._reference_mse[key] = (prompt.image, mse)
        while len(self._reference_mse) > 16:
            self._reference_mse.popitem(last=False)
        return mse

    def image_log_weights(self, text: str, branch: BranchImage) -> Float[Tensor, "K"] | None:
        """log w_k of ``text``'s components under an image branch (module docstring); None for uniform weights
        (a zero image embedding, or ip_scale 0)."""
        prompt = branch.prompt
        if branch.zero or prompt.scale == 0:
            return None
        if prompt.temperature <= 0:
            raise ValueError(f"the image prompt's temperature must be positive, got {prompt.temperature}")
        return -prompt.scale * self.reference_mse(text, prompt) / prompt.temperature

    def reference_weights(self, text: str, prompt: ImagePrompt) -> Float[Tensor, "K"]:
        """The mixture weights p(k | y, x_ref) the image-target branch uses (for records and diagnostics)."""
        log_w = self.image_log_weights(text, BranchImage(prompt, zero=False))
        k = len(self.meaning(text).components())
        return torch.full((k,), 1.0 / k) if log_w is None else torch.softmax(log_w.double(), 0).float().cpu()

    def reference_mode(self, text: str, prompt: ImagePrompt) -> Any:
        """The component of the prompt's mixture the reference selects (largest weight), or None when the weights
        are equal (ip_scale 0, or a reference equally far from every object): then it selects nothing."""
        weights = self.reference_weights(text, prompt)
        if float(weights.max() - weights.min()) <= 1e-6:
            return None
        return self.meaning(text).components()[int(weights.argmax())]

    def sample_reference(self, prompts: PromptSet, generator: torch.Generator) -> Float[Tensor, "3 R R"]:
        """A sample of the target's mixture seen from ``front_view``: one component drawn uniformly, plus the
        world's data noise (its own width for a noisy component), as an image in [0, 1]."""
        views = front_view(1).to(self.device)
        means, data_var = self.components(prompts.target, views)
        k = int(torch.randint(0, means.shape[1], (1,), generator=generator))
        noise = torch.randn(means.shape[2:], generator=generator).to(self.device)
        return self.decode((means[0, k] + data_var[k].sqrt() * noise)[None])[0].cpu()

    def _posterior(self, x_t: Tensor, t: Tensor, text: str, views: Views,
                   log_weights: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Responsibilities gamma [B K], offsets x_t - sqrt(abar) R_k [B K 3 H W], diffused variances [B K].
        ``log_weights`` [K]: the components' log prior weights up to a constant (None: equal weights)."""
        b = x_t.shape[0]
        means, data_var = self.components(text, views)
        abar = self.alphas_cumprod[t.to(self.device)].to(x_t.dtype).view(b, 1)
        var = abar * data_var.to(x_t.dtype)[None] + 1 - abar  # B K
        diff = x_t[:, None] - abar.sqrt()[..., None, None, None] * means.to(x_t.dtype)
        dims = diff[0, 0].numel()
        logits = -diff.pow(2).flatten(2).sum(-1) / (2 * var) - 0.5 * dims * var.log()
        if log_weights is not None:
            logits = logits + log_weights.to(logits)[None]
        return torch.softmax(logits, dim=1), diff, var

    # --- DiffusionPrior ---------------------------------------------------------------------------
    def encode(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 R R"]:
        if images.shape[-1] != self.resolution or images.shape[-2] != self.resolution:
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear",
                                   align_corners=False, antialias=True)
        return images * 2 - 1

    def decode(self, samples: Float[Tensor, "B 3 R R"]) -> Float[Tensor, "B 3 R R"]:
        return ((samples + 1) / 2).clamp(0, 1)

    def _denoise(self, x_t: Tensor, t: Int[Tensor, "B"], texts: list[str], views: Views | None,
                 images: list[BranchImage | None] | None = None) -> Tensor:
        b = x_t.shape[0]
        if views is None:
            views = front_view(b)
        elif len(views) != b:
            raise ValueError(f"{len(views)} views for a batch of {b} samples")
        abar = self.alphas_cumprod[t.to(self.device)].to(x_t.dtype).view(b, 1, 1, 1)
        outs = []
        for i, text in enumerate(texts):
            branch = None if images is None else images[i]
            log_w = None if branch is None else self.image_log_weights(text, branch)
            gamma, diff, var = self._posterior(x_t, t, text, views, log_w)
            weights = (gamma / var)[..., None, None, None]
            outs.append((1 - abar).sqrt() * (weights * diff).sum(1))
        return torch.stack(outs)

    def responsibilities(self, x_t: Tensor, t: Tensor, text: str, views: Views | None = None,
                         image: BranchImage | None = None) -> Tensor:
        """Posterior weights gamma_k of the mixture components (for tests and diagnostics)."""
        views = front_view(x_t.shape[0]) if views is None else views
        log_w = None if image is None else self.image_log_weights(text, image)
        return self._posterior(x_t, t, text, views, log_w)[0]

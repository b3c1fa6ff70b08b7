"""The papers' 2D experiment: optimise one image (or one latent) with a method's gradient."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from jaxtyping import Float
from torch import Tensor

from backend.distill.step import DistillConfig, distillation_loss, prompt_set
from backend.priors.base import DiffusionPrior
from backend.reference import job_reference
from backend.scene.cameras import front_view

ProgressFn = Callable[[int, int, float, Mapping[str, Any]], None]


@dataclass
class ImageRun:
    image: Float[Tensor, "3 H W"]  # decoded result in [0, 1]
    sample: Float[Tensor, "C h w"]  # the optimised sample in the prior's space
    seconds: float
    # Per-step trace of the method's figures (loss, t, TBSD's mu and factor, ...).
    trace: list[dict[str, Any]] = field(default_factory=list)


def optimise_image(
    prior: DiffusionPrior,
    prompt: str,
    settings: Mapping[str, Any],
    on_step: ProgressFn | None = None,
    reference: Float[Tensor, "3 H W"] | None = None,
) -> ImageRun:
    """Run ``settings['image_steps']`` steps of the method on a randomly initialised sample; ``reference`` is the
    image an image-prompt method (ISD) reads (None: drawn from the prior, as a 3D job's is)."""
    if reference is None:
        drawn = job_reference(prior, prompt, settings, None)
        reference = None if drawn is None else drawn.tensor()
    prompts = prompt_set(prompt, settings, reference)
    prior.check_prompts(prompts)
    generator = torch.Generator().manual_seed(settings["seed"])
    init = settings.get("image_init_std", 1.0) * torch.randn((1, *prior.sample_shape), generator=generator)
    x = torch.nn.Parameter(init.to(prior.device, torch.float32))
    optimiser = torch.optim.Adam([x], lr=settings["image_lr"])
    batch = settings["image_batch"]
    views = front_view(batch).to(prior.device) if prior.camera_aware else None
    steps = settings["image_steps"]
    distill = DistillConfig.from_settings(settings)
    trace: list[dict[str, Any]] = []
    start = time.perf_counter()
    for step in range(steps):
        result = distillation_loss(prior, x.expand(batch, -1, -1, -1), prompts, distill,
                                   progress=step / steps, generator=generator, views=views)
        optimiser.zero_grad(set_to_none=True)
        result.loss.backward()
        optimiser.step()
        record = {"step": step, "loss": float(result.loss.detach()), "t": float(result.t.float().mean()),
                  **{k: float(v) if isinstance(v, torch.Tensor) else v for k, v in result.info.items()}}
        trace.append(record)
        if on_step is not None:
            on_step(step + 1, steps, record["loss"], record)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        image = prior.decode(x.detach())[0].float().cpu()
    return ImageRun(image=image, sample=x.detach()[0].cpu(), seconds=seconds, trace=trace)

"""One score-distillation step: noise the sample, ask the prior once, turn the method's direction into a loss.

This is where a method meets a prior; it holds no state, so the same function serves the
2D experiment and the 3D training loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from jaxtyping import Float
from torch import Tensor

from backend.config import config_from_settings
from backend.distill.methods import EDIT, METHODS, MethodSpec, StepContext
from backend.distill.timesteps import TimestepConfig, sample_timesteps, timestep_weight
from backend.priors.base import DiffusionPrior, ImagePrompt, PromptSet
from backend.scene.cameras import Views
from backend.transfer import host_to_device
from shared.settings import editing, resolved_negative_prompt, resolved_weighting


@dataclass
class StepResult:
    loss: Float[Tensor, ""]
    t: Tensor
    branches: tuple[str, ...]
    # Method-specific figures (TBSD's mu and factor, Bridge's stage, ...), detached; tensors stay on the device
    # (reading them is the caller's choice: it waits for the GPU).
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DistillConfig:
    """What one distillation step needs from a job's settings, built once when the job starts: the direction (the
    job's method, or CSD's edit on a refine that names an edit prompt), its typed parameters, the timestep schedule
    and the resolved weighting w(t)."""

    spec: MethodSpec
    params: Any  # spec.params
    timesteps: TimestepConfig
    weighting: str

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> DistillConfig:
        spec = EDIT if editing(settings) else METHODS[settings["method"]]
        return cls(spec=spec, params=config_from_settings(spec.params, settings),
                   timesteps=TimestepConfig.from_settings(settings), weighting=resolved_weighting(settings))


def prompt_set(prompt: str, settings: Mapping[str, Any], reference: Tensor | None = None) -> PromptSet:
    """The texts a job's branches use, from its prompt and settings, and its reference image (RGB [3, H, W] in
    [0, 1]) for the image-prompt branches, read at the settings' ``ip_scale`` and ``ip_temperature``."""
    image = None if reference is None else ImagePrompt(reference, settings["ip_scale"], settings["ip_temperature"])
    return PromptSet(
        target=prompt,
        negative=resolved_negative_prompt(settings),
        target_negative_descriptors=settings["target_negative_descriptors"],
        reference=image,
    )


def distillation_loss(
    prior: DiffusionPrior,
    x: Float[Tensor, "B C H W"],
    prompts: PromptSet,
    config: DistillConfig,
    progress: float,
    generator: torch.Generator | None = None,  # on the CPU
    views: Views | None = None,
) -> StepResult:
    """Score-distillation loss on samples ``x`` in the prior's space (carrying gradient to the parameters).

    ``loss = 0.5 * ||x - (x - w g).detach()||^2 / B``, so d loss / d x = w(t) g / B.
    """
    spec = config.spec
    b = x.shape[0]
    t = sample_timesteps(b, progress, config.timesteps, prior.num_train_timesteps, generator, device=x.device)
    # Drawn from the run's CPU generator so a seed repeats a run on any device.
    noise = host_to_device(torch.randn(x.shape, generator=generator), x.device).to(x.dtype)
    abar = prior.alphas_cumprod[t].to(x.dtype)
    shape = (b,) + (1,) * (x.dim() - 1)
    x_t = abar.sqrt().view(shape) * x.detach() + (1 - abar).sqrt().view(shape) * noise
    ctx = StepContext(progress=progress, t=t, noise=noise, params=config.params)
    branches = spec.branches(ctx)
    with torch.no_grad():
        preds = prior.predict_noise(x_t, t, prompts, branches, views)
        preds = {k: v.to(x.dtype) for k, v in preds.items()}
        g, info = spec.direction(preds, ctx)
        w = timestep_weight(config.weighting, abar).view(shape)
        g = w * g
    target = (x - g).detach()
    loss = 0.5 * (x - target).pow(2).sum() / b
    info = {k: (v.detach().float().mean() if isinstance(v, Tensor) else v) for k, v in info.items()}
    return StepResult(loss=loss, t=t, branches=branches, info=info)

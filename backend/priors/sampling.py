"""Drawing images from a prior's text branches: DDIM with classifier-free guidance.

ModeDreamer's default reference image is "generated from the prompt by the text-to-image model"; for Stable Diffusion
that is a DDIM sample of the target prompt at CFG 7.5 (its paper's guidance), drawn here through the prior's own
``predict_noise`` (one batched call of the target and null branches per step), so a prior with an IP-Adapter draws it
from its plain prior (text rows carry no image).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from backend.priors.base import DiffusionPrior, PromptSet

REFERENCE_STEPS = 50
REFERENCE_GUIDANCE = 7.5  # ModeDreamer's CFG on both of ISD's priors


def ddim_sample(prior: "DiffusionPrior", prompts: "PromptSet", generator: torch.Generator,
                steps: int = REFERENCE_STEPS, guidance: float = REFERENCE_GUIDANCE,
                branches: tuple[str, str] = ("target", "null")) -> Float[Tensor, "3 H W"]:
    """One image in [0, 1] (on the CPU) of ``prompts.target``: deterministic DDIM (eta 0) over the prior's own
    training schedule, SD's 'leading' timesteps with offset 1, x_T drawn from ``generator`` (a CPU generator).

    ``branches`` are the conditional and unconditional branches guidance runs between: ("image_target",
    "image_null") samples the IP prior with the job's reference, as IP-Adapter pipelines do."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=prior.num_train_timesteps, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
    # The prior's own abar_t (whatever its betas): DDIM reads only these.
    scheduler.alphas_cumprod = prior.alphas_cumprod.detach().cpu().clone()
    scheduler.final_alpha_cumprod = scheduler.alphas_cumprod[0]
    scheduler.set_timesteps(steps)
    x = torch.randn(1, *prior.sample_shape, generator=generator)
    for t in scheduler.timesteps:
        cond, uncond = branches
        eps = prior.predict_noise(x.to(prior.device), t.view(1).to(prior.device), prompts, branches)
        guided = eps[uncond] + guidance * (eps[cond] - eps[uncond])
        x = scheduler.step(guided.float().cpu(), int(t), x).prev_sample
    with torch.no_grad():
        return prior.decode(x.to(prior.device))[0].float().cpu()


__all__ = ["REFERENCE_GUIDANCE", "REFERENCE_STEPS", "ddim_sample"]

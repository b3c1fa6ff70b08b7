"""Diffusion priors behind one interface (base.DiffusionPrior) and the loader that picks one."""

from __future__ import annotations

import torch

from backend.priors.base import BRANCHES, DiffusionPrior, PriorError, PromptSet


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise PriorError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise PriorError(f"device '{device}' is not one of auto, cpu, cuda")
    return torch.device(device)


def load_prior(model: str, device: torch.device | str = "cpu", procedural_resolution: int = 64,
               ip_adapter: str = "") -> DiffusionPrior:
    """'procedural' -> the embedded exact-score world; a shipped model's short name (``world-sd``) -> its folder;
    anything else -> a Stable Diffusion folder or hub id, with the IP-Adapter ``ip_adapter`` names when not empty
    (the procedural prior has its own image prompt and ignores it)."""
    from backend.shipped_models import SHIPPED, resolve_model

    device = torch.device(device)
    if model == "procedural":
        from backend.priors.procedural.prior import ProceduralPrior

        return ProceduralPrior(resolution=procedural_resolution, device=device)
    from backend.priors.stable_diffusion import StableDiffusionPrior

    prior = StableDiffusionPrior.from_pretrained(resolve_model(model), device=device, ip_adapter=ip_adapter)
    if model in SHIPPED:
        prior.name = model
    return prior


__all__ = ["BRANCHES", "DiffusionPrior", "PriorError", "PromptSet", "load_prior", "resolve_device"]

"""Timestep sampling over a run and the weight w(t) (REFERENCE.md, "Timesteps and schedules")."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from backend.config import SettingsView
from backend.transfer import host_to_device


@dataclass(frozen=True)
class TimestepConfig(SettingsView):
    """The run's timestep schedule: the settings of these names (shared/settings.py has their meaning)."""

    t_min: float
    t_max: float
    t_max_late: float
    t_anneal_at: float
    t_schedule: str


def t_max_at(progress: float, config: TimestepConfig) -> float:
    """Upper end of the t range at ``progress`` (fraction of the run) under the chosen anneal."""
    schedule = config.t_schedule
    t_max, late, at = config.t_max, config.t_max_late, config.t_anneal_at
    if schedule == "random_step_anneal":
        return late if progress >= at else t_max
    if schedule == "random_linear_anneal":
        frac = 1.0 if at <= 0 else min(progress / at, 1.0)
        return t_max + (late - t_max) * frac
    return t_max


def sample_timesteps(batch: int, progress: float, config: TimestepConfig, num_train_timesteps: int,
                     generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Int[Tensor, "B"]:
    """Integer timesteps in [0, num_train_timesteps) for one step of the run."""
    n = num_train_timesteps
    lo = config.t_min
    if config.t_schedule == "deterministic":
        # DreamGaussian: t walks down from t_max to t_min over the run.
        frac = config.t_max + (lo - config.t_max) * min(max(progress, 0.0), 1.0)
        return torch.full((batch,), int(round(frac * n)), dtype=torch.long, device=device).clamp(0, n - 1)
    hi = max(t_max_at(progress, config), lo)
    lo_i, hi_i = int(lo * n), int(hi * n)
    t = torch.randint(lo_i, max(hi_i, lo_i) + 1, (batch,), generator=generator, device="cpu")
    return host_to_device(t.clamp(0, n - 1), device)


def timestep_weight(kind: str, abar_t: Float[Tensor, "B"]) -> Float[Tensor, "B"]:
    """w(t) for the resolved weighting name (shared.settings.resolved_weighting)."""
    if kind == "sds":
        return 1 - abar_t
    if kind == "uniform":
        return torch.ones_like(abar_t)
    if kind == "sqrt_abar":
        return abar_t.sqrt()
    if kind == "abar":
        return abar_t
    raise ValueError(f"unknown weighting '{kind}'; allowed: sds, uniform, sqrt_abar, abar")

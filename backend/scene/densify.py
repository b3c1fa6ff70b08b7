"""Densification and pruning of 3D Gaussians as a strategy (gsplat's ``strategy/default.py`` pattern).

The strategy holds its hyperparameters (the scene's ``GaussianConfig``); its running statistics live in a
``DensifyState`` that the caller keeps and hands in, and the step's positional gradients arrive with the render
that made them (``RenderOutput.info``, a ``SplatInfo``). The scene therefore holds only its parameters: nothing
from one render waits in it for a later call.

gsplat calls its ``step_post_backward`` between ``backward`` and ``optimizer.step()``; here the round runs after
the optimiser's step (``step_post_optimiser``), so this step's update lands on the Gaussians before they are
cloned, split or pruned and the new ones start with zero Adam moments. That is the order the product's runs
have always had; moving it would change every Gaussian run. gsplat's ``step_pre_backward`` only asks for the 2D
means' gradient to be kept; both renderers here do that themselves (``splatting.py``), so there is no such hook.

Schedules are fractions of the run (``GaussianConfig``), so they scale to 500-2000 step runs, with a growth
budget per round (``GaussianConfig.max_growth``). A round replaces the scene's parameter tensors and rebuilds
the optimiser's param groups and Adam moments in place, so the training loop must not keep its own references
to the parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from backend.scene.representation import Strategy
from backend.scene.splatting import quat_to_rotmat

if TYPE_CHECKING:
    from backend.scene.gaussians import GaussianConfig, GaussianScene


def logit(p: float) -> float:
    return math.log(p / (1 - p))


@dataclass
class SplatInfo:
    """What a Gaussian render hands the strategy: its projected means (their ``.grad`` after ``backward`` is the
    view-space positional gradient), which Gaussians each view saw, and the rasterised image size."""

    means2d: Float[Tensor, "B N 2"]
    visible: Bool[Tensor, "B N"]
    width: int
    height: int


@dataclass
class DensifyState:
    """Positional-gradient statistics since the last round, per Gaussian (None until the first step)."""

    grad_sum: Float[Tensor, "N"] | None = None
    grad_count: Float[Tensor, "N"] | None = None


def replace_optimiser_param(
    optimiser: torch.optim.Optimizer, old: Tensor, new: Tensor, source: Int[Tensor, "M"]
) -> None:
    """Put ``new`` in place of ``old`` in the optimiser; row ``i`` of ``new`` takes the state of row
    ``source[i]`` of ``old``, or zero state where ``source[i] < 0`` (new Gaussians).

    Works for Adam/AdamW (exp_avg, exp_avg_sq, max_exp_avg_sq): every per-element state tensor with ``old``'s
    leading size is remapped; scalars such as ``step`` are kept.
    """
    for group in optimiser.param_groups:
        for i, p in enumerate(group["params"]):
            if p is old:
                group["params"][i] = new
    state = optimiser.state.pop(old, None)
    if not state:
        return
    fresh = source < 0
    src = source.clamp(min=0).to(new.device)
    remapped: dict[str, Any] = {}
    for key, value in state.items():
        if torch.is_tensor(value) and value.dim() > 0 and value.shape == old.shape:
            v = value[src]
            v[fresh.to(v.device)] = 0
            remapped[key] = v
        else:
            remapped[key] = value
    optimiser.state[new] = remapped


class DensifyStrategy(Strategy):
    """3DGS/gsplat's DefaultStrategy on a ``GaussianScene``: clone or split high-gradient Gaussians, prune
    transparent and huge ones, reset opacities, and decay the position learning rate, on the config's schedule."""

    def __init__(self, config: GaussianConfig) -> None:
        self.config = config

    def initialize_state(self) -> DensifyState:
        return DensifyState()

    def step_post_optimiser(self, scene: GaussianScene, optimiser: torch.optim.Optimizer, state: DensifyState,
                            step: int, total: int, info: SplatInfo | None) -> dict[str, int] | None:
        """Accumulate the step's positional gradients; densify/prune and reset opacity on schedule; decay the
        position lr. ``step`` counts from 0 and ``total`` is the run's number of steps. Returns the counts of a
        densification round when one ran, else None."""
        cfg = self.config
        if info is not None:
            self.accumulate(scene, state, info)
        done = step + 1
        counts = None
        if cfg.densify and total > 0:
            every = max(1, round(cfg.densify_every * total))
            if cfg.densify_from * total <= done <= cfg.densify_until * total and done % every == 0:
                counts = self.densify_and_prune(scene, optimiser, state)
            if any(done == max(1, round(f * total)) for f in cfg.opacity_reset_at):
                self.reset_opacity(scene, optimiser)
        progress = min(1.0, done / max(1, total))
        for group in optimiser.param_groups:
            if group.get("name") == "means" and "base_lr" in group:
                group["lr"] = group["base_lr"] * cfg.lr_means_final**progress
        return counts

    @staticmethod
    def _fresh(state: DensifyState, n: int, device: torch.device) -> None:
        state.grad_sum = torch.zeros(n, device=device)
        state.grad_count = torch.zeros(n, device=device)

    @torch.no_grad()
    def accumulate(self, scene: GaussianScene, state: DensifyState, info: SplatInfo) -> None:
        """Add one backpropagated render's view-space positional gradient norms to the statistics."""
        if state.grad_sum is None or state.grad_sum.shape[0] != scene.num_points:
            self._fresh(state, scene.num_points, scene.means.device)
        grad = info.means2d.grad
        if grad is None:  # the render was not part of the loss
            return
        assert state.grad_sum is not None and state.grad_count is not None
        # gsplat's normalisation: pixels -> NDC (x width/2) and undo the loss's mean over views (x views).
        # (Python scalars, not a small tensor: building one on the host would be a copy that syncs every step.)
        scaled = torch.stack([grad[..., 0] * (info.width / 2), grad[..., 1] * (info.height / 2)], dim=-1)
        scaled = scaled * grad.shape[0]
        norm = scaled.norm(dim=-1) * info.visible  # B N
        state.grad_sum += norm.sum(0)
        state.grad_count += info.visible.sum(0)

    @torch.no_grad()
    def reset_opacity(self, scene: GaussianScene, optimiser: torch.optim.Optimizer | None = None) -> None:
        """Clamp opacities to ``opacity_reset_value`` and clear their Adam moments (3DGS's reset)."""
        cap = logit(self.config.opacity_reset_value)
        scene.opacity_logits.clamp_(max=cap)
        if optimiser is not None:
            for value in optimiser.state.get(scene.opacity_logits, {}).values():
                if torch.is_tensor(value) and value.shape == scene.opacity_logits.shape:
                    value.zero_()

    @torch.no_grad()
    def densify_and_prune(self, scene: GaussianScene, optimiser: torch.optim.Optimizer | None,
                          state: DensifyState) -> dict[str, int]:
        """Clone small and split large high-gradient Gaussians, then prune transparent and huge ones; the
        statistics start again. Returns the round's counts. The optimiser's params and Adam state follow."""
        cfg = self.config
        n = scene.num_points
        if state.grad_sum is None or state.grad_sum.shape[0] != n:
            self._fresh(state, n, scene.means.device)
        assert state.grad_sum is not None and state.grad_count is not None
        avg_grad = state.grad_sum / state.grad_count.clamp(min=1)
        scales = scene.scales()
        max_scale = scales.max(dim=-1).values

        # Growth: candidates above the threshold, best first, within the round's budget and the cap.
        candidates = torch.nonzero(avg_grad > cfg.grad_threshold, as_tuple=True)[0]
        candidates = candidates[torch.argsort(avg_grad[candidates], descending=True)]
        budget = max(0, min(int(cfg.max_growth * n), cfg.max_points - n))
        chosen = candidates[:budget]  # each clone or split adds one Gaussian net
        is_large = max_scale[chosen] > cfg.split_scale
        clone_idx, split_idx = chosen[~is_large], chosen[is_large]

        # Split children: two samples from the parent Gaussian, scales / split_factor (3DGS).
        rot = quat_to_rotmat(scene.quats[split_idx])
        offsets = torch.randn(2, split_idx.shape[0], 3, device=scene.means.device) * scales[split_idx]
        child_means = (scene.means[split_idx][None] + (rot[None] @ offsets[..., None])[..., 0]).reshape(-1, 3)
        child_log_scales = (scene.log_scales[split_idx] - math.log(cfg.split_factor)).repeat(2, 1)

        keep_mask = torch.ones(n, dtype=torch.bool, device=scene.means.device)
        keep_mask[split_idx] = False
        kept = torch.nonzero(keep_mask, as_tuple=True)[0]
        n_new = clone_idx.shape[0] + 2 * split_idx.shape[0]

        def grow(name: str, children: Tensor | None = None) -> Tensor:
            p = getattr(scene, name)
            child = children if children is not None else p[split_idx].repeat(2, *([1] * (p.dim() - 1)))
            return torch.cat([p[kept], p[clone_idx], child])

        values = {
            "means": grow("means", child_means),
            "log_scales": grow("log_scales", child_log_scales),
            "quats": grow("quats"),
            "opacity_logits": grow("opacity_logits"),
            "albedo_logits": grow("albedo_logits"),
        }
        # Kept rows keep their Adam moments; clones and children start from zero state (3DGS, gsplat).
        source = torch.cat([kept, torch.full((n_new,), -1, dtype=torch.long, device=kept.device)])

        # Prune: transparent or huge; never everything.
        opacity = torch.sigmoid(values["opacity_logits"])
        huge = values["log_scales"].exp().max(dim=-1).values > cfg.prune_scale
        survive = ~((opacity < cfg.prune_opacity) | huge)
        if not survive.any():
            survive[opacity.argmax()] = True
        values = {k: v[survive] for k, v in values.items()}
        source = source[survive]

        for name, value in values.items():
            old = getattr(scene, name)
            new = nn.Parameter(value.contiguous(), requires_grad=old.requires_grad)
            if optimiser is not None:
                replace_optimiser_param(optimiser, old, new, source)
            setattr(scene, name, new)
        self._fresh(state, scene.num_points, scene.means.device)
        return {
            "cloned": int(clone_idx.shape[0]),
            "split": int(split_idx.shape[0]),
            "pruned": int((~survive).sum()),
            "count": scene.num_points,
        }


__all__ = ["DensifyState", "DensifyStrategy", "SplatInfo", "logit", "replace_optimiser_param"]

"""Score-distillation directions as pure functions of the denoiser's outputs.

Each function takes noise predictions (REFERENCE.md notation: ``e_tgt``, ``e_null``,
``e_neg``, ``e_tnp``) and returns the direction ``g`` on x_t's space; the training step
multiplies by w(t) and turns it into a loss. No I/O, no globals, no prior: every function
here can be checked on random tensors against the papers' equations.

``METHODS`` says, for each method, which branches it needs at a given point of the run
(Bridge changes branches between its stages) and how to combine them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from jaxtyping import Float, Int
from torch import Tensor

Direction = Float[Tensor, "B C H W"]


def mgda(u: Direction, v: Direction) -> tuple[Direction, Float[Tensor, "B"]]:
    """Min-norm point of the segment between ``u`` and ``v``, per batch item (Desideri 2012).

    Returns ``(mu u + (1 - mu) v, mu)`` with ``mu = clip(((v - u) . v) / ||v - u||^2, 0, 1)``.
    Equal vectors (zero denominator) give mu = 0.5 and return the common vector; a zero
    vector is the min-norm point itself (mu = 1 for u = 0, mu = 0 for v = 0). Never NaN.
    """
    b = u.shape[0]
    uf = u.reshape(b, -1).double()
    vf = v.reshape(b, -1).double()
    diff = vf - uf
    denom = (diff * diff).sum(-1)
    numer = (diff * vf).sum(-1)
    safe = denom > 0
    mu = torch.where(safe, numer / torch.where(safe, denom, torch.ones_like(denom)), torch.full_like(denom, 0.5))
    mu = mu.clamp(0.0, 1.0).to(u.dtype)
    m = mu.view(b, *([1] * (u.dim() - 1)))
    return m * u + (1 - m) * v, mu


def cfg(e_null: Direction, e_tgt: Direction, scale: float) -> Direction:
    """Classifier-free guidance, diffusers' convention: e_null + s (e_tgt - e_null)."""
    return e_null + scale * (e_tgt - e_null)


def sds(e_tgt: Direction, e_null: Direction, noise: Direction, guidance_scale: float) -> Direction:
    """DreamFusion: g = e_null + s (e_tgt - e_null) - eps."""
    return cfg(e_null, e_tgt, guidance_scale) - noise


def nfsd(e_tgt: Direction, e_null: Direction, e_neg: Direction, t: Int[Tensor, "B"], guidance_scale: float,
         small_t: int = 200) -> Direction:
    """Noise-Free Score Distillation: g = s (e_tgt - e_null) + d_D.

    d_D = e_null for t < small_t (the prediction is nearly pure denoising there), else e_null - e_neg.
    """
    small = (t < small_t).view(-1, *([1] * (e_tgt.dim() - 1)))
    d_d = torch.where(small, e_null, e_null - e_neg)
    return guidance_scale * (e_tgt - e_null) + d_d


def csd(e_tgt: Direction, e_null: Direction, e_neg: Direction, w1: float, w2: float,
        normalize: bool = False) -> Direction:
    """Classifier Score Distillation: g = w1 (e_tgt - e_null) + w2 (e_null - e_neg)."""
    g = w1 * (e_tgt - e_null) + w2 * (e_null - e_neg)
    if normalize:
        norm = g.flatten(1).norm(dim=-1).clamp(min=1e-12).view(-1, *([1] * (g.dim() - 1)))
        g = g / norm
    return g


def csd_edit(e_tgt: Direction, e_null: Direction, e_edit: Direction, w1: float, w2: float,
             noise: Direction | None = None, anchor: float = 0.0) -> Direction:
    """CSD's text-guided editing (CSD paper, eq. 11, applied in its sec. 5.4):
    g = w1 (e_tgt - e_null) - w2 (e_edit - e_null) = w1 e(y_target) + (w2 - w1) e(empty) - w2 e(y_edit).

    ``e_edit`` is the prediction under y_edit, the attribute to remove ("red"), ``e_tgt`` under the wanted object
    ("a green cube"); paper: w1 = 1, w2 = 0.5. Like CSD's, eq. 11 is used as it is (no ``- eps``): both terms are
    classifier scores. Written as the two differences, which keeps the cancellation between close predictions out
    of a sum of three large ones.

    ``anchor`` > 0 adds ``anchor (e_tgt - eps)`` (not in the paper), as TBSD's anchor does and for the same reason:
    the classifier terms have no fixed point at the target (the first vanishes once the prior names the target, the
    second never does), so eq. 11 alone leaves an edited asset mottled and hollowed (docs/METHODS.md, session 14).
    """
    g = w1 * (e_tgt - e_null) - w2 * (e_edit - e_null)
    if anchor:
        if noise is None:
            raise ValueError("csd_edit: an anchor needs the injected noise")
        g = g + anchor * (e_tgt - noise)
    return g


def bridge_stage2(e_tgt: Direction, e_src: Direction, k: float) -> Direction:
    """SDS-Bridge's second stage: g = k (e_tgt - e_src), e_src the target-negative prompt."""
    return k * (e_tgt - e_src)


def bsd(e_tgt: Direction, e_null: Direction, lam: float) -> tuple[Direction, Float[Tensor, "B"]]:
    """Balanced Score Distillation (PlacidDreamer eqs. 16-23): MGDA of c = lam (e_tgt - e_null) and d = e_null."""
    return mgda(lam * (e_tgt - e_null), e_null)


def tbsd_factor(progress: float, alpha: float, beta: float, gamma: float) -> float:
    """TBSD eq. 11, factor(step) = max(alpha (1 - step / beta), gamma), with step and beta as fractions of the run."""
    return max(alpha * (1.0 - progress / beta), gamma)


def tbsd(e_tgt: Direction, e_null: Direction, e_tnp: Direction, factor: float, noise: Direction | None = None,
         anchor: float = 0.0) -> tuple[Direction, Float[Tensor, "B"]]:
    """Target-Balanced Score Distillation (TBSD eqs. 10-14).

    d_s = e_tgt - e_null (shape), d_t = e_tgt - e_tnp (texture), d_td = factor d_t;
    g = mu d_s + (1 - mu) d_td with mu the per-sample MGDA weight.

    ``anchor`` > 0 adds ``anchor (e_tgt - eps)`` (not in the paper): both of TBSD's terms are differences of
    class-conditional predictions, so they vanish wherever the prior already names the target and the direction
    stops on the decision boundary, not at the target; ``e_tgt - eps`` has zero mean only at the target
    (docs/METHODS.md, "Why: classifier-only directions have no fixed point at the target").
    """
    d_s = e_tgt - e_null
    d_td = factor * (e_tgt - e_tnp)
    g, mu = mgda(d_s, d_td)
    if anchor:
        if noise is None:
            raise ValueError("tbsd: an anchor needs the injected noise")
        g = g + anchor * (e_tgt - noise)
    return g, mu


def isd(e_ip_tgt: Direction, e_ip_null: Direction, e_tgt: Direction, e_null: Direction,
        guidance_scale: float, noise: Direction | None = None, noise_weight: float = 0.0) -> Direction:
    """Image-prompt Score Distillation (ModeDreamer, seed 004 eq. 7): g = e_IP(x_t; y, x_ref) - e_SD(x_t; y).

    Both terms with classifier-free guidance at the same scale (the paper: 7.5 on both): the IP prior's
    ``e_ip_null + s (e_ip_tgt - e_ip_null)``, its null branch being the empty text with a zero image embedding,
    minus the plain prior's ``e_null + s (e_tgt - e_null)``. The plain prior's prediction stands where SDS has the
    injected noise: a control variate that correlates with the IP prior's prediction far better than noise does.

    ``noise_weight`` a > 0 blends the two control variates the paper compares (sec. 4.2, Table 3):
    ``g = e_IP_cfg - ((1 - a) e_SD_cfg + a eps)``; a = 0 is eq. 7, a = 1 IP-SDS (eq. 4). Not in the paper as a
    blend: eq. 7 alone is a difference of two priors' predictions, which vanishes wherever they agree (in the
    procedural world: everywhere the prompt's objects look alike, e.g. the background), so it never denoises there;
    the noise term does (docs/METHODS.md, session 14).
    """
    g = cfg(e_ip_null, e_ip_tgt, guidance_scale)
    e_sd = cfg(e_null, e_tgt, guidance_scale)
    if not noise_weight:
        return g - e_sd
    if noise is None:
        raise ValueError("isd: a noise weight needs the injected noise")
    return g - ((1 - noise_weight) * e_sd + noise_weight * noise)


# ---------------------------------------------------------------------------------------------
# Method table: each method's parameters, the branches it needs and how it combines them
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SDSParams:
    sds_guidance_scale: float


@dataclass(frozen=True)
class NFSDParams:
    nfsd_guidance_scale: float
    nfsd_small_t: int


@dataclass(frozen=True)
class CSDParams:
    csd_w1: float
    csd_w2: float
    csd_anneal_until: float
    csd_normalize: bool


@dataclass(frozen=True)
class BridgeParams:
    sds_guidance_scale: float  # stage 1 is SDS
    bridge_switch_at: float
    bridge_k: float


@dataclass(frozen=True)
class BSDParams:
    bsd_lambda: float
    bsd_use_negative: bool


@dataclass(frozen=True)
class TBSDParams:
    tbsd_alpha: float
    tbsd_beta: float
    tbsd_gamma: float
    tbsd_scale: float
    tbsd_anchor: float


@dataclass(frozen=True)
class ISDParams:
    isd_guidance_scale: float
    isd_noise_weight: float


@dataclass(frozen=True)
class EditParams:
    edit_w1: float
    edit_w2: float
    edit_anchor: float


@dataclass(frozen=True)
class StepContext:
    """What a method may read besides the predictions: run progress, timesteps, injected noise, and its own
    parameters (the method's ``params`` dataclass, built once from the settings when a job starts)."""

    progress: float  # step / total steps, in [0, 1)
    t: Int[Tensor, "B"]
    noise: Direction
    params: Any


@dataclass(frozen=True)
class MethodSpec:
    name: str
    # A frozen dataclass whose fields are the settings the method reads (backend/config.py).
    params: type
    branches: Callable[[StepContext], tuple[str, ...]]
    direction: Callable[[Mapping[str, Direction], StepContext], tuple[Direction, dict[str, Any]]]
    # Whether the method reads a reference image (its branches include the image-prompt ones).
    image_prompt: bool = False


def _bridge_stage(ctx: StepContext) -> int:
    return 2 if ctx.progress >= ctx.params.bridge_switch_at else 1


def _sds_dir(e: Mapping[str, Direction], ctx: StepContext) -> tuple[Direction, dict[str, Any]]:
    return sds(e["target"], e["null"], ctx.noise, ctx.params.sds_guidance_scale), {}


def _nfsd_dir(e: Mapping[str, Direction], ctx: StepContext) -> tuple[Direction, dict[str, Any]]:
    p = ctx.params
    return nfsd(e["target"], e["null"], e["negative"], ctx.t, p.nfsd_guidance_scale, p.nfsd_small_t), {}


def csd_negative_weight(progress: float, w2: float, anneal_until: float) -> float:
    """CSD's annealed negative weight: rises linearly from 0 to w2 over the first ``anneal_until`` of the run."""
    if anneal_until <= 0:
        return w2
    return w2 * min(progress / anneal_until, 1.0)


def _csd_dir(e: Mapping[str, Direction], ctx: StepContext) -> tuple[Direction, dict[str, Any]]:
    p = ctx.params
    w2 = csd_negative_weight(ctx.progress, p.csd_w2, p.csd_anneal_until)
    return csd(e["target"], e["null"], e["negative"], p.csd_w1, w2, p.csd_normalize), {"csd_w2": w2}


def _edit_dir(e: Mapping[str, Direction], ctx: StepContext) -> tuple[Direction, dict[str, Any]]:
    # The negative branch carries y_edit (shared/settings.py resolved_negative_prompt): eq. 11 is eq. 10 with
    # y_neg replaced by y_edit, so the prior needs no branch of its own.
    p = ctx.params
    return csd_edit(e["target"], e["null"], e["negative"], p.edit_w1, p.edit_w2, ctx.noise, p.edit_anchor), {}


def _bridge_dir(e: Mapping[str, Direction], ctx: StepContext) -> tuple[Direction, dict[str, Any]]:
    if _bridge_stage(ctx) == 1:
        g, _ = _sds_dir(e, ctx)
        return g, {"bridge_stage": 1}
    return bridge_stage2(e["target"], e["target_negative"], ctx.params.bridge_k), {"bridge_stage": 2}


def _bsd_uncond(params: BSDParams) -> str:
    # The released BSD code feeds its negative prompt where the paper writes the empty prompt.
    return "negative" if params.bsd_use_negative else "null"


def _bsd_dir(e: Mapping[str, Direction], ctx: StepContext) -> tuple[Direction, dict[str, Any]]:
    g, a = bsd(e["target"], e[_bsd_uncond(ctx.params)], ctx.params.bsd_lambda)
    return g, {"mgda_weight": a}


def _tbsd_dir(e: Mapping[str, Direction], ctx: StepContext) -> tuple[Direction, dict[str, Any]]:
    p = ctx.params
    f = tbsd_factor(ctx.progress, p.tbsd_alpha, p.tbsd_beta, p.tbsd_gamma)
    g, mu = tbsd(e["target"], e["null"], e["target_negative"], f, ctx.noise, p.tbsd_anchor)
    return p.tbsd_scale * g, {"mgda_weight": mu, "tbsd_factor": f}


def _isd_dir(e: Mapping[str, Direction], ctx: StepContext) -> tuple[Direction, dict[str, Any]]:
    p = ctx.params
    return isd(e["image_target"], e["image_null"], e["target"], e["null"], p.isd_guidance_scale, ctx.noise,
               p.isd_noise_weight), {}


METHODS: dict[str, MethodSpec] = {
    "sds": MethodSpec("sds", SDSParams, lambda ctx: ("target", "null"), _sds_dir),
    "nfsd": MethodSpec("nfsd", NFSDParams, lambda ctx: ("target", "null", "negative"), _nfsd_dir),
    "csd": MethodSpec("csd", CSDParams, lambda ctx: ("target", "null", "negative"), _csd_dir),
    "bridge": MethodSpec(
        "bridge",
        BridgeParams,
        lambda ctx: ("target", "null") if _bridge_stage(ctx) == 1 else ("target", "target_negative"),
        _bridge_dir,
    ),
    "bsd": MethodSpec("bsd", BSDParams, lambda ctx: ("target", _bsd_uncond(ctx.params)), _bsd_dir),
    "tbsd": MethodSpec("tbsd", TBSDParams, lambda ctx: ("target", "null", "target_negative"), _tbsd_dir),
    "isd": MethodSpec("isd", ISDParams, lambda ctx: ("target", "null", "image_target", "image_null"), _isd_dir,
                      image_prompt=True),
}

# Not a generation method, so not in METHODS (nor in the method lists built from shared/settings.py's): the
# direction a refine runs instead of its job's method when it names an edit prompt (shared/settings.py `editing`).
EDIT = MethodSpec("csd_edit", EditParams, lambda ctx: ("target", "null", "negative"), _edit_dir)


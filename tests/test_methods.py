"""Score-distillation methods, the training step, timesteps and settings, checked against the papers.

Every expected value here is computed independently of the product's helpers: the method formulas
are re-written from REFERENCE.md ('Methods' table) and the seed papers (TBSD eqs. 10-14, BSD eqs.
16-23), and the MGDA weight is found from dot products of u and v and confirmed by a grid search
over mu in [0, 1].
"""

from __future__ import annotations

import math

import pytest
import torch

from backend.distill import methods as M
from backend.distill.step import DistillConfig, distillation_loss, prompt_set
from backend.distill.timesteps import TimestepConfig, sample_timesteps, t_max_at, timestep_weight
from backend.priors.procedural.prior import ProceduralPrior
from shared.settings import (
    BSD_NEGATIVE,
    CSD_NEGATIVE,
    NFSD_NEGATIVE,
    TARGET_NEGATIVE_DESCRIPTORS,
    SettingsError,
    check_new_job,
    refine_base,
    resolved_negative_prompt,
    resolved_weighting,
    validate,
)

B, C, H, W = 4, 3, 5, 6
PROMPT = "a red cube"


def rand(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def preds(seed=0):
    """Four independent random 'noise predictions' and an injected noise, float64."""
    return [rand(B, C, H, W, seed=seed + i) for i in range(5)]


def per_item(x):
    return x.reshape(x.shape[0], -1)


def dot(a, b):
    return torch.einsum("bi,bi->b", per_item(a), per_item(b))


def expand(s, like):
    return s.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


# ---------------------------------------------------------------------------------------------
# Independent MGDA: min over mu in [0, 1] of ||mu u + (1 - mu) v||^2, per batch item
# ---------------------------------------------------------------------------------------------


def min_norm_closed_form(u, v):
    """Setting d/dmu [mu^2 uu + 2 mu (1 - mu) uv + (1 - mu)^2 vv] = 0 gives mu = (vv - uv) / (uu - 2 uv + vv)."""
    uu, uv, vv = dot(u, u), dot(u, v), dot(v, v)
    curvature = uu - 2 * uv + vv
    mu = []
    for i in range(u.shape[0]):
        if curvature[i] <= 1e-300:  # u == v: every mu gives the same point
            mu.append(0.5)
        else:
            mu.append(min(max(float((vv[i] - uv[i]) / curvature[i]), 0.0), 1.0))
    mu = torch.tensor(mu, dtype=torch.float64)
    return expand(mu, u) * u + (1 - expand(mu, u)) * v, mu


def min_norm_grid(u, v, n=20001):
    """Brute force: evaluate the squared norm of the segment point on a grid of mu in [0, 1]."""
    uu, uv, vv = dot(u, u), dot(u, v), dot(v, v)
    mu = torch.linspace(0, 1, n, dtype=torch.float64)[None]
    obj = mu**2 * uu[:, None] + 2 * mu * (1 - mu) * uv[:, None] + (1 - mu) ** 2 * vv[:, None]
    best = obj.argmin(dim=1)
    return mu[0, best], obj.min(dim=1).values


def sq_norm(x):
    return dot(x, x)


def check_min_norm(result, mu, u, v):
    """``result`` with weight ``mu`` is the min-norm point of the segment [u, v] for every batch item."""
    exp_result, exp_mu = min_norm_closed_form(u, v)
    torch.testing.assert_close(result, exp_result, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(mu.double(), exp_mu, rtol=1e-9, atol=1e-12)
    grid_mu, grid_obj = min_norm_grid(u, v)
    scale = sq_norm(u) + sq_norm(v)
    assert torch.all(sq_norm(result) <= grid_obj + 1e-9 * scale)
    assert torch.all((mu.double() - grid_mu).abs() <= 1e-4)


def test_mgda_on_random_vectors_is_the_min_norm_point_per_item():
    u = rand(6, C, H, W, seed=1)
    # Mix scales so some items are interior, some clipped: v = a u + b noise.
    a = torch.tensor([0.0, 0.3, 1.0, 3.0, -0.5, 0.05], dtype=torch.float64)
    b = torch.tensor([1.0, 1.0, 0.3, 2.0, 1.0, 0.01], dtype=torch.float64)
    v = expand(a, u) * u + expand(b, u) * rand(6, C, H, W, seed=2)
    g, mu = M.mgda(u, v)
    check_min_norm(g, mu, u, v)
    # clipped-at-0, clipped-at-1 and interior weights all occur in this one batch
    assert (mu == 0).any() and (mu == 1).any() and ((mu > 0) & (mu < 1)).any()


def test_mgda_clips_at_zero_and_one():
    u = rand(2, C, H, W, seed=3)
    # v much shorter than u and aligned with it: the unclipped mu is negative, the answer is v.
    v_short = 0.1 * u
    g, mu = M.mgda(u, v_short)
    assert torch.all(mu == 0)
    torch.testing.assert_close(g, v_short)
    # u much shorter than v: the unclipped mu exceeds 1, the answer is u.
    u_short = 0.1 * u
    g, mu = M.mgda(u_short, u)
    assert torch.all(mu == 1)
    torch.testing.assert_close(g, u_short)
    check_min_norm(*M.mgda(u, v_short), u, v_short)


def test_mgda_degenerate_cases_never_nan():
    u = rand(1, C, H, W, seed=4)
    z = torch.zeros_like(u)
    # equal vectors: the segment is one point
    g, mu = M.mgda(u, u.clone())
    assert torch.isfinite(g).all() and torch.isfinite(mu).all()
    torch.testing.assert_close(g, u)
    assert 0 <= float(mu) <= 1
    # a zero vector on either side is the min-norm point
    for a, bb in ((z, u), (u, z), (z, z)):
        g, mu = M.mgda(a, bb)
        assert torch.isfinite(g).all() and torch.isfinite(mu).all()
        assert torch.all(g == 0)
    assert float(M.mgda(z, u)[1]) == 1.0
    assert float(M.mgda(u, z)[1]) == 0.0


def test_mgda_weights_are_independent_per_batch_item():
    x = rand(1, C, H, W, seed=5)
    y = rand(1, C, H, W, seed=6)
    z = torch.zeros_like(x)
    cases = [(x, y), (x, 0.1 * x), (0.1 * x, x), (x, x.clone()), (z, y), (x, z), (z, z)]
    u = torch.cat([c[0] for c in cases])
    v = torch.cat([c[1] for c in cases])
    g, mu = M.mgda(u, v)
    assert torch.isfinite(g).all() and torch.isfinite(mu).all()
    for i, (a, bb) in enumerate(cases):
        gi, mui = M.mgda(a, bb)
        torch.testing.assert_close(g[i : i + 1], gi)
        torch.testing.assert_close(mu[i : i + 1], mui)
    # expected weights of the well-defined items
    assert mu[1] == 0 and mu[2] == 1 and mu[4] == 1 and mu[5] == 0
    assert 0 < mu[0] < 1
    torch.testing.assert_close(g[3], x[0])
    assert torch.all(g[4:] == 0)
    nondegenerate = [0, 1, 2]
    check_min_norm(g[nondegenerate], mu[nondegenerate], u[nondegenerate], v[nondegenerate])


def test_mgda_keeps_float32_dtype():
    u, v = rand(3, C, H, W, seed=7, dtype=torch.float32), rand(3, C, H, W, seed=8, dtype=torch.float32)
    g, mu = M.mgda(u, v)
    assert g.dtype == torch.float32
    exp, _ = min_norm_closed_form(u.double(), v.double())
    torch.testing.assert_close(g.double(), exp, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Methods against REFERENCE.md's table
# ---------------------------------------------------------------------------------------------


def test_sds_matches_dreamfusion():
    e_tgt, e_null, _, _, eps = preds(10)
    s = 100.0
    expected = e_null + s * (e_tgt - e_null) - eps
    torch.testing.assert_close(M.sds(e_tgt, e_null, eps, s), expected)
    # threestudio's convention e_tgt + gs (e_tgt - e_null) with gs = s - 1 is the same direction
    torch.testing.assert_close(M.sds(e_tgt, e_null, eps, s), e_tgt + (s - 1) * (e_tgt - e_null) - eps)


def test_nfsd_switches_d_d_per_batch_item_at_small_t():
    e_tgt, e_null, e_neg, _, _ = preds(20)
    s, small_t = 7.5, 200
    t = torch.tensor([10, 199, 200, 900])
    g = M.nfsd(e_tgt, e_null, e_neg, t, s, small_t)
    for i in range(B):
        d_d = e_null[i] if int(t[i]) < small_t else e_null[i] - e_neg[i]
        torch.testing.assert_close(g[i], s * (e_tgt[i] - e_null[i]) + d_d)
    # the two sides really differ (by e_neg)
    torch.testing.assert_close(M.nfsd(e_tgt, e_null, e_neg, t, s, 0) - g,
                               -torch.stack([e_neg[0], e_neg[1], torch.zeros_like(e_neg[0]),
                                             torch.zeros_like(e_neg[0])]))


def test_csd_plain_and_normalized():
    e_tgt, e_null, e_neg, _, _ = preds(30)
    w1, w2 = 1.3, 0.7
    expected = w1 * (e_tgt - e_null) + w2 * (e_null - e_neg)
    torch.testing.assert_close(M.csd(e_tgt, e_null, e_neg, w1, w2), expected)
    g = M.csd(e_tgt, e_null, e_neg, w1, w2, normalize=True)
    norms = torch.sqrt(torch.stack([(expected[i] ** 2).sum() for i in range(B)]))
    torch.testing.assert_close(g, expected / expand(norms, expected))
    torch.testing.assert_close(torch.stack([g[i].pow(2).sum() for i in range(B)]),
                               torch.ones(B, dtype=torch.float64))
    # w2 = 0: the classifier score alone
    torch.testing.assert_close(M.csd(e_tgt, e_null, e_neg, 1.0, 0.0), e_tgt - e_null)


@pytest.mark.parametrize(
    "progress, anneal_until, expected_fraction",
    [(0.0, 0.5, 0.0), (0.1, 0.5, 0.2), (0.25, 0.5, 0.5), (0.5, 0.5, 1.0), (0.9, 0.5, 1.0), (0.3, 0.0, 1.0)],
)
def test_csd_negative_weight_rises_linearly_to_w2(progress, anneal_until, expected_fraction):
    assert M.csd_negative_weight(progress, 2.0, anneal_until) == pytest.approx(2.0 * expected_fraction)


@pytest.mark.parametrize("w1, w2", [(1.0, 0.5), (1.7, 0.3), (0.4, 2.0)])
def test_csd_edit_is_eq_11(w1, w2):
    """CSD eq. 11 in its expanded form, w1 e(y_target) + (w2 - w1) e(empty) - w2 e(y_edit), item by item."""
    e_tgt, e_null, e_edit, _, _ = preds(60)
    expected = torch.stack([w1 * e_tgt[i] + (w2 - w1) * e_null[i] - w2 * e_edit[i] for i in range(B)])
    torch.testing.assert_close(M.csd_edit(e_tgt, e_null, e_edit, w1, w2), expected, rtol=1e-12, atol=1e-12)


def test_csd_edit_without_an_attribute_is_csd_without_a_negative():
    # The paper's remark: generation is the special case w2 = 0 (and an empty y_edit leaves w1's term alone).
    e_tgt, e_null, e_edit, _, _ = preds(61)
    torch.testing.assert_close(M.csd_edit(e_tgt, e_null, e_edit, 1.3, 0.0), M.csd(e_tgt, e_null, e_edit, 1.3, 0.0))
    torch.testing.assert_close(M.csd_edit(e_tgt, e_null, e_null, 1.3, 0.5), 1.3 * (e_tgt - e_null))


def test_csd_edit_anchor_adds_e_tgt_minus_eps():
    e_tgt, e_null, e_edit, _, noise = preds(62)
    plain = M.csd_edit(e_tgt, e_null, e_edit, 1.0, 0.5)
    torch.testing.assert_close(M.csd_edit(e_tgt, e_null, e_edit, 1.0, 0.5, noise, 0.7), plain + 0.7 * (e_tgt - noise))
    with pytest.raises(ValueError, match="noise"):
        M.csd_edit(e_tgt, e_null, e_edit, 1.0, 0.5, None, 0.7)


def test_bridge_stage2():
    e_tgt, _, _, e_tnp, _ = preds(40)
    torch.testing.assert_close(M.bridge_stage2(e_tgt, e_tnp, 1.5), 1.5 * (e_tgt - e_tnp))


def test_bsd_is_mgda_of_classifier_and_smoothing_terms():
    e_tgt, e_null, _, _, _ = preds(50)
    lam = 15.0
    # Make the batch mix regimes: shrink e_null on item 0 (smoothing term wins: a -> 0) and the
    # classifier term on item 1 (a -> 1).
    e_null = e_null.clone()
    e_null[0] *= 1e-3
    e_tgt = e_tgt.clone()
    e_tgt[1] = e_null[1] * (1 + 1e-3)  # c = 0.015 d: parallel to d and shorter
    g, a = M.bsd(e_tgt, e_null, lam)
    c = lam * (e_tgt - e_null)
    d = e_null  # no -eps in BSD
    check_min_norm(g, a, c, d)
    assert float(a[0]) == 0.0 and float(a[1]) == 1.0


@pytest.mark.parametrize(
    "progress, alpha, beta, gamma, expected",
    [
        (0.0, 4.0, 0.5, 1.0, 4.0),
        (0.25, 4.0, 0.5, 1.0, 2.0),
        (0.375, 4.0, 0.5, 1.0, 1.0),
        (0.45, 4.0, 0.5, 1.0, 1.0),  # 4 (1 - 0.9) = 0.4 < gamma: clamped
        (1.0, 4.0, 0.5, 1.0, 1.0),  # alpha (1 - 2) < 0: clamped
        (0.1, 10.0, 1.0, 0.5, 9.0),
        (0.99, 10.0, 1.0, 0.5, 0.5),
    ],
)
def test_tbsd_factor(progress, alpha, beta, gamma, expected):
    assert M.tbsd_factor(progress, alpha, beta, gamma) == pytest.approx(expected)


def test_tbsd_factor_is_nonincreasing_and_bounded_by_gamma():
    values = [M.tbsd_factor(p / 100, 4.0, 0.5, 1.0) for p in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert min(values) == 1.0 and max(values) == 4.0


@pytest.mark.parametrize("factor", [0.3, 1.0, 4.0])
def test_tbsd_matches_eqs_10_to_14(factor):
    e_tgt, e_null, _, e_tnp, _ = preds(60)
    g, mu = M.tbsd(e_tgt, e_null, e_tnp, factor)
    d_s = e_tgt - e_null  # eq. 10
    d_td = factor * (e_tgt - e_tnp)  # eqs. 10-11
    check_min_norm(g, mu, d_s, d_td)  # eqs. 12-14


def test_tbsd_anchor_adds_e_tgt_minus_eps_outside_the_min_norm_point():
    """The anchor is added after MGDA (it is not a third objective), has zero effect where e_tgt equals the injected
    noise (the target's fixed point), and needs the noise."""
    e_tgt, e_null, _, e_tnp, noise = preds(61)
    paper, mu = M.tbsd(e_tgt, e_null, e_tnp, 2.0)
    anchored, mu_anchored = M.tbsd(e_tgt, e_null, e_tnp, 2.0, noise, 0.7)
    torch.testing.assert_close(anchored, paper + 0.7 * (e_tgt - noise))
    torch.testing.assert_close(mu_anchored, mu)
    at_fixed_point, _ = M.tbsd(e_tgt, e_null, e_tnp, 2.0, e_tgt.clone(), 0.7)
    torch.testing.assert_close(at_fixed_point, paper)
    with pytest.raises(ValueError, match="noise"):
        M.tbsd(e_tgt, e_null, e_tnp, 2.0, None, 0.7)


def test_tbsd_large_factor_follows_shape_term():
    """MGDA leans to the shorter vector: a long d_td (large factor) gives mu near 1 (shape)."""
    e_tgt, e_null, _, e_tnp, _ = preds(70)
    _, mu_big = M.tbsd(e_tgt, e_null, e_tnp, 1000.0)
    _, mu_small = M.tbsd(e_tgt, e_null, e_tnp, 1e-3)
    assert torch.all(mu_big > 0.99) and torch.all(mu_small < 0.01)


# ---------------------------------------------------------------------------------------------
# The step: one prior call with exactly the branches each method needs; gradient = w(t) g / B
# ---------------------------------------------------------------------------------------------

TNP = f"{PROMPT}, {TARGET_NEGATIVE_DESCRIPTORS}"
CASES = {
    # name: (settings overrides, progress, expected texts)
    "sds": ({"method": "sds"}, 0.3, [PROMPT, ""]),
    "nfsd": ({"method": "nfsd"}, 0.3, [PROMPT, "", NFSD_NEGATIVE]),
    "csd": ({"method": "csd"}, 0.3, [PROMPT, "", CSD_NEGATIVE]),
    "csd_normalized": ({"method": "csd", "csd_normalize": True}, 0.1, [PROMPT, "", CSD_NEGATIVE]),
    "bridge_stage1": ({"method": "bridge"}, 0.79, [PROMPT, ""]),
    "bridge_stage2": ({"method": "bridge"}, 0.8, [PROMPT, TNP]),
    "bsd": ({"method": "bsd"}, 0.3, [PROMPT, BSD_NEGATIVE]),
    "bsd_paper": ({"method": "bsd", "bsd_use_negative": False}, 0.3, [PROMPT, ""]),
    "tbsd": ({"method": "tbsd"}, 0.1, [PROMPT, "", TNP]),
    "tbsd_late": ({"method": "tbsd", "tbsd_scale": 2.5}, 0.9, [PROMPT, "", TNP]),
    # A refine naming an edit runs CSD's edit whatever the job's method, y_edit in place of any negative prompt.
    "edit": ({"method": "tbsd", "edit_prompt": "green"}, 0.7, [PROMPT, "", "green"]),
    "edit_weights": ({"method": "nfsd", "edit_prompt": "green", "edit_w1": 2.0, "edit_w2": 1.5, "edit_anchor": 0.0}, 0.2,
                     [PROMPT, "", "green"]),
}


@pytest.fixture(scope="module")
def spied_prior():
    prior = ProceduralPrior(resolution=16)
    calls = []
    real = prior._denoise

    def spy(x_t, t, texts, views):
        out = real(x_t, t, texts, views)
        calls.append({"texts": list(texts), "x_t": x_t.detach().clone(), "t": t.clone(), "out": out.detach().clone()})
        return out

    prior._denoise = spy
    return prior, calls


def _expected_direction(case, settings, progress, e, t, noise):
    """REFERENCE.md's table, written out again (not through backend.distill.methods)."""
    s = settings
    m = s["method"]
    if s["edit_prompt"]:
        w1, w2 = s["edit_w1"], s["edit_w2"]
        return w1 * e[PROMPT] + (w2 - w1) * e[""] - w2 * e[s["edit_prompt"]] + s["edit_anchor"] * (e[PROMPT] - noise)
    if m == "sds" or (m == "bridge" and progress < s["bridge_switch_at"]):
        return e[""] + s["sds_guidance_scale"] * (e[PROMPT] - e[""]) - noise
    if m == "bridge":
        return s["bridge_k"] * (e[PROMPT] - e[TNP])
    if m == "nfsd":
        small = expand((t < s["nfsd_small_t"]).double(), noise)
        d_d = small * e[""] + (1 - small) * (e[""] - e[NFSD_NEGATIVE])
        return s["nfsd_guidance_scale"] * (e[PROMPT] - e[""]) + d_d
    if m == "csd":
        w2 = s["csd_w2"] * min(progress / s["csd_anneal_until"], 1.0)
        g = s["csd_w1"] * (e[PROMPT] - e[""]) + w2 * (e[""] - e[CSD_NEGATIVE])
        if s["csd_normalize"]:
            g = g / expand(sq_norm(g).sqrt(), g)
        return g
    if m == "bsd":
        uncond = e[BSD_NEGATIVE] if s["bsd_use_negative"] else e[""]
        g, _ = min_norm_closed_form(s["bsd_lambda"] * (e[PROMPT] - uncond), uncond)
        return g
    if m == "tbsd":
        f = max(s["tbsd_alpha"] * (1 - progress / s["tbsd_beta"]), s["tbsd_gamma"])
        g, _ = min_norm_closed_form(e[PROMPT] - e[""], f * (e[PROMPT] - e[TNP]))
        return s["tbsd_scale"] * (g + s["tbsd_anchor"] * (e[PROMPT] - noise))
    raise AssertionError(m)


WEIGHT = {  # REFERENCE.md defaults: w = 1 - abar (SDS family), uniform (CSD), sqrt(abar) (BSD's code)
    "sds": lambda abar: 1 - abar,
    "nfsd": lambda abar: 1 - abar,
    "bridge": lambda abar: 1 - abar,
    "tbsd": lambda abar: 1 - abar,
    "csd": lambda abar: torch.ones_like(abar),
    "bsd": lambda abar: abar.sqrt(),
    "csd_edit": lambda abar: torch.ones_like(abar),  # CSD's
}


@pytest.mark.parametrize("case", list(CASES))
def test_distillation_loss_one_call_right_branches_and_gradient(spied_prior, case):
    prior, calls = spied_prior
    overrides, progress, expected_texts = CASES[case]
    settings = validate(overrides)
    b = 3
    x = (rand(b, *prior.sample_shape, seed=80) * 0.5).requires_grad_(True)
    seed = 1234
    calls.clear()
    result = distillation_loss(prior, x, prompt_set(PROMPT, settings), DistillConfig.from_settings(settings), progress,
                               torch.Generator().manual_seed(seed))
    # one denoiser call, with exactly the texts this method needs
    assert len(calls) == 1
    assert sorted(calls[0]["texts"]) == sorted(expected_texts)
    assert len(calls[0]["texts"]) == len(set(calls[0]["texts"]))

    # replay the run's generator: timesteps first, then the injected noise
    gen = torch.Generator().manual_seed(seed)
    t = sample_timesteps(b, progress, TimestepConfig.from_settings(settings), prior.num_train_timesteps, gen)
    noise = torch.randn(x.shape, generator=gen).double()
    assert torch.equal(t, result.t) and torch.equal(t, calls[0]["t"])
    abar = prior.alphas_cumprod[t].double()
    x_t = expand(abar.sqrt(), x) * x.detach() + expand((1 - abar).sqrt(), x) * noise
    torch.testing.assert_close(calls[0]["x_t"], x_t)

    e = {text: calls[0]["out"][i] for i, text in enumerate(calls[0]["texts"])}
    g = _expected_direction(case, settings, progress, e, t, noise)
    w = expand(WEIGHT["csd_edit" if settings["edit_prompt"] else settings["method"]](abar), x)

    result.loss.backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad, w * g / b, rtol=1e-8, atol=1e-12)
    assert float(x.grad.abs().max()) > 0
    # loss = 0.5 ||w g||^2 / B
    assert float(result.loss.detach()) == pytest.approx(0.5 * float((w * g).pow(2).sum()) / b, rel=1e-8)


def test_distillation_loss_reports_stage_and_factor(spied_prior):
    prior, _ = spied_prior
    x = rand(3, *prior.sample_shape, seed=81)
    s = validate({"method": "bridge", "bridge_switch_at": 0.5})
    assert distillation_loss(prior, x, prompt_set(PROMPT, s), DistillConfig.from_settings(s), 0.49).info["bridge_stage"] == 1
    r = distillation_loss(prior, x, prompt_set(PROMPT, s), DistillConfig.from_settings(s), 0.5)
    assert r.info["bridge_stage"] == 2 and r.branches == ("target", "target_negative")
    s = validate({"method": "tbsd", "tbsd_alpha": 4.0, "tbsd_beta": 0.5, "tbsd_gamma": 1.0})
    for progress, f in ((0.0, 4.0), (0.25, 2.0), (0.7, 1.0)):
        info = distillation_loss(prior, x, prompt_set(PROMPT, s), DistillConfig.from_settings(s), progress).info
        assert info["tbsd_factor"] == pytest.approx(f)
        assert 0 <= info["mgda_weight"] <= 1


def test_nfsd_step_uses_both_sides_of_small_t(spied_prior):
    """With t spanning [20, 980] over a batch, items below and above small_t follow their own d_D."""
    prior, calls = spied_prior
    settings = validate({"method": "nfsd", "t_schedule": "random", "nfsd_small_t": 500})
    b = 8
    x = rand(b, *prior.sample_shape, seed=82).requires_grad_(True)
    seed = 7
    calls.clear()
    r = distillation_loss(prior, x, prompt_set(PROMPT, settings), DistillConfig.from_settings(settings), 0.0, torch.Generator().manual_seed(seed))
    small = r.t < 500
    assert small.any() and (~small).any(), "pick another seed: the batch should straddle small_t"
    gen = torch.Generator().manual_seed(seed)
    sample_timesteps(b, 0.0, TimestepConfig.from_settings(settings), 1000, gen)
    noise = torch.randn(x.shape, generator=gen).double()
    e = {text: calls[0]["out"][i] for i, text in enumerate(calls[0]["texts"])}
    g = _expected_direction("nfsd", settings, 0.0, e, r.t, noise)
    r.loss.backward()
    w = expand(1 - prior.alphas_cumprod[r.t].double(), x)
    torch.testing.assert_close(x.grad, w * g / b, rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Timesteps
# ---------------------------------------------------------------------------------------------


def _timesteps(overrides):
    return TimestepConfig.from_settings(validate(overrides))


def _draws(config, progress, n=4000, seed=0):
    return sample_timesteps(n, progress, config, 1000, torch.Generator().manual_seed(seed))


def test_random_samples_cover_t_min_to_t_max():
    s = _timesteps({"t_schedule": "random", "t_min": 0.1, "t_max": 0.6})
    t = _draws(s, 0.9)
    assert t.dtype == torch.long and t.shape == (4000,)
    assert int(t.min()) >= 100 and int(t.max()) <= 600
    assert int(t.min()) <= 105 and int(t.max()) >= 595  # the whole range is used


def test_random_step_anneal_before_and_after():
    s = _timesteps({"t_schedule": "random_step_anneal", "t_min": 0.02, "t_max": 0.98, "t_max_late": 0.5,
                  "t_anneal_at": 0.5})
    before, after = _draws(s, 0.49), _draws(s, 0.5)
    assert int(before.min()) >= 20 and int(before.max()) <= 980 and int(before.max()) > 900
    assert int(after.min()) >= 20 and int(after.max()) <= 500 and int(after.max()) > 480
    assert t_max_at(0.49, s) == 0.98 and t_max_at(0.5, s) == 0.5


def test_random_linear_anneal():
    s = _timesteps({"t_schedule": "random_linear_anneal", "t_max": 0.98, "t_max_late": 0.5, "t_anneal_at": 0.4})
    assert t_max_at(0.0, s) == pytest.approx(0.98)
    assert t_max_at(0.2, s) == pytest.approx(0.74)
    assert t_max_at(0.4, s) == pytest.approx(0.5)
    assert t_max_at(0.9, s) == pytest.approx(0.5)
    mid = _draws(s, 0.2)
    assert int(mid.min()) >= 20 and int(mid.max()) <= 740 and int(mid.max()) > 700


def test_deterministic_decreases_with_progress():
    s = _timesteps({"t_schedule": "deterministic", "t_min": 0.02, "t_max": 0.98})
    ts = [sample_timesteps(3, p / 10, s, 1000) for p in range(11)]
    for t in ts:
        assert torch.all(t == t[0])  # one t for the whole batch
    values = [int(t[0]) for t in ts]
    assert values[0] == 980 and values[-1] == 20
    assert all(a > b for a, b in zip(values, values[1:]))
    assert all(20 <= v <= 980 for v in values)


def test_samples_stay_in_range_for_many_settings():
    for lo, hi, late in ((0.0, 1.0, 0.3), (0.25, 0.25, 0.1), (0.3, 0.9, 0.1)):
        for sched in ("random", "random_step_anneal", "random_linear_anneal", "deterministic"):
            s = _timesteps({"t_schedule": sched, "t_min": lo, "t_max": hi, "t_max_late": late})
            for p in (0.0, 0.3, 0.6, 0.99):
                t = _draws(s, p, n=500)
                assert int(t.min()) >= round(lo * 1000) and int(t.max()) <= min(round(hi * 1000), 999)


def test_timestep_weight_values():
    abar = torch.tensor([0.999, 0.5, 0.01], dtype=torch.float64)
    torch.testing.assert_close(timestep_weight("sds", abar), torch.tensor([0.001, 0.5, 0.99], dtype=torch.float64))
    torch.testing.assert_close(timestep_weight("uniform", abar), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(timestep_weight("sqrt_abar", abar),
                               torch.tensor([math.sqrt(0.999), math.sqrt(0.5), 0.1], dtype=torch.float64))
    torch.testing.assert_close(timestep_weight("abar", abar), abar)
    with pytest.raises(ValueError, match="sqrt_abar"):
        timestep_weight("auto", abar)


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


def test_validate_defaults_are_valid_and_complete():
    s = validate()
    assert s["method"] == "tbsd"
    assert validate({"steps": 10.0})["steps"] == 10 and isinstance(validate({"steps": 10.0})["steps"], int)
    assert validate({"t_min": 0})["t_min"] == 0.0


def test_validate_rejects_unknown_names_listing_known_ones():
    with pytest.raises(SettingsError) as err:
        validate({"guidance": 7.5})
    msg = str(err.value)
    assert "guidance" in msg and "sds_guidance_scale" in msg and "tbsd_alpha" in msg and "method" in msg


@pytest.mark.parametrize(
    "values",
    [{"steps": "100"}, {"steps": 1.5}, {"steps": True}, {"csd_normalize": 1}, {"t_min": "0.1"},
     {"t_min": None}, {"method": 3}, {"tbsd_alpha": float("nan")}, {"bsd_lambda": float("inf")}],
)
def test_validate_rejects_wrong_types(values):
    (name,) = values
    with pytest.raises(SettingsError, match=name):
        validate(values)


@pytest.mark.parametrize(
    "name, value, range_text",
    [("t_min", 1.5, "[0.0, 1.0]"), ("t_max", -0.1, "[0.0, 1.0]"), ("steps", 0, "[1, 200000]"),
     ("sds_guidance_scale", 501.0, "[0.0, 500.0]"), ("tbsd_beta", 0.0, "[1e-06, 10.0]")],
)
def test_validate_rejects_out_of_range_naming_the_range(name, value, range_text):
    with pytest.raises(SettingsError) as err:
        validate({name: value})
    assert name in str(err.value) and range_text in str(err.value)


def test_validate_rejects_bad_choices_listing_allowed():
    with pytest.raises(SettingsError) as err:
        validate({"method": "vsd"})
    msg = str(err.value)
    assert "vsd" in msg and all(m in msg for m in ("tbsd", "sds", "nfsd", "csd", "bridge", "bsd"))
    with pytest.raises(SettingsError) as err:
        validate({"t_schedule": "cosine"})
    assert "deterministic" in str(err.value) and "random_linear_anneal" in str(err.value)
    with pytest.raises(SettingsError, match="sqrt_abar"):
        validate({"weighting": "snr"})


def test_validate_rejects_t_min_above_t_max():
    with pytest.raises(SettingsError, match="t_min"):
        validate({"t_min": 0.6, "t_max": 0.5})
    validate({"t_min": 0.5, "t_max": 0.5})  # equal is fine


def test_an_edit_belongs_to_a_refine():
    edit = validate({"method": "csd", "edit_prompt": "red", "negative_prompt": "blurry"})
    with pytest.raises(SettingsError, match="edit_prompt.*refine"):
        check_new_job(edit)
    check_new_job(validate({"edit_prompt": "  "}))  # blank: no edit
    # The edit's text takes the negative branch, and its w(t) is CSD's unless one is named.
    assert resolved_negative_prompt(edit) == "red" and resolved_weighting(edit) == "uniform"
    assert resolved_weighting({**edit, "weighting": "sds"}) == "sds"
    plain = {**edit, "edit_prompt": ""}
    assert resolved_negative_prompt(plain) == "blurry" and resolved_weighting(plain) == "uniform"
    # A refine of an edited asset starts without its source's edit, and keeps everything else.
    base = refine_base({**edit, "edit_w2": 0.9, "steps": 123})
    assert (base["edit_prompt"], base["edit_w2"], base["steps"], base["negative_prompt"]) == ("", 0.5, 123, "blurry")

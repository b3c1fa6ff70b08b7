"""The procedural prior: exact scores of a diffused Gaussian mixture of renders, its vocabulary and cameras.

The exactness tests write the diffused mixture's log-density independently (torch.logsumexp over
components, float64) and differentiate it with autograd: eps_hat = -sqrt(1 - abar_t) grad log p_t(x_t).
"""

from __future__ import annotations

import math

import pytest
import torch

from backend.priors.base import PriorError, PromptSet
from backend.priors.procedural import world
from backend.priors.procedural.prior import ProceduralPrior
from backend.scene.cameras import front_view, orbit_views
from shared.settings import BSD_NEGATIVE, CSD_NEGATIVE, NFSD_NEGATIVE, TARGET_NEGATIVE_DESCRIPTORS

RES = 16
B = 3
TNP = "a red cube, " + TARGET_NEGATIVE_DESCRIPTORS  # includes 'noisy': wider components


@pytest.fixture(scope="module")
def prior():
    return ProceduralPrior(resolution=RES)


@pytest.fixture(scope="module")
def views():
    # three different cameras, so that the means differ per batch item
    return orbit_views([0.0, 70.0, -140.0], [20.0, 35.0, 5.0], [2.0, 1.8, 2.2], [40.0, 50.0, 45.0])


def log_density(x_t, abar, means, data_var):
    """log mean_k N(x_t; sqrt(abar) R_k, v_k I), v_k = abar var_k + 1 - abar, per batch item.

    x_t [B D], abar [B], means [B K D], data_var [K] -> [B].
    """
    d = x_t.shape[-1]
    v = abar[:, None] * data_var[None, :] + (1 - abar[:, None])  # B K
    sq = ((x_t[:, None, :] - abar.sqrt()[:, None, None] * means) ** 2).sum(-1)  # B K
    log_n = -0.5 * sq / v - 0.5 * d * torch.log(2 * math.pi * v)
    return torch.logsumexp(log_n, dim=1) - math.log(means.shape[1])


def autograd_eps(prior, x_t, t, text, views):
    means, data_var = prior.components(text, views)
    means = means.double().flatten(2)
    data_var = data_var.double()
    abar = prior.alphas_cumprod[t].double()
    x = x_t.detach().flatten(1).clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_density(x, abar, means, data_var).sum(), x)
    return (-(1 - abar).sqrt()[:, None] * grad).view_as(x_t)


def samples_near(prior, text, views, t, seed, component):
    """x_t drawn from the diffused distribution of one component (plus a little off-mixture noise)."""
    g = torch.Generator().manual_seed(seed)
    means, data_var = prior.components(text, views)
    abar = prior.alphas_cumprod[t].double().view(-1, 1, 1, 1)
    x0 = means[:, component].double() + data_var[component].double().sqrt() * torch.randn(
        B, *prior.sample_shape, generator=g, dtype=torch.float64)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * torch.randn(B, *prior.sample_shape, generator=g, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# Exactness
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["a red cube", "", "a torus", TNP, "a blue sphere, noisy, blurry"])
@pytest.mark.parametrize("t_values", [(5, 40, 120), (300, 500, 700), (900, 960, 999)])
def test_noise_prediction_is_the_exact_score(prior, views, text, t_values):
    t = torch.tensor(t_values)
    means, _ = prior.components(text, views)
    k = means.shape[1]
    for seed, x_t in enumerate(
        [samples_near(prior, text, views, t, 1, component=k // 2),
         samples_near(prior, text, views, t, 2, component=k - 1),
         torch.randn(B, *prior.sample_shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)]
    ):
        got = prior._denoise(x_t, t, [text], views)[0]
        expected = autograd_eps(prior, x_t, t, text, views)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-9)


def test_predict_noise_branches_are_the_exact_scores_of_their_texts(prior, views):
    prompts = PromptSet("a red cube", CSD_NEGATIVE, TARGET_NEGATIVE_DESCRIPTORS)
    t = torch.tensor([50, 400, 800])
    x_t = samples_near(prior, prompts.target_negative, views, t, 4, component=0)
    out = prior.predict_noise(x_t, t, prompts, ("target", "null", "negative", "target_negative"), views)
    for branch, text in (("target", "a red cube"), ("null", ""), ("negative", CSD_NEGATIVE),
                         ("target_negative", TNP)):
        torch.testing.assert_close(out[branch], autograd_eps(prior, x_t, t, text, views), rtol=1e-7, atol=1e-9)


def test_noisy_components_are_wider(prior, views):
    means, var = prior.components("a red cube, noisy", views)
    clean_means, clean_var = prior.components("a red cube", views)
    assert var.shape == (1,) and float(var[0]) > float(clean_var[0])
    # DEGRADATION_STD is in image units [0, 1]; samples live in [-1, 1], which doubles a std
    assert float(var[0]) == pytest.approx(prior.data_std**2 + (2 * world.DEGRADATION_STD["noisy"]) ** 2)
    # 'noisy' leaves the mean render alone: only the variance changes
    torch.testing.assert_close(means, clean_means)
    # and the prediction differs from the clean component's accordingly
    t = torch.tensor([300, 300, 300])
    x_t = torch.randn(B, *prior.sample_shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    e_noisy, e_clean = prior._denoise(x_t, t, ["a red cube, noisy", "a red cube"], views)
    assert (e_noisy - e_clean).abs().max() > 1e-3
    # the wider TNP mixture holds the noisy variant: its variance set has two values
    _, tnp_var = prior.components(TNP, views)
    assert len(set(tnp_var.tolist())) == 2


def test_single_component_prediction_is_closed_form(prior, views):
    """One component: eps_hat = sqrt(1 - abar) (x_t - sqrt(abar) R) / (abar s^2 + 1 - abar)."""
    t = torch.tensor([10, 500, 990])
    x_t = torch.randn(B, *prior.sample_shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    means, var = prior.components("a green cone", views)
    assert means.shape[1] == 1
    abar = prior.alphas_cumprod[t].double().view(-1, 1, 1, 1)
    v = abar * float(var[0]) + 1 - abar
    expected = (1 - abar).sqrt() * (x_t - abar.sqrt() * means[:, 0].double()) / v
    torch.testing.assert_close(prior._denoise(x_t, t, ["a green cone"], views)[0], expected)
    assert float(var[0]) == pytest.approx(prior.data_std**2)


# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------


def test_unknown_word_names_it_and_lists_the_vocabulary(prior):
    with pytest.raises(PriorError) as err:
        prior.meaning("a red dragon")
    msg = str(err.value)
    assert "dragon" in msg
    assert all(s in msg for s in world.SHAPES) and all(c in msg for c in world.COLOURS)


def test_check_prompts_rejects_unknown_words(prior):
    with pytest.raises(PriorError, match="zebra"):
        prior.check_prompts(PromptSet("a red cube", "zebra", ""))
    with pytest.raises(PriorError, match="sparkly"):
        prior.check_prompts(PromptSet("a red cube", "", "sparkly"))
    prior.check_prompts(PromptSet("a red cube", NFSD_NEGATIVE, TARGET_NEGATIVE_DESCRIPTORS))


@pytest.mark.parametrize("text", ["a cube sphere", "a red ball, a box", "a red blue cube"])
def test_two_shapes_or_colours_is_an_error(prior, text):
    with pytest.raises(PriorError, match="several"):
        prior.meaning(text)


def test_component_counts(prior):
    assert len(world.COLOURS) >= 8 and len(world.SHAPES) >= 6
    assert len(prior.meaning("a red cube").components()) == 1
    shape_only = prior.meaning("a torus").components()
    assert len(shape_only) == len(world.COLOURS) == 10
    assert {c.colour for c in shape_only} == set(world.COLOURS) and {c.shape for c in shape_only} == {"torus"}
    everything = prior.meaning("").components()
    assert len(everything) == len(world.SHAPES) * len(world.COLOURS) == 60
    assert len({(c.shape, c.colour) for c in everything}) == 60
    assert len(prior.meaning("a red").components()) == len(world.SHAPES)
    # descriptors multiply: each descriptor's variant of every named object
    assert len(prior.meaning("a cube, blurry, dark").components()) == 2 * 10
    assert len(prior.meaning("a red cube, blurry, out of focus").components()) == 1  # same degradation
    means, var = prior.components("a torus", front_view(2))
    assert means.shape == (2, 10, 3, RES, RES) and var.shape == (10,)


def test_synonyms_filler_and_view_words(prior):
    assert prior.meaning("A red ball, front view").components() == prior.meaning("a red sphere").components()
    assert prior.meaning("the 3d model of a blue donut").components() == prior.meaning("blue torus").components()


@pytest.mark.parametrize("text", [NFSD_NEGATIVE, CSD_NEGATIVE, BSD_NEGATIVE, TARGET_NEGATIVE_DESCRIPTORS,
                                  "a red cube, " + TARGET_NEGATIVE_DESCRIPTORS])
def test_every_negative_text_parses(prior, text):
    meaning = prior.meaning(text)
    assert all(d is not None for d in meaning.degradations)
    assert len(meaning.degradations) >= 2
    # and every phrase on its own means a degradation
    for phrase in text.split(","):
        phrase = phrase.strip()
        if phrase and phrase != "a red cube":
            assert prior.meaning(phrase).degradations[0] is not None, phrase


# ---------------------------------------------------------------------------------------------
# Cameras
# ---------------------------------------------------------------------------------------------


def test_predictions_depend_on_the_view(prior):
    x_t = torch.randn(1, *prior.sample_shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    t = torch.tensor([200])
    front = prior._denoise(x_t, t, ["a red cube"], front_view(1))[0]
    side = prior._denoise(x_t, t, ["a red cube"], orbit_views([45.0], [20.0], [2.0], [40.0]))[0]
    assert (front - side).abs().max() > 0.05
    assert torch.equal(front, prior._denoise(x_t, t, ["a red cube"], None)[0])  # None: the front view
    with pytest.raises(ValueError):
        prior._denoise(x_t, t, ["a red cube"], front_view(2))


def test_ground_truth_red_cube_is_red_inside_and_background_outside():
    image, cover = world.ground_truth("a red cube", front_view(1), 32)
    assert image.shape == (1, 3, 32, 32) and cover.shape == (1, 1, 32, 32)
    inside = cover[0, 0] > 0.999
    outside = cover[0, 0] < 1e-6
    assert inside.sum() > 50 and outside.sum() > 200
    r, g, b = image[0, 0][inside], image[0, 1][inside], image[0, 2][inside]
    assert torch.all(r > 2 * g) and torch.all(r > 2 * b) and torch.all(r > 0.2)
    bg = torch.tensor(world.BACKGROUND).view(3, 1)
    torch.testing.assert_close(image[0][:, outside], bg.expand(3, int(outside.sum())))
    # the object sits in the middle of the frame
    assert inside[16, 16] and outside[0, 0] and outside[-1, -1]


def test_different_shapes_give_different_silhouettes():
    cover = world.render_shapes(front_view(1), RES).coverage[0]  # S 1 H W, one per catalogue shape
    names = list(world.SHAPES)
    for i, a in enumerate(names):
        assert cover[i].sum() > 5.0, a
        for j in range(i + 1, len(names)):
            assert (cover[i] - cover[j]).abs().sum() > 2.0, (a, names[j])
    # ground_truth's silhouette is its shape's coverage
    _, sphere = world.ground_truth("a white sphere", front_view(1), RES)
    torch.testing.assert_close(sphere[0], cover[names.index("sphere")])


def test_rendering_is_view_dependent_for_a_cube():
    _, cover_front = world.ground_truth("a red cube", front_view(1), RES)
    _, cover_side = world.ground_truth("a red cube", orbit_views([45.0], [20.0], [2.0], [40.0]), RES)
    assert (cover_front - cover_side).abs().sum() > 2.0


# ---------------------------------------------------------------------------------------------
# Responsibilities
# ---------------------------------------------------------------------------------------------


def test_responsibility_concentrates_on_the_exact_component(prior):
    """At small t with x_t = sqrt(abar) R_k, the null branch puts > 0.99 of its weight on component k."""
    n = len(world.SHAPES) * len(world.COLOURS)
    v = front_view(1)
    means, _ = prior.components("", v)
    t = torch.full((n,), 20)
    abar = prior.alphas_cumprod[t].double().view(-1, 1, 1, 1)
    x_t = abar.sqrt() * means[0].double()  # item k sits on component k
    gamma = prior.responsibilities(x_t, t, "", front_view(n))
    assert gamma.shape == (n, n)
    torch.testing.assert_close(gamma.sum(1), torch.ones(n, dtype=torch.float64))
    assert torch.all(gamma.diagonal() > 0.99), gamma.diagonal().min()


def test_responsibilities_spread_at_large_t(prior):
    """At t near T the data are forgotten: responsibilities are close to uniform."""
    v = front_view(1)
    means, _ = prior.components("a torus", v)
    t = torch.tensor([999])
    abar = prior.alphas_cumprod[t].double().view(-1, 1, 1, 1)
    gamma = prior.responsibilities(abar.sqrt() * means[:, 0].double(), t, "a torus", v)
    assert float(gamma.max()) < 0.5

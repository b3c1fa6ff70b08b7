"""ModeDreamer's Image-prompt Score Distillation (ISD, seed 004 eq. 7) and the procedural prior's image prompt.

Expected values are computed independently of the product's helpers: eq. 7 is written out again from the paper
(CFG in diffusers' convention on both priors), and the image-conditioned mixture's noise prediction is the autograd
gradient of a log-density written here with the reference weights computed here from the renders.
"""

from __future__ import annotations

import math

import pytest
import torch

from backend.distill import methods as M
from backend.distill.step import DistillConfig, distillation_loss, prompt_set
from backend.distill.timesteps import TimestepConfig, sample_timesteps
from backend.priors.base import BranchImage, ImagePrompt, PriorError, PromptSet
from backend.priors.procedural import world
from backend.priors.procedural.prior import ProceduralPrior
from backend.scene.cameras import front_view, orbit_views
from shared.settings import SCHEMA, validate

RES = 16
PROMPT = "a cube"


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture(scope="module")
def prior():
    return ProceduralPrior(resolution=RES)


def render_of(prior, colour, shape, views=None):
    """The clean render of one catalogue object from ``views`` (front view by default), [3, R, R] in [0, 1]."""
    views = front_view(1) if views is None else views
    image = world.compose(world.render_shapes(views, prior.resolution), (world.Component(shape, colour),))
    return image[0, 0]


# ---------------------------------------------------------------------------------------------
# The direction: eq. 7
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("s", [0.0, 1.0, 7.5, 30.0])
def test_isd_is_eq_7_with_cfg_on_both_priors(s):
    e_ipt, e_ipn, e_t, e_n, eps = (rand(2, 3, 4, 5, seed=i) for i in range(5))
    # eq. 7: eps_IP(x_t; y, x_ref) - eps_SD(x_t; y), each guided: e_u + s (e_c - e_u)
    expected = (e_ipn + s * (e_ipt - e_ipn)) - (e_n + s * (e_t - e_n))
    torch.testing.assert_close(M.isd(e_ipt, e_ipn, e_t, e_n, s), expected, rtol=0, atol=1e-12)
    # the noise weight blends eq. 7's control variate with IP-SDS's (eq. 4): a = 1 is e_IP_cfg - eps
    ip_sds = (e_ipn + s * (e_ipt - e_ipn)) - eps
    torch.testing.assert_close(M.isd(e_ipt, e_ipn, e_t, e_n, s, eps, 1.0), ip_sds, rtol=0, atol=1e-12)
    blend = 0.3 * ip_sds + 0.7 * expected
    torch.testing.assert_close(M.isd(e_ipt, e_ipn, e_t, e_n, s, eps, 0.3), blend, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="noise"):
        M.isd(e_ipt, e_ipn, e_t, e_n, s, None, 0.3)


def test_isd_vanishes_when_the_image_changes_nothing():
    """With the same predictions on both priors (ip_scale 0 in the exact world) the direction is zero."""
    e_t, e_n = rand(2, 3, 4, 4, seed=1), rand(2, 3, 4, 4, seed=2)
    assert float(M.isd(e_t, e_n, e_t, e_n, 7.5).abs().max()) == 0.0


def test_isd_settings_and_defaults_follow_the_paper():
    s = validate({"method": "isd"})
    assert s["isd_guidance_scale"] == 7.5 and s["ip_scale"] == 0.5  # ModeDreamer sec. 5: CFG 7.5, IP scale 0.5
    assert s["reference_source"] == "sample"  # its default: a reference generated from the prompt
    params = DistillConfig.from_settings(s).params
    assert isinstance(params, M.ISDParams) and params.isd_guidance_scale == 7.5
    assert M.METHODS["isd"].image_prompt and not any(spec.image_prompt for n, spec in M.METHODS.items() if n != "isd")
    for name in ("ip_scale", "ip_temperature", "reference_source", "isd_guidance_scale", "isd_noise_weight"):
        assert SCHEMA[name].methods == ("isd",), name
    for bad in ({"ip_scale": -0.1}, {"ip_temperature": 0.0}, {"reference_source": "camera"}):
        with pytest.raises(ValueError):
            validate({"method": "isd", **bad})


# ---------------------------------------------------------------------------------------------
# The prior: image branches are the exact scores of the reweighted mixture
# ---------------------------------------------------------------------------------------------


def reweighted_eps(prior, x_t, t, text, views, log_w):
    """-sqrt(1 - abar) grad log sum_k w_k N(x_t; sqrt(abar) R_k, v_k I), by autograd, float64."""
    means, data_var = prior.components(text, views)
    means, data_var = means.double().flatten(2), data_var.double()
    abar = prior.alphas_cumprod[t].double()
    x = x_t.detach().flatten(1).clone().requires_grad_(True)
    v = abar[:, None] * data_var[None] + 1 - abar[:, None]
    sq = ((x[:, None] - abar.sqrt()[:, None, None] * means) ** 2).sum(-1)
    log_n = -0.5 * sq / v - 0.5 * x.shape[1] * torch.log(2 * math.pi * v)
    log_p = torch.logsumexp(log_n + torch.log_softmax(log_w.double(), 0)[None], dim=1)
    (grad,) = torch.autograd.grad(log_p.sum(), x)
    return (-(1 - abar).sqrt()[:, None] * grad).view_as(x_t)


@pytest.mark.parametrize("scale, temperature", [(0.5, 1e-3), (1.0, 1e-2), (0.2, 5e-4)])
def test_image_target_branch_is_the_exact_score_of_the_reweighted_mixture(prior, scale, temperature):
    reference = render_of(prior, "red", "cube")
    reference = (reference + 0.05 * rand(*reference.shape, seed=9).float()).clamp(0, 1)  # no exact match
    views = orbit_views([0.0, 80.0, -150.0], [20.0, 40.0, 0.0], [2.0, 1.8, 2.2], [40.0, 50.0, 45.0])
    # The weights, independently: mean squared difference per pixel to each of the prompt's components (the
    # prior's renders, [-1, 1]) seen from the front.
    means, _ = prior.components(PROMPT, front_view(1))
    mse = torch.stack([((m.double() + 1) / 2 - reference.double()).pow(2).mean() for m in means[0]])
    log_w = -scale * mse / temperature
    prompts = PromptSet(PROMPT, reference=ImagePrompt(reference, scale, temperature))
    t = torch.tensor([30, 450, 900])
    for seed in range(3):
        x_t = rand(3, *prior.sample_shape, seed=10 + seed) * (0.3 + seed)
        out = prior.predict_noise(x_t, t, prompts, ("target", "null", "image_target", "image_null"), views)
        torch.testing.assert_close(out["image_target"], reweighted_eps(prior, x_t, t, PROMPT, views, log_w),
                                   rtol=1e-7, atol=1e-9)
        # a zero image embedding adds nothing: the IP prior's null branch is the plain null branch
        torch.testing.assert_close(out["image_null"], out["null"], rtol=0, atol=0)
        torch.testing.assert_close(out["target"], reweighted_eps(prior, x_t, t, PROMPT, views, torch.zeros(10)),
                                   rtol=1e-7, atol=1e-9)


def test_ip_scale_zero_is_the_text_prior_and_one_the_image_posterior(prior):
    reference = render_of(prior, "blue", "cube")
    x_t = rand(2, *prior.sample_shape, seed=3)
    t = torch.tensor([700, 950])
    at = {}
    for scale in (0.0, 0.5, 1.0):
        prompts = PromptSet(PROMPT, reference=ImagePrompt(reference, scale, 1e-3))
        at[scale] = prior.predict_noise(x_t, t, prompts, ("target", "image_target"))
    torch.testing.assert_close(at[0.0]["image_target"], at[0.0]["target"], rtol=0, atol=0)
    assert float((at[1.0]["image_target"] - at[1.0]["target"]).abs().max()) > 1e-3
    # The tempered weights sharpen monotonically toward the reference's component.
    blue = [c.colour for c in world.parse_prompt(PROMPT).components()].index("blue")
    w = [float(prior.reference_weights(PROMPT, ImagePrompt(reference, s, 1e-3))[blue]) for s in (0.0, 0.2, 0.5, 1.0)]
    assert w[0] == pytest.approx(0.1) and w == sorted(w) and w[-1] > 0.99


@pytest.mark.parametrize("colour", ["red", "blue", "green"])
def test_a_reference_selects_its_own_mode(prior, colour):
    """'a cube' is ten cubes; a reference of one of them puts nearly all weight on it at the default settings, and
    at a time where the text posterior is spread the IP branch's posterior is on that cube."""
    s = validate({"method": "isd"})
    reference = ImagePrompt(render_of(prior, colour, "cube"), s["ip_scale"], s["ip_temperature"])
    comps = world.parse_prompt(PROMPT).components()
    k = [c.colour for c in comps].index(colour)
    weights = prior.reference_weights(PROMPT, reference)
    assert int(weights.argmax()) == k and float(weights[k]) > 0.9
    t = torch.tensor([950])
    x_t = rand(1, *prior.sample_shape, seed=4)
    text_gamma = prior.responsibilities(x_t, t, PROMPT)
    image_gamma = prior.responsibilities(x_t, t, PROMPT, image=BranchImage(reference, zero=False))
    assert float(text_gamma.max()) < 0.5 and int(image_gamma.argmax()) == k and float(image_gamma[0, k]) > 0.9
    # A shape prompt's reference picks a shape: "a red object" with a red torus.
    torus = ImagePrompt(render_of(prior, "red", "torus"), s["ip_scale"], s["ip_temperature"])
    shapes = [c.shape for c in world.parse_prompt("a red object").components()]
    assert shapes[int(prior.reference_weights("a red object", torus).argmax())] == "torus"


def test_the_reference_camera_is_the_one_it_was_seen_from(prior):
    """A reference seen from the side is matched against renders from the side: a cube seen from 45 degrees is
    no longer the nearest object from the front, but is from its own camera."""
    side = orbit_views([45.0], [20.0], [2.0], [40.0])
    image = render_of(prior, "red", "cube", side)
    at_front = prior.reference_mse("a red object", ImagePrompt(image, 0.5, 1e-3))
    at_side = prior.reference_mse("a red object", ImagePrompt(image, 0.5, 1e-3, side))
    cube = [c.shape for c in world.parse_prompt("a red object").components()].index("cube")
    assert float(at_side[cube]) < 1e-10 < float(at_front[cube])


def test_image_branches_need_a_reference_and_a_prior_that_reads_images(prior):
    x_t, t = rand(1, *prior.sample_shape, seed=5), torch.tensor([500])
    with pytest.raises(ValueError, match="reference image"):
        prior.predict_noise(x_t, t, PromptSet(PROMPT), ("target", "image_target"))

    class TextOnly(ProceduralPrior):
        supports_image_prompts = False

    prompts = PromptSet(PROMPT, reference=ImagePrompt(render_of(prior, "red", "cube"), 0.5, 1e-3))
    with pytest.raises(PriorError, match="no image prompt"):
        TextOnly(resolution=RES).predict_noise(x_t, t, prompts, ("target", "image_target"))
    with pytest.raises(ValueError, match="branches must be"):
        prior.predict_noise(x_t, t, prompts, ("image_negative",))


def test_a_sampled_reference_is_one_seeded_object_of_the_mixture(prior):
    prompts = PromptSet(PROMPT)
    a = prior.sample_reference(prompts, torch.Generator().manual_seed(3))
    b = prior.sample_reference(prompts, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (3, RES, RES) and 0 <= float(a.min()) and float(a.max()) <= 1
    mse = prior.reference_mse(PROMPT, ImagePrompt(a, 1.0, 1.0))
    nearest, second = torch.sort(mse).values[:2].tolist()
    # one cube plus the world's data noise (std 0.1 in [-1, 1], 0.05 in image units, less where clipped)
    assert nearest < 0.05**2 * 1.1 and second > 2 * nearest
    drawn = {int(prior.reference_mse(PROMPT, ImagePrompt(prior.sample_reference(
        prompts, torch.Generator().manual_seed(s)), 1.0, 1.0)).argmin()) for s in range(12)}
    assert len(drawn) >= 4  # seeds draw different objects: the mixture, not its mean


# ---------------------------------------------------------------------------------------------
# One step: the four branches in one denoiser call, the gradient
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise_weight", [None, 0.0])
def test_isd_step_is_one_call_with_four_branches_and_the_right_gradient(prior, noise_weight):
    calls = []
    real = prior._denoise

    def spy(x_t, t, texts, views, images=None):
        out = real(x_t, t, texts, views, images=images)
        calls.append({"texts": list(texts), "images": images, "out": out.detach().clone()})
        return out

    settings = validate({"method": "isd", "ip_scale": 0.7,
                         **({} if noise_weight is None else {"isd_noise_weight": noise_weight})})
    reference = render_of(prior, "green", "cube")
    b, seed, progress = 3, 11, 0.2
    x = (rand(b, *prior.sample_shape, seed=20) * 0.5).requires_grad_(True)
    prior._denoise = spy
    try:
        result = distillation_loss(prior, x, prompt_set(PROMPT, settings, reference),
                                   DistillConfig.from_settings(settings), progress, torch.Generator().manual_seed(seed))
    finally:
        del prior._denoise
    assert len(calls) == 1
    call = calls[0]
    assert call["texts"] == [PROMPT, "", PROMPT, ""] and result.branches == ("target", "null", "image_target",
                                                                               "image_null")
    images = call["images"]
    assert images[0] is None and images[1] is None  # the plain prior
    assert not images[2].zero and images[3].zero and images[2].prompt.image is reference
    assert images[2].prompt.scale == 0.7 and images[2].prompt.temperature == settings["ip_temperature"]
    e_t, e_n, e_ipt, e_ipn = call["out"]
    s, a = settings["isd_guidance_scale"], settings["isd_noise_weight"]
    assert a == (0.5 if noise_weight is None else noise_weight)  # the default blend (METHODS.md session 14); 0: eq. 7
    gen = torch.Generator().manual_seed(seed)
    t = sample_timesteps(b, progress, TimestepConfig.from_settings(settings), 1000, gen)
    noise = torch.randn(x.shape, generator=gen).double()
    g = (e_ipn + s * (e_ipt - e_ipn)) - ((1 - a) * (e_n + s * (e_t - e_n)) + a * noise)
    w = (1 - prior.alphas_cumprod[t].double()).view(-1, 1, 1, 1)  # ModeDreamer trains with threestudio's SDS w(t)
    result.loss.backward()
    torch.testing.assert_close(x.grad, w * g / b, rtol=1e-8, atol=1e-12)
    assert float(x.grad.abs().max()) > 0


# ---------------------------------------------------------------------------------------------
# In 3D: the reference decides the colour of "a cube" on both representations
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("representation, steps", [("gaussians", 30), ("nerf", 20)])
def test_the_reference_decides_the_colour_of_a_3d_cube(prior, representation, steps):
    """Two runs of "a cube" identical but for the reference (a red and a blue cube): the red one renders redder
    than blue and the blue one bluer than red. A few steps at 16 px only (the full draft runs, where the result is
    the reference's cube, are bench/isd_study.py's: docs/METHODS.md, session 14); with the reference ignored the
    two runs would be the same run."""
    from backend.reference import Reference, tensor_to_pixels
    from backend.train import Trainer

    settings = validate({"quality": "draft", "representation": representation, "method": "isd", "steps": steps,
                         "procedural_resolution": RES, "render_res_start": RES, "render_res_end": RES,
                         "camera_bank_size": 4, "gaussian_points": 200, "nerf_samples_per_ray": 16,
                         "preview_every": 0, "checkpoint_every": 0})
    red_minus_blue = {}
    for colour in ("red", "blue"):
        reference = Reference(tensor_to_pixels(render_of(prior, colour, "cube")), "image")
        trainer = Trainer(prior, PROMPT, settings, reference=reference)
        trainer.run()
        out = trainer.render_eval(4, RES)
        seen = out.rgb.permute(0, 2, 3, 1)[out.opacity[:, 0] > 0.5]
        assert len(seen) > 20, "nothing rendered"
        red_minus_blue[colour] = float(seen[:, 0].mean() - seen[:, 2].mean())
    assert red_minus_blue["red"] > 0.01 and red_minus_blue["blue"] < -0.01, red_minus_blue


def test_at_ip_scale_zero_a_reference_selects_no_mode(tmp_path):
    """Equal weights pick nothing: job.json names no mode and the figures measure the object the run made."""
    from backend.jobs.runner import JobPlan, JobRun, fixed_prior
    from backend.reference import tensor_to_pixels

    prior = ProceduralPrior(resolution=RES)
    path = tmp_path / "ref.png"
    from PIL import Image

    Image.fromarray(tensor_to_pixels(render_of(prior, "blue", "cube"))).save(path)
    settings = validate({"quality": "draft", "representation": "gaussians", "method": "isd", "ip_scale": 0.0,
                         "steps": 1, "procedural_resolution": RES, "render_res_start": RES, "render_res_end": RES,
                         "gaussian_points": 100, "camera_bank_size": 1, "mesh_resolution": 32, "texture_size": 64,
                         "preview_every": 0, "checkpoint_every": 0})
    run = JobRun(JobPlan(PROMPT, settings, tmp_path / "job", reference=path), torch.device("cpu"), fixed_prior(prior))
    run.prepare()
    run.train()
    record = run.finish().record
    assert record["reference"]["mode"] is None and "reference_mode" not in record["figures"]
    assert record["figures"]["landed"].startswith("a ")

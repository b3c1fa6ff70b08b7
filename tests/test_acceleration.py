"""The accelerated SD prior (channels-last, CUDA graphs) must compute what the eager one does.

CUDA-only (the accelerations are no-ops on the CPU, which the first test checks); run on the GPU machine with
`python -m pytest tests/test_acceleration.py`.
"""

from __future__ import annotations

import pytest
import torch

from backend.priors.acceleration import Acceleration, SplitGroupNorm
from backend.priors.base import PromptSet
from backend.priors.stable_diffusion import StableDiffusionPrior, build_random_pipeline_components

PROMPTS = PromptSet(target="a red cube", negative="blurry", target_negative_descriptors="ugly")
BRANCHES = ("target", "null", "target_negative")


def _prior(acceleration: Acceleration, device: str, dtype: torch.dtype) -> StableDiffusionPrior:
    parts = build_random_pipeline_components("tiny", seed=3, device=device)
    return StableDiffusionPrior(**parts, name="tiny", device=device, dtype=dtype, acceleration=acceleration)


def test_acceleration_parse_names_what_is_allowed() -> None:
    assert Acceleration.parse("none") == Acceleration.none()
    assert Acceleration.parse("all") == Acceleration()
    assert Acceleration.parse("cuda_graphs") == Acceleration(
        cuda_graphs=True, unet_channels_last=False, vae_channels_last=False, vae_matmul_attention=False,
        split_group_norm=False, cudnn_benchmark=False, compile_encoder=False)
    with pytest.raises(ValueError, match="allowed"):
        Acceleration.parse("turbo")


@pytest.mark.parametrize("shape", [(2, 64, 9, 7), (1, 32, 50)])
def test_split_group_norm_is_group_norm(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(8, shape[1], eps=1e-6).requires_grad_(False)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = (torch.randn(shape) * 3 + 1).requires_grad_(True)
    want = norm(x)
    (want_grad,) = torch.autograd.grad(want.square().sum(), x)
    got = SplitGroupNorm(norm)(x)
    (got_grad,) = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_grad, want_grad, atol=1e-4, rtol=1e-4)


def test_cpu_prior_ignores_acceleration() -> None:
    prior = _prior(Acceleration(), "cpu", torch.float32)
    assert prior._unet_call == prior._unet_eager and prior._encode_call == prior._encode_eager


def _step(prior: StableDiffusionPrior, seed: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    images = torch.rand(2, 3, 16, 16, device="cuda", generator=gen).requires_grad_(True)
    x = prior.encode(images)
    t = torch.tensor([300, 700], device="cuda")
    noise = torch.randn(x.shape, device="cuda", generator=gen)
    preds = prior.predict_noise(x.detach() + noise, t, PROMPTS, BRANCHES)
    (x * noise).sum().backward()
    return preds, x.detach(), images.grad.detach()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs and channels-last need a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("level", ["cuda_graphs", "default", "vae_channels_last,unet_channels_last"])
def test_accelerated_prior_matches_eager(dtype: torch.dtype, level: str) -> None:
    torch.backends.cudnn.benchmark = False
    eager = _prior(Acceleration.none(), "cuda", dtype)
    fast = _prior(Acceleration.parse(level), "cuda", dtype)
    # A replayed graph runs the eager kernels: equal up to float noise. Another layout or cuDNN's timed choice
    # runs other convolution algorithms, which round differently (TF32 for float32 convolutions by default).
    tol = 1e-5 if level == "cuda_graphs" and dtype == torch.float32 else (2e-2 if dtype == torch.float16 else 5e-3)
    for seed in range(3):  # the first call captures the graphs, later ones replay them with new inputs
        want_preds, want_x, want_grad = _step(eager, seed)
        got_preds, got_x, got_grad = _step(fast, seed)
        for b in BRANCHES:
            torch.testing.assert_close(got_preds[b], want_preds[b], atol=tol, rtol=tol)
        torch.testing.assert_close(got_x, want_x, atol=tol, rtol=tol)
        torch.testing.assert_close(got_grad, want_grad, atol=tol, rtol=tol)
    if fast.acceleration.cuda_graphs:
        assert len(fast._unet_call._graphs) == 1  # one batch shape: captured once, replayed since

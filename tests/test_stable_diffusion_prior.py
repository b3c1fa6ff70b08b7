"""StableDiffusionPrior on a tiny random SD pipeline saved to disk and loaded back through the product's loader.

No weights are downloaded: the pipeline is built from configs in backend/priors/stable_diffusion.py at toy
sizes (same block types as SD 2.1-base), so these tests check plumbing, shapes, batching and conversions,
not image quality.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from backend.priors.base import BRANCHES, PriorError, PromptSet
from backend.priors.stable_diffusion import (
    StableDiffusionPrior,
    build_random_pipeline_components,
    save_random_pipeline,
)

PROMPTS = PromptSet(
    target="a red cube",
    negative="ugly, blurry",
    target_negative_descriptors="oversaturated, smooth, pixelated",
)


def _set_prediction_type(folder: Path, prediction_type: str) -> None:
    cfg_path = folder / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["prediction_type"] = prediction_type
    cfg_path.write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_pipeline(tmp_path_factory.mktemp("sd") / "tiny-sd", "tiny", seed=0)


@pytest.fixture(scope="module")
def prior(sd_folder: Path) -> StableDiffusionPrior:
    return StableDiffusionPrior.from_pretrained(str(sd_folder))


def _latents(prior: StableDiffusionPrior, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *prior.sample_shape, generator=g)


class _Counter:
    """Forward hook recording the leading (batch) size of each call's first input."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.batches: list[int] = []
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.batches.append(int(args[0].shape[0]))

    def __enter__(self) -> "_Counter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def test_loaded_prior_describes_itself(prior: StableDiffusionPrior, sd_folder: Path) -> None:
    assert prior.name == str(sd_folder)
    assert prior.sample_shape == (4, 8, 8)
    assert prior.image_size == 16  # latent 8 x VAE factor 2 (two VAE blocks)
    assert prior.camera_aware is False
    assert prior.dtype == torch.float32  # CPU default
    assert prior.alphas_cumprod.shape == (1000,) and prior.alphas_cumprod.dtype == torch.float32
    assert torch.all(prior.alphas_cumprod[1:] < prior.alphas_cumprod[:-1])
    for module in (prior.unet, prior.vae, prior.text_encoder):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())


def test_predict_noise_all_branches(prior: StableDiffusionPrior) -> None:
    x_t = _latents(prior, 2)
    out = prior.predict_noise(x_t, torch.tensor([20, 900]), PROMPTS, BRANCHES)
    assert list(out) == list(BRANCHES)
    for eps in out.values():
        assert eps.shape == x_t.shape
        assert eps.dtype == torch.float32
        assert torch.isfinite(eps).all()


@pytest.mark.parametrize("n_branches", [1, 2, 3, 4])
def test_one_unet_call_per_predict_noise(prior: StableDiffusionPrior, n_branches: int) -> None:
    batch = 3
    with _Counter(prior.unet) as unet_calls:
        prior.predict_noise(_latents(prior, batch), torch.tensor([100, 500, 900]), PROMPTS, BRANCHES[:n_branches])
    assert unet_calls.batches == [n_branches * batch]


def batch_position_tolerance(values: torch.Tensor) -> float:
    """How far two rows of one batched call that compute the same thing may differ.

    CPU convolution and matmul kernels may round differently by batch position (seen: 1.0e-6 at values up to 1.0
    in float32 on an AMD EPYC), so equal inputs give equal rows only to a few units in the last place of the
    values' scale. 64 units leave a margin over that and stay far below any difference between two texts.
    """
    return 64 * torch.finfo(values.dtype).eps * float(values.abs().max())


def assert_rows_agree(a: torch.Tensor, b: torch.Tensor) -> None:
    tol = batch_position_tolerance(torch.cat([a, b]))
    worst = float((a - b).abs().max())
    assert worst <= tol, f"rows differ by {worst:.3g}, more than the batch-position tolerance {tol:.3g}"


def test_texts_condition_the_prediction(prior: StableDiffusionPrior) -> None:
    x_t = _latents(prior, 2)
    t = torch.tensor([300, 300])
    # negative == "" == null, so those two branches must agree (to the kernels' rounding) while the others differ.
    out = prior.predict_noise(x_t, t, PromptSet(target="a red cube", negative=""), ["target", "null", "negative"])
    assert_rows_agree(out["null"], out["negative"])
    # The check can fail: rows swapped between batch items, or another text's rows, are caught.
    with pytest.raises(AssertionError, match="batch-position tolerance"):
        assert_rows_agree(out["null"], out["negative"].flip(0))
    with pytest.raises(AssertionError, match="batch-position tolerance"):
        assert_rows_agree(out["target"], out["negative"])
    assert not torch.allclose(out["target"], out["null"])
    # And a batched prediction equals the per-branch ones (rows are not mixed up between texts).
    alone = prior.predict_noise(x_t, t, PromptSet(target="a red cube"), ["target"])["target"]
    torch.testing.assert_close(alone, out["target"], rtol=1e-4, atol=1e-5)


def test_each_row_uses_its_own_timestep(prior: StableDiffusionPrior) -> None:
    x = _latents(prior, 1).expand(2, -1, -1, -1)
    eps = prior.predict_noise(x, torch.tensor([10, 990]), PROMPTS, ["target"])["target"]
    assert not torch.allclose(eps[0], eps[1])
    # A single timestep broadcasts over the batch.
    same = prior.predict_noise(x, torch.tensor([10]), PROMPTS, ["target"])["target"]
    torch.testing.assert_close(same[0], same[1])


def test_text_encoder_runs_once_per_distinct_prompt(prior: StableDiffusionPrior) -> None:
    prompts = PromptSet("cache test: a blue torus", "cache test: dull", target_negative_descriptors="blurry")
    branches = ["target", "null", "negative", "target_negative"]
    texts = {prompts.text(b) for b in branches}
    fresh = {s for s in texts if s not in prior._text_cache}
    x_t, t = _latents(prior, 2), torch.tensor([50, 60])
    with _Counter(prior.text_encoder) as calls:
        prior.predict_noise(x_t, t, prompts, branches)
        prior.predict_noise(x_t, t, prompts, branches)
        prior.predict_noise(x_t, t, prompts, ["target"])
    assert len(calls.batches) == 1  # one call for all new prompts, none afterwards
    assert calls.batches[0] == len(fresh) == 3  # "" may already be cached by earlier tests; the rest are new


def test_encode_carries_gradient_to_images(prior: StableDiffusionPrior) -> None:
    images = torch.rand(2, 3, 12, 12, requires_grad=True)  # not image_size: encode resizes
    latents = prior.encode(images)
    assert latents.shape == (2, *prior.sample_shape)
    assert latents.dtype == torch.float32
    latents.sum().backward()
    assert images.grad is not None
    assert images.grad.abs().sum() > 0
    # Deterministic (posterior mean, not a sample).
    with torch.no_grad():
        torch.testing.assert_close(prior.encode(images), prior.encode(images))


def test_decode_inverts_encode_shapes(prior: StableDiffusionPrior) -> None:
    images = torch.rand(2, 3, prior.image_size, prior.image_size)
    with torch.no_grad():
        decoded = prior.decode(prior.encode(images))
    assert decoded.shape == images.shape
    assert decoded.dtype == torch.float32
    assert decoded.min() >= 0 and decoded.max() <= 1


def test_v_prediction_is_converted_to_epsilon(sd_folder: Path, prior: StableDiffusionPrior, tmp_path: Path) -> None:
    # Same weights, scheduler saying the UNet predicts v: the epsilon prior's output IS the raw UNet output v.
    v_folder = tmp_path / "tiny-sd-v"
    shutil.copytree(sd_folder, v_folder)
    _set_prediction_type(v_folder, "v_prediction")
    v_prior = StableDiffusionPrior.from_pretrained(str(v_folder))
    assert v_prior.prediction_type == "v_prediction"

    x_t, t = _latents(prior, 2, seed=3), torch.tensor([100, 700])
    v = prior.predict_noise(x_t, t, PROMPTS, ["target", "null"])
    eps = v_prior.predict_noise(x_t, t, PROMPTS, ["target", "null"])
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    for branch in ("target", "null"):
        expected = abar.sqrt() * v[branch] + (1 - abar).sqrt() * x_t
        torch.testing.assert_close(eps[branch], expected, rtol=1e-5, atol=1e-5)


def test_unsupported_prediction_type_is_a_prior_error(sd_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "tiny-sd-x0"
    shutil.copytree(sd_folder, folder)
    _set_prediction_type(folder, "sample")
    with pytest.raises(PriorError, match="sample"):
        StableDiffusionPrior.from_pretrained(str(folder))


def test_missing_folder_is_a_prior_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(PriorError) as info:
        StableDiffusionPrior.from_pretrained(str(missing))
    message = str(info.value)
    assert str(missing) in message
    assert "download" in message


def test_incomplete_folder_is_a_prior_error(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    with pytest.raises(PriorError, match="download"):
        StableDiffusionPrior.from_pretrained(str(tmp_path / "half"))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record (and refuse) any attempt to open a network connection."""
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args[:2]))
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield attempts


def test_offline_unknown_hub_id_is_a_prior_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_network: list[str]
) -> None:
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # so 'nobody/no-such-model' cannot be a local folder by accident
    with pytest.raises(PriorError) as info:
        StableDiffusionPrior.from_pretrained("nobody/no-such-model")
    message = str(info.value)
    assert "nobody/no-such-model" in message
    assert str(cache) in message
    assert "HF_HUB_OFFLINE" in message and "download" in message
    assert no_network == []


def test_check_prompts_rejects_prompts_longer_than_the_encoder_reads(prior: StableDiffusionPrior) -> None:
    prior.check_prompts(PROMPTS)
    with pytest.raises(PriorError, match="tokens"):
        prior.check_prompts(PromptSet(target="a red cube " * 30))  # 4 tokens per repeat: 120 + 2 > 77
    # The product's own long prompt (target + every target-negative descriptor) fits, as with CLIP's vocabulary.
    from shared.settings import TARGET_NEGATIVE_DESCRIPTORS

    prior.check_prompts(PromptSet(target="a red cube", target_negative_descriptors=TARGET_NEGATIVE_DESCRIPTORS))


def test_random_components_are_reproducible() -> None:
    a = build_random_pipeline_components("tiny", seed=1)
    b = build_random_pipeline_components("tiny", seed=1)
    assert set(a) == {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    for name in ("unet", "vae", "text_encoder"):
        for pa, pb in zip(a[name].parameters(), b[name].parameters()):
            assert torch.equal(pa, pb)
    ids = a["tokenizer"](["a red cube", "a blue cube"], padding="max_length", max_length=77).input_ids
    assert len(ids[0]) == len(ids[1]) == 77 and ids[0] != ids[1]


def test_the_nerf_starts_larger_on_a_prior_not_told_the_camera(prior: StableDiffusionPrior, tmp_path: Path) -> None:
    """nerf_init_radius 0 (auto) resolves by the prior's kind when a run starts, into the settings its checkpoint
    keeps, so a resumed run's density has the same blob."""
    from backend.priors.procedural.prior import ProceduralPrior
    from backend.scene.nerf import INIT_RADIUS_CAMERA_AWARE, INIT_RADIUS_CAMERA_UNAWARE
    from backend.train import Trainer
    from shared.settings import validate

    settings = validate({"quality": "draft", "representation": "nerf", "steps": 1, "preview_every": 0,
                         "checkpoint_every": 0, "nerf_grid_levels": 4, "nerf_grid_log2_table": 10,
                         "nerf_samples_per_ray": 8})
    assert settings["nerf_init_radius"] == 0.0
    sd = Trainer(prior, "a red cube", settings)
    assert sd.scene.blob_radius == sd.settings["nerf_init_radius"] == INIT_RADIUS_CAMERA_UNAWARE
    procedural = Trainer(ProceduralPrior(resolution=32), "a red cube", settings)
    assert procedural.scene.blob_radius == INIT_RADIUS_CAMERA_AWARE
    sd.save_checkpoint(tmp_path / "checkpoint.pt")
    assert Trainer.from_checkpoint(tmp_path / "checkpoint.pt", prior).scene.blob_radius == INIT_RADIUS_CAMERA_UNAWARE
    chosen = Trainer(prior, "a red cube", {**settings, "nerf_init_radius": 0.3})
    assert chosen.scene.blob_radius == 0.3

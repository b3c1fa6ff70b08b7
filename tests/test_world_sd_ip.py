"""world-SD's IP-Adapter trainer (tiny, CPU): pairs of views of one object, a few steps, an exact resume, and a folder
the product's loader reads as an IP-Adapter (backend/worldsd/train_ip.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backend.priors.base import ImagePrompt, PromptSet
from backend.priors.stable_diffusion import StableDiffusionPrior
from backend.worldsd.components import Architecture, build_components, save_folder
from backend.worldsd.data import WorldImages
from backend.worldsd.ip_data import WorldPairs
from backend.worldsd.train_ip import main


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained world-SD folder (the trainer only needs its layout and shapes)."""
    parts = build_components(Architecture.tiny(), seed=0)
    return save_folder(parts, tmp_path_factory.mktemp("base") / "world-sd", {"run": {}})


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {f"adapter.{k}": v for k, v in load_file(str(folder / "ip-adapter.safetensors")).items()}
    out.update({f"encoder.{k}": v for k, v in load_file(str(folder / "image_encoder" / "model.safetensors")).items()})
    return out


def _train(out: Path, base: Path, *extra: str) -> dict:
    assert main(["--out", str(out), "--base", str(base), "--tiny", "--device", "cpu", "--log-every", "1",
                 *extra]) == 0
    return json.loads((out / "status.json").read_text())


def test_pairs_show_one_object_from_two_views_and_drop_some_references():
    pairs = WorldPairs(WorldImages(16, "cpu", seed=0, pool_views=4, refresh_images=64), reference_dropout=0.5)
    a, b = pairs.batch(3, 8), pairs.batch(3, 8)
    assert torch.equal(a.targets, b.targets) and torch.equal(a.references, b.references)  # seeded by (seed, step)
    assert a.targets.shape == a.references.shape == (8, 3, 16, 16) and len(a.captions) == 8
    assert not torch.equal(a.targets, a.references)  # other views
    assert 0 < int(a.keep_reference.sum()) < 8


def test_the_trainer_pauses_resumes_exactly_and_writes_an_adapter_the_prior_loads(tmp_path, base):
    whole = _train(tmp_path / "whole", base)
    assert whole["finished"] and whole["step"] == 4
    paused = _train(tmp_path / "split", base, "--stop-after-minutes", "1e-6")
    assert not paused["finished"] and paused["step"] == 1  # stopped by the clock after one step
    resumed = _train(tmp_path / "split", base, "--resume")
    assert resumed["finished"] and resumed["step"] == 4
    a, b = _weights(tmp_path / "whole" / "world-sd-ip"), _weights(tmp_path / "split" / "world-sd-ip")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SystemExit, match="--resume"):  # a second run would silently drop the checkpoint
        _train(tmp_path / "whole", base)
    card = json.loads((tmp_path / "whole" / "world-sd-ip" / "training.json").read_text())
    assert card["base"]["unet_sha256"] and card["config"]["steps"] == 4

    prior = StableDiffusionPrior.from_pretrained(str(base), ip_adapter=str(tmp_path / "whole" / "world-sd-ip"))
    reference = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, *prior.sample_shape, generator=torch.Generator().manual_seed(1))
    out = prior.predict_noise(x, torch.tensor([600, 200]), PromptSet("a cube", reference=ImagePrompt(reference, 1.0,
                                                                                                    1e-3)),
                              ["target", "null", "image_target", "image_null"])
    assert all(torch.isfinite(v).all() for v in out.values())
    assert not torch.equal(out["image_target"], out["target"])


def test_the_shipped_adapter_gives_a_sample_the_references_colour():
    """The committed models/world-sd-ip, through the product's loader: "a cube" sampled with a red and with a blue
    cube as reference takes each one's colour (the world's judge), from the same noise as text alone."""
    from backend.priors import load_prior
    from backend.priors.procedural import world
    from backend.priors.sampling import ddim_sample
    from backend.scene.cameras import orbit_views
    from backend.worldsd.judge import ShapeBank, judge

    prior = load_prior("world-sd", "cpu", ip_adapter="world-sd-ip")
    views = orbit_views([30.0], [20.0], [1.9], [42.5])
    geometry = world.render_shapes(views, prior.image_size)
    bank = ShapeBank()
    judged = {}
    for colour in ("red", "blue", None):
        if colour is None:
            prompts, branches = PromptSet("a cube"), ("target", "null")
        else:
            reference = world.compose(geometry, (world.Component("cube", colour),))[0, 0]
            prompts, branches = PromptSet("a cube", reference=ImagePrompt(reference, 0.5, 1e-3)), \
                ("image_target", "image_null")
        image = ddim_sample(prior, prompts, torch.Generator().manual_seed(0), 30, 7.5, branches)
        judged[colour] = judge(image, bank).colour
    assert judged["red"] == "red" and judged["blue"] == "blue", judged

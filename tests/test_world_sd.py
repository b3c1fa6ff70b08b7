"""world-SD: the trainer (tiny, CPU) runs and resumes exactly; the shipped folder loads offline through the
product's loader and makes the named object; `world-sd` is a model name the CLI and the server's check accept;
a missing or corrupt folder is an error naming what is wrong; captions say what their images show; the judge
reads the world's own renders."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.priors import PriorError, load_prior
from backend.priors.procedural import world
from backend.shipped_models import SHIPPED
from backend.worldsd.data import draw_item
from backend.worldsd.judge import ShapeBank, judge

ROOT = Path(__file__).resolve().parents[1]
FOLDER = SHIPPED["world-sd"][0]


def _train(out: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "backend.worldsd.train", "--out", str(out), "--tiny", "--device", "cpu", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "status.json").read_text())


def _unet_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_trainer_pauses_and_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch):
    whole = _train(tmp_path / "whole")
    assert whole["phase"] == "done" and whole["step"] == 4
    paused = _train(tmp_path / "split", "--stop-after-minutes", "1e-6")
    assert paused["phase"] == "vae" and paused["step"] == 1  # stopped by the clock after one step
    resumed = _train(tmp_path / "split", "--resume")
    assert resumed["phase"] == "done" and resumed["step"] == 4
    a, b = _unet_weights(tmp_path / "whole" / "world-sd"), _unet_weights(tmp_path / "split" / "world-sd")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # A second run into the same folder without --resume would silently throw the checkpoint away: refused.
    cmd = [sys.executable, "-m", "backend.worldsd.train", "--out", str(tmp_path / "whole"), "--tiny", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "--resume" in proc.stderr
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prior = load_prior(str(tmp_path / "whole" / "world-sd"))
    assert prior.sample_shape == (4, 4, 4) and prior.image_size == 32


def test_shipped_world_sd_loads_offline_and_its_vae_reproduces_a_world_render(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prior = load_prior("world-sd")
    assert prior.name == "world-sd" and prior.image_size == 128 and prior.sample_shape == (4, 16, 16)
    card = json.loads((FOLDER / "training.json").read_text())
    assert abs(prior.scaling_factor - card["run"]["scaling_factor"]) < 1e-4
    from backend.scene.cameras import eval_views

    image, _ = world.ground_truth("a red cube", eval_views(2), 128)
    with torch.no_grad():
        back = prior.decode(prior.encode(image))
    assert float((back - image).abs().mean()) < 0.03


def test_a_2d_tbsd_image_with_world_sd_has_the_named_colour(tmp_path):
    out = tmp_path / "red.png"
    cmd = [sys.executable, "-m", "backend", "image", "a red cube", "--model", "world-sd", "--method", "tbsd",
           "--steps", "300", "--device", "cpu", "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    image = torch.from_numpy(np.array(Image.open(out).convert("RGB"))).permute(2, 0, 1).float() / 255
    verdict = judge(image, ShapeBank(views_per_word=64))
    assert verdict.colour == "red", verdict


def test_server_check_and_listing_accept_world_sd_and_name_a_missing_folder(tmp_path, monkeypatch):
    from backend.jobs import models

    models.check_model("world-sd")
    assert {"name": "world-sd", "kind": "shipped", "label": SHIPPED["world-sd"][1]} in models.local_models()
    monkeypatch.setitem(models.SHIPPED, "world-sd", (tmp_path / "gone", "gone"))
    with pytest.raises(models.ModelMissing, match="gone"):
        models.check_model("world-sd")
    assert all(m["name"] != "world-sd" for m in models.local_models())


def test_a_corrupt_or_incomplete_folder_is_an_error_naming_what_is_wrong(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(FOLDER, corrupt)
    weights = corrupt / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(PriorError, match="diffusion_pytorch_model.safetensors") as err:
        load_prior(str(corrupt))
    assert "corrupt" in str(err.value)
    shutil.rmtree(corrupt / "vae")
    with pytest.raises(PriorError, match=r"no vae/"):
        load_prior(str(corrupt))


def test_captions_name_what_their_images_show():
    rng = random.Random(0)
    for i in range(400):
        shape, colour = rng.choice(list(world.SHAPES)), rng.choice(list(world.COLOURS))
        item = draw_item(shape, colour, rng.uniform(-180, 180), rng.uniform(-40, 85), rng)
        meaning = world.parse_prompt(item.caption)  # every caption is in the world's grammar
        assert shape in meaning.shapes and colour in meaning.colours, item
        assert item.degradation in meaning.degradations or (item.caption == "" and meaning.degradations == (None,))


def test_the_judge_reads_the_worlds_own_renders_and_rejects_a_wrong_colour():
    from bench.world_sd_2d import truth_render

    rng = random.Random(1)
    bank = ShapeBank(views_per_word=96)
    right = 0
    for shape in world.SHAPES:
        for colour in ("red", "blue"):
            word = rng.choice(["front", "side", ""])
            right += judge(truth_render(shape, colour, word, rng, 64), bank, word).names(shape, colour)
    assert right >= 10  # of 12
    green = truth_render("cube", "green", "", rng, 64)
    assert judge(green, bank).colour == "green" and not judge(green, bank).names("cube", "red")

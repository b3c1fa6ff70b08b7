"""Quality of `python -m backend generate` on the procedural prior: the exported mesh against the true shape.

Six shape/colour prompts (one per shape) on both representations, at the draft preset with the step counts below (CPU-sized;
defaults are for real use; every other setting is the default). Each run is a real CLI process; two run at once with
one thread each.

Thresholds, and why:
- voxel IoU of the exported mesh (voxelised by ray parity, so holes and inner shells count) with the true
  shape >= 0.8: the issue's bar. Any two different catalogue shapes score below it (the closest pair, cube and
  cylinder, 0.70), so a pass means the mesh is nearer the named shape than any other shape of the world is.
- colour: the mesh's mean albedo must be nearer the named colour than to any other catalogue colour, and its
  distance to the named colour below half the distance from the named colour to its nearest other catalogue
  colour (then no mix of the named colour with another reads as "between" them). Before session 5's defaults
  (TBSD's anchor, antialiased splats, textures of the seen colour; docs/METHODS.md) this bar was the whole
  distance, because the paper's TBSD saturated red to (0.98, 0, 0) (error 0.2) and Gaussian textures came out
  grey; with them the eight runs measure 0.01-0.15.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from backend.priors.procedural import world

ROOT = Path(__file__).resolve().parents[1]
# One prompt per shape of the world, on both representations (docs/METHODS.md, "The quality suite at the defaults").
# At session 5's defaults the capsule joined (NeRF 0.962, Gaussians 0.890). Session 7's camera band took the Gaussian
# cone over the bar (0.7998 -> 0.88), session 8's light the pink tori (below).
PROMPTS = ("a red cube", "a blue sphere", "a green cylinder", "an orange cone", "a cyan capsule", "a pink torus")
STEPS = {"nerf": 300, "gaussians": 600}
# The NeRF torus runs the draft preset's own 600 steps: at 300 it had not formed at session 7's defaults (voxel IoU
# 0.39 and 0.18 over two seeds), and 300 steps were not measured at session 8's (light from any side, draft lr 0.02).
# At 600 it measures 0.896 here and 0.905 on the device host's CPUs.
RUN_STEPS = {("nerf", "a pink torus"): 600}
RUNS = [(rep, prompt) for rep in STEPS for prompt in PROMPTS]
# Every run is held to the bar: session 8's light from any side took both pink tori over it, which until then were
# expected failures above a floor (draft, 600 steps, device CPU: NeRF 0.610 -> 0.905, Gaussians 0.762 -> 0.888; the
# test's own runs on this machine: 0.896 and 0.895, and 0.87-0.98 for every run).


def _generate(out: Path, representation: str, prompt: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "backend", "generate", prompt, "--out", str(out), "--representation", representation,
         "--quality", "draft", "--steps", str(RUN_STEPS.get((representation, prompt), STEPS[representation])),
         "--device", "cpu", "--quiet"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "job.json").read_text())


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> dict[tuple[str, str], dict]:
    root = tmp_path_factory.mktemp("quality")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {run: pool.submit(_generate, root / f"{run[0]}_{run[1].replace(' ', '_')}", *run) for run in RUNS}
        return {run: f.result() for run, f in futures.items()}


def test_no_two_catalogue_shapes_pass_the_bar_for_each_other():
    import torch

    from backend.metrics import voxel_iou

    axis = torch.linspace(-0.55, 0.55, 64)
    pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    solids = {shape: (world.sdf(shape, pts) < 0).numpy() for shape in world.SHAPES}
    best = max(voxel_iou(solids[a], solids[b]) for a in solids for b in solids if a != b)
    assert best < 0.8  # cube vs cylinder, the closest pair, is 0.70


@pytest.mark.parametrize("run", RUNS, ids=[f"{r}-{p.split()[-1]}" for r, p in RUNS])
def test_mesh_matches_the_true_shape(records, run):
    figures = records[run]["figures"]
    assert figures["voxel_iou"] >= 0.8, figures


@pytest.mark.parametrize("run", RUNS, ids=[f"{r}-{p.split()[-1]}" for r, p in RUNS])
def test_mesh_colour_is_the_named_colour(records, run):
    figures = records[run]["figures"]
    named = world.parse_prompt(run[1]).colours[0]
    true = np.array(world.COLOURS[named])
    nearest_other = min(float(np.linalg.norm(true - np.array(c))) for n, c in world.COLOURS.items() if n != named)
    assert figures["nearest_colour"] == named, figures
    assert figures["colour_error"] < nearest_other / 2, (figures, nearest_other)

"""The faster extraction and start-up (issue 27, item 3) give what the slower code gave.

Each fast path is held to a plain reference of the same result: the cavity fill to a 3D max-pool and a flood that
grows one voxel a step, marching cubes on the box around the solid to marching cubes on the whole grid, the
Gaussian grid by ellipsoid columns to the pointwise density (tests/test_gaussians.py) and to strongly anisotropic
splats here, the training loop's AdamW to torch's. How long anything takes is measured by bench/extract_speed.py,
never asserted here.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.export.field import density_grid, fill_enclosed
from backend.export.mesh import marching_cubes
from backend.optimiser import AdamW
from backend.scene.gaussians import GaussianConfig, GaussianScene

ROOT = Path(__file__).resolve().parents[1]


def _reference_fill(grid: np.ndarray, level: float, gap: int) -> tuple[np.ndarray, int]:
    """The fill as it was: a (2 gap + 1)^3 max-pool to close openings, a flood one voxel a step from the border."""
    empty = torch.from_numpy(grid <= level)
    passable = empty
    if gap > 0:
        passable = F.max_pool3d((~empty).float()[None, None], 2 * gap + 1, stride=1, padding=gap)[0, 0] == 0
    reached = torch.zeros_like(passable)
    for axis in range(3):
        for end in (0, -1):
            index = [slice(None)] * 3
            index[axis] = end
            reached[tuple(index)] = passable[tuple(index)]
    while True:
        grown = reached.clone()
        for axis in range(3):
            n = grown.shape[axis]
            grown.narrow(axis, 1, n - 1).logical_or_(reached.narrow(axis, 0, n - 1))
            grown.narrow(axis, 0, n - 1).logical_or_(reached.narrow(axis, 1, n - 1))
        grown &= passable
        if torch.equal(grown, reached):
            break
        reached = grown
    if gap > 0:
        reached = (F.max_pool3d(reached.float()[None, None], 2 * gap + 1, stride=1, padding=gap)[0, 0] > 0) & empty
    cavity = (empty & ~reached).numpy()
    filled = grid.copy()
    filled[cavity] = max(float(grid.max()), level * 2.0 if level > 0 else level + 1.0)
    return filled, int(cavity.sum())


def _smooth_noise(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    x = torch.randn((1, 1, *shape), generator=torch.Generator().manual_seed(seed))
    for _ in range(3):
        x = F.avg_pool3d(x, 3, stride=1, padding=1)
    return x[0, 0].numpy()


@pytest.mark.parametrize("seed", range(4))
def test_fill_equals_the_max_pool_and_voxel_step_flood(seed):
    grid = _smooth_noise((17 + seed, 21, 24 - seed), seed)
    for quantile in (0.3, 0.6, 0.9):
        level = float(np.quantile(grid, quantile))
        for gap in (0, 1, 2, 3):
            want, count = _reference_fill(grid, level, gap)
            got, got_count = fill_enclosed(grid, level, gap)
            assert got_count == count and np.array_equal(got, want), (quantile, gap)


def test_fill_floods_a_winding_corridor_and_fills_a_sealed_room():
    """A corridor that turns many times (each turn a new sweep) leads from the border into a chamber, which stays
    open; a sealed room next to it is filled. The tensor path gives the numpy path's grid."""
    n = 24
    grid = np.full((n, n, n), 10.0, dtype=np.float32)
    x, y, z = 1, 1, 0
    grid[x, y, z] = 0.0
    for step in range(18):  # a staircase: +z, +y, +x in turn, each leg two voxels
        axis = step % 3
        for _ in range(2):
            x, y, z = (x + (axis == 2), y + (axis == 1), z + (axis == 0))
            grid[x, y, z] = 0.0
    grid[x : x + 4, y : y + 4, z : z + 4] = 0.0  # the chamber at the corridor's end
    grid[16:20, 2:6, 2:6] = 0.0  # a sealed room
    want, count = _reference_fill(grid, 1.0, 0)
    got, got_count = fill_enclosed(grid, 1.0, 0)
    assert got_count == count == 4 * 4 * 4 and np.array_equal(got, want)
    tensor, tensor_count = fill_enclosed(torch.from_numpy(grid), 1.0, 0)
    assert isinstance(tensor, torch.Tensor) and tensor_count == count and np.array_equal(tensor.numpy(), want)


def test_marching_cubes_of_the_box_is_marching_cubes_of_the_grid():
    import mcubes

    grid = _smooth_noise((30, 26, 34), 7)
    level = float(np.quantile(grid, 0.9))
    grid[:, :, :3] = grid.max()  # solid against one face of the grid: the box reaches the border there
    padded = np.pad(grid, 1, mode="constant", constant_values=grid.min())
    verts, faces = mcubes.marching_cubes(padded, level)
    spacing = 1.2 / (np.asarray(grid.shape, dtype=np.float64) - 1.0)
    mesh = marching_cubes(torch.from_numpy(grid), level, 0.6)
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    assert np.array_equal(mesh.faces, faces[keep])
    np.testing.assert_allclose(mesh.vertices, ((verts - 1.0) * spacing - 0.6).astype(np.float32), atol=1e-6)


def test_gaussian_grid_of_flat_tilted_splats_matches_pointwise_density():
    """Splats 20-50x thinner than wide, turned every way: the columns' parabola and z runs hold for them too."""
    scene = GaussianScene(GaussianConfig(num_points=60), seed=5)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        scene.log_scales.copy_(torch.log(torch.tensor([0.08, 0.05, 0.002])).expand(60, 3)
                               + 0.2 * torch.randn(60, 3, generator=gen))
        scene.quats.copy_(torch.randn(60, 4, generator=gen))
        scene.opacity_logits.fill_(3.0)
        fast = scene.density_grid(28, 0.55)
    reference = torch.from_numpy(density_grid(scene.density, 28, 0.55))
    assert reference.max() > 1.0
    assert torch.allclose(fast, reference, atol=5e-4)


def _train(optimiser_class: type, steps: int = 5) -> tuple[list[torch.Tensor], dict]:
    gen = torch.Generator().manual_seed(0)
    a = torch.nn.Parameter(torch.randn(7, 3, generator=gen))
    b = torch.nn.Parameter(torch.randn(5, generator=gen))
    opt = optimiser_class([{"params": [a], "lr": 0.05, "name": "a"}, {"params": [b], "lr": 0.01, "name": "b"}],
                          lr=0.02)
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        ((a * a).sum() * (i + 1) + (b.sin() * b).sum()).backward()
        opt.step()
    return [a.detach().clone(), b.detach().clone()], opt.state_dict()


def test_adamw_steps_and_state_are_torchs():
    ours, our_state = _train(AdamW)
    theirs, their_state = _train(torch.optim.AdamW)
    assert all(torch.equal(x, y) for x, y in zip(ours, theirs))
    assert our_state["param_groups"] == their_state["param_groups"]
    for key, state in their_state["state"].items():
        assert state.keys() == our_state["state"][key].keys()
        assert all(torch.equal(state[k], our_state["state"][key][k]) for k in state)
    # A checkpoint of either loads into the other.
    p = [torch.nn.Parameter(x.clone()) for x in ours]
    for cls, state in ((torch.optim.AdamW, our_state), (AdamW, their_state)):
        opt = cls([{"params": [p[0]], "lr": 0.05, "name": "a"}, {"params": [p[1]], "lr": 0.01, "name": "b"}])
        opt.load_state_dict(state)
        assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], their_state["state"][0]["exp_avg"])


def test_the_first_step_imports_no_compiler_no_other_prior_and_no_exporter():
    """The generate path to its first step done (bench/extract_speed.py's cold child, tiny draft settings) leaves
    torch._dynamo, diffusers, transformers, gsplat (CPU) and the export's libraries unimported."""
    settings = {"procedural_resolution": 16, "render_res_start": 16, "render_res_end": 16, "gaussian_points": 200}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "extract_speed.py"), "_first-step", "--device", "cpu",
                           "--quality", "draft", "--settings", json.dumps(settings)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("FIRST_STEP "))
    loaded = json.loads(line[len("FIRST_STEP "):])["heavy_modules"]
    assert loaded == [], loaded
    assert math.isfinite(json.loads(line[len("FIRST_STEP "):])["first_step"])

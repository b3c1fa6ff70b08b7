"""Mesh measures used by the quality figures: cavity filling before marching cubes, and voxel IoU of a mesh."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.export.field import fill_enclosed
from backend.export.mesh import marching_cubes, remove_small_components
from backend.metrics import mesh_occupancy, voxel_iou
from backend.priors.procedural import world

BOUND = 0.55
N = 48


@pytest.fixture(scope="module")
def axis() -> np.ndarray:
    return np.linspace(-BOUND, BOUND, N)


def _points(axis: np.ndarray) -> torch.Tensor:
    a = torch.as_tensor(axis, dtype=torch.float32)
    return torch.stack(torch.meshgrid(a, a, a, indexing="ij"), -1).reshape(-1, 3)


@pytest.mark.parametrize("shape", ["cube", "sphere", "torus", "cone"])
def test_mesh_of_a_true_shape_voxelises_back_to_it(shape, axis):
    sdf = world.sdf(shape, _points(axis)).numpy().reshape(N, N, N)
    truth = sdf < 0
    mesh = marching_cubes(-sdf, 0.0, BOUND)
    occupied = mesh_occupancy(mesh.vertices, mesh.faces, axis)
    assert voxel_iou(occupied, truth) > 0.99
    # A different shape must score clearly lower: the measure can fail.
    other = world.sdf("capsule", _points(axis)).numpy().reshape(N, N, N) < 0
    assert voxel_iou(occupied, other) < 0.9


def test_half_a_mesh_is_not_inside(axis):
    sdf = world.sdf("sphere", _points(axis)).numpy().reshape(N, N, N)
    mesh = marching_cubes(-sdf, 0.0, BOUND)
    occupied = mesh_occupancy(mesh.vertices, mesh.faces, axis)
    # Shifted by a quarter of the box, the overlap is partial and the IoU says so.
    shifted = np.roll(sdf < 0, N // 4, axis=0)
    assert 0.2 < voxel_iou(occupied, shifted) < 0.7


def test_fill_enclosed_turns_a_shell_into_a_solid(axis):
    r = np.linalg.norm(_points(axis).numpy(), axis=-1).reshape(N, N, N)
    shell = 10.0 * np.exp(-(((r - 0.35) / 0.04) ** 2))  # a hollow ball, like Gaussians on a surface
    hollow = remove_small_components(marching_cubes(shell, 1.0, BOUND), 0.05)
    filled_grid, count = fill_enclosed(shell, 1.0)
    solid = remove_small_components(marching_cubes(filled_grid, 1.0, BOUND), 0.05)
    truth = r < 0.35 + 0.04 * np.sqrt(np.log(10.0))
    assert count > 0.5 * (r < 0.3).sum()
    assert voxel_iou(mesh_occupancy(solid.vertices, solid.faces, axis), truth) > 0.95
    # Without filling, the inner surface survives as a second large component and the mesh is a hollow.
    assert hollow.n_faces > 1.5 * solid.n_faces
    assert voxel_iou(mesh_occupancy(hollow.vertices, hollow.faces, axis), truth) < 0.75  # hollow: (0.29 / 0.41)^3 missing


def test_fill_enclosed_leaves_open_cavities_alone(axis):
    p = _points(axis).numpy()
    r = np.linalg.norm(p, axis=-1).reshape(N, N, N)
    cup = 10.0 * np.exp(-(((r - 0.35) / 0.04) ** 2))
    cup[p[:, 2].reshape(N, N, N) > 0.2] = 0.0  # a bowl open at the top
    filled, count = fill_enclosed(cup, 1.0)
    assert count == 0 and np.array_equal(filled, cup)

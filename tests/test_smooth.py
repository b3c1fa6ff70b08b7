"""Taubin smoothing of extracted meshes (backend/export/smooth.py): lumps off, faces and volume kept."""

from __future__ import annotations

import numpy as np
import torch

from backend.export.mesh import Mesh, marching_cubes
from backend.export.smooth import smooth_mesh
from backend.metrics import normal_figures, sample_surface
from backend.priors.procedural import world

BOUND = 0.55


def _true_mesh(shape: str, n: int) -> Mesh:
    a = torch.linspace(-BOUND, BOUND, n)
    points = torch.stack(torch.meshgrid(a, a, a, indexing="ij"), -1).reshape(-1, 3)
    return marching_cubes(-world.sdf(shape, points).numpy().reshape(n, n, n), 0.0, BOUND)


def _lumpy(mesh: Mesh, amplitude: float, seed: int = 0) -> Mesh:
    return Mesh(mesh.vertices + np.random.default_rng(seed).normal(0.0, amplitude, mesh.vertices.shape), mesh.faces)


def _volume(mesh: Mesh) -> float:
    tri = mesh.vertices.astype(np.float64)[mesh.faces]
    return float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0)


def _normal_error(mesh: Mesh, shape: str) -> float:
    v = mesh.vertices.astype(np.float64)
    points, face, _ = sample_surface(v, mesh.faces, 4000, np.random.default_rng(1))
    corners = v[mesh.faces[face]]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    return normal_figures(points, normals / np.linalg.norm(normals, axis=1, keepdims=True), shape)[
        "normal_error_mean_deg"]


def test_smoothing_keeps_the_vertices_and_faces_and_zero_passes_is_the_identity():
    mesh = _lumpy(_true_mesh("sphere", 24), 0.005)
    smoothed = smooth_mesh(mesh, 5)
    assert smoothed.n_vertices == mesh.n_vertices and np.array_equal(smoothed.faces, mesh.faces)
    assert not np.allclose(smoothed.vertices, mesh.vertices)  # it did move them
    assert smooth_mesh(mesh, 0) is mesh


def test_smoothing_flattens_lumps_on_a_sphere():
    mesh = _true_mesh("sphere", 40)
    lumpy = _lumpy(mesh, 0.004)  # a seventh of a voxel: about 20 degrees of normal error
    before, after = _normal_error(lumpy, "sphere"), _normal_error(smooth_mesh(lumpy, 10), "sphere")
    assert before > 15.0 and after < 0.4 * before, (before, after)


def test_smoothing_keeps_a_cubes_volume():
    """Taubin's inflating step undoes the shrinking one: plain Laplacian passes would shrink the cube."""
    cube = _lumpy(_true_mesh("cube", 32), 0.004)
    for passes in (5, 10):
        assert abs(_volume(smooth_mesh(cube, passes)) / _volume(cube) - 1.0) < 0.02
    # The measure can fail: Laplacian-only passes (no inflating step) lose clearly more.
    assert _volume(smooth_mesh(cube, 10, mu=0.0)) / _volume(cube) < 0.97

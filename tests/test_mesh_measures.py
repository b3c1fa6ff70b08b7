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


def test_fill_enclosed_closes_a_small_opening_in_a_shell_but_not_a_wide_one(axis):
    p = _points(axis).numpy()
    r = np.linalg.norm(p, axis=-1).reshape(N, N, N)
    z = p[:, 2].reshape(N, N, N)
    xy = np.linalg.norm(p[:, :2], axis=-1).reshape(N, N, N)
    shell = 10.0 * np.exp(-(((r - 0.35) / 0.03) ** 2))
    pierced = shell.copy()
    pierced[(z > 0.2) & (xy < 0.03)] = 0.0  # a hole a voxel or two wide through the top of the shell
    open_bowl = shell.copy()
    open_bowl[(z > 0.2) & (xy < 0.2)] = 0.0  # a wide opening: a bowl
    inside = r < 0.25
    # Without closing, the flood from the border runs through the hole and the whole inside stays empty.
    assert fill_enclosed(pierced, 1.0)[1] == 0
    filled, count = fill_enclosed(pierced, 1.0, gap=2)
    assert (filled[inside] > 1.0).all() and count > 0.9 * inside.sum()
    # The outer surface stays where it was: nothing outside the shell is filled.
    assert (filled[r > 0.45] == pierced[r > 0.45]).all()
    # A bowl keeps its inside open: at most a sliver where the cube-shaped closing cannot follow the curved
    # wall back (measured 160 voxels, under 2% of the bowl's inside).
    assert fill_enclosed(open_bowl, 1.0, gap=2)[1] < 0.03 * (r < 0.32).sum()


def _textured_mesh(shape: str, colour: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """The true shape's marching-cubes surface with a one-colour texture, as read_glb returns a GLB."""
    axis = np.linspace(-0.5, 0.5, 80)
    sdf = world.sdf(shape, _points(axis)).numpy().reshape(80, 80, 80)
    mesh = marching_cubes(-sdf, 0.0, 0.5)
    texture = np.empty((4, 4, 3), dtype=np.uint8)
    texture[:] = np.round(np.array(colour) * 255)
    return {"vertices": mesh.vertices, "faces": mesh.faces,
            "uvs": np.full((len(mesh.vertices), 2), 0.5, dtype=np.float32), "texture": texture}


def test_mesh_figures_of_the_true_object_are_near_perfect_and_of_another_object_are_not():
    from backend.metrics import mesh_figures

    red = world.COLOURS["red"]
    right = mesh_figures(_textured_mesh("cone", red), "a red cone", samples=5000)
    assert right["voxel_iou"] > 0.97 and right["chamfer"] < 0.005, right
    assert right["colour_error_mean"] < 0.01 and right["wrong_colour_share"] == 0.0, right
    assert right["nearest_colour"] == "red" and right["components"] == 1
    # The same mesh measured as another shape, and a mesh of another colour, fail on exactly those figures.
    shape = mesh_figures(_textured_mesh("cone", red), "a red torus", samples=5000)
    assert shape["voxel_iou"] < 0.5 and shape["chamfer"] > 0.03 and shape["colour_error_mean"] < 0.01, shape
    colour = mesh_figures(_textured_mesh("cone", world.COLOURS["blue"]), "a red cone", samples=5000)
    assert colour["nearest_colour"] == "blue" and colour["wrong_colour_share"] == 1.0, colour
    assert colour["colour_error_mean"] > 0.5 and colour["voxel_iou"] > 0.97, colour


def test_wrong_colour_by_facing_finds_a_wrongly_coloured_underside():
    from backend.metrics import mesh_figures

    cube = _textured_mesh("cube", world.COLOURS["red"])
    # A second texel, grey, for every vertex on the bottom face.
    texture = np.zeros((1, 2, 3), dtype=np.uint8)
    texture[0, 0] = np.round(np.array(world.COLOURS["red"]) * 255)
    texture[0, 1] = 128
    low = cube["vertices"][:, 2] < -0.29  # the bottom face is z = -0.3
    uvs = np.where(low[:, None], [[0.75, 0.5]], [[0.25, 0.5]]).astype(np.float32)
    figures = mesh_figures({**cube, "uvs": uvs, "texture": texture}, "a red cube", samples=8000)
    facing = figures["wrong_colour_by_facing"]
    assert abs(facing["down"]["area"] - 1 / 6) < 0.03 and facing["down"]["wrong"] > 0.95, facing
    assert facing["up"]["wrong"] == 0.0 and facing["side"]["wrong"] < 0.1, facing
    assert abs(figures["wrong_colour_share"] - 1 / 6) < 0.05, figures


def test_components_count_pieces_not_uv_seams():
    from backend.metrics import count_components

    one = _textured_mesh("sphere", world.COLOURS["red"])
    v, f = one["vertices"], one["faces"]
    # A seam: the first face's vertices duplicated, the same positions under new indices.
    seamed_v = np.concatenate([v, v[f[0]]])
    seamed_f = f.copy()
    seamed_f[0] = len(v) + np.arange(3)
    assert count_components(seamed_v, seamed_f) == 1
    two = np.concatenate([v, v + 2.0]), np.concatenate([f, f + len(v)])
    assert count_components(*two) == 2


def test_excess_and_missing_volume_tell_a_swollen_mesh_from_a_shrunken_one():
    from backend.metrics import mesh_figures

    sphere = _textured_mesh("sphere", world.COLOURS["blue"])
    exact = mesh_figures(sphere, "a blue sphere", samples=2000)
    assert exact["excess_volume"] < 0.05 and exact["missing_volume"] < 0.05, exact
    # Scaled about the centre by s, a solid's volume goes as s^3: 1.2 adds 73% outside, 0.8 leaves 49% out.
    swollen = mesh_figures({**sphere, "vertices": sphere["vertices"] * 1.2}, "a blue sphere", samples=2000)
    shrunk = mesh_figures({**sphere, "vertices": sphere["vertices"] * 0.8}, "a blue sphere", samples=2000)
    assert abs(swollen["excess_volume"] - 0.728) < 0.08 and swollen["missing_volume"] < 0.02, swollen
    assert abs(shrunk["missing_volume"] - 0.488) < 0.06 and shrunk["excess_volume"] < 0.02, shrunk


def test_scaled_iou_tells_a_small_right_object_from_a_wrong_one():
    """A true cone at 0.7 of its size: poor raw IoU, near-perfect scaled IoU at scale 1/0.7; a torus stays poor."""
    from backend.metrics import mesh_figures

    small = _textured_mesh("cone", world.COLOURS["red"])
    small["vertices"] = small["vertices"] * 0.7
    fig = mesh_figures(small, "a red cone", samples=2000)
    assert fig["voxel_iou"] < 0.45, fig
    assert fig["scaled_iou"] > 0.93 and abs(fig["best_scale"] - 1 / 0.7) < 0.08, fig
    wrong = mesh_figures(small, "a red torus", samples=2000)
    assert wrong["scaled_iou"] < 0.6, wrong


@pytest.mark.parametrize("shape", ["cube", "sphere"])
def test_normal_error_is_small_on_the_true_surface_and_grows_with_lumps(shape):
    """Marching cubes of the exact SDF at 64^3 has normals within a few degrees of the truth (the cube's faces exactly);
    the same mesh with vertex noise of a sixth of a voxel (lumps an IoU does not see) is clearly off."""
    from backend.metrics import normal_figures, sample_surface

    n = 64
    a = np.linspace(-BOUND, BOUND, n)
    sdf = world.sdf(shape, _points(a)).numpy().reshape(n, n, n)
    mesh = marching_cubes(-sdf, 0.0, BOUND)
    rng = np.random.default_rng(0)

    def figures(vertices: np.ndarray) -> dict[str, float]:
        points, face, _ = sample_surface(vertices, mesh.faces, 5000, rng)
        corners = vertices[mesh.faces[face]]
        normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        return normal_figures(points, normals / np.linalg.norm(normals, axis=1, keepdims=True), shape)

    clean = figures(mesh.vertices.astype(np.float64))
    noisy = figures(mesh.vertices + rng.normal(0.0, 0.003, mesh.vertices.shape))
    assert clean["normal_error_mean_deg"] < 2.0 and clean["normal_off_share"] < 0.01, clean
    assert noisy["normal_error_mean_deg"] > 10.0 and noisy["normal_off_share"] > 0.2, noisy
    # Only the cube has edges to leave out: its 12 edges' bands are about a fifth of its area.
    assert (0.15 < clean["normal_edge_share"] < 0.3) if shape == "cube" else clean["normal_edge_share"] == 0.0, clean

"""Texturing a user's mesh: the fixed-geometry rasteriser, the textured-mesh scene, reading meshes, baking into a
mesh's own UVs, and the issue's done-when check (a catalogue cube textured "a blue cube" on the procedural prior)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from backend import cli
from backend.export import Mesh, export_mesh, marching_cubes
from backend.export.meshfile import read_glb
from backend.export.meshread import MeshFileError, read_mesh
from backend.export.writers import write_glb, write_obj, write_ply
from backend.priors.procedural import world
from backend.scene.cameras import eval_views, orbit_views, ray_bundle
from backend.scene.rasterise import rasterise
from backend.scene.textured_mesh import TexturedMesh
from shared.settings import validate


def _shape_mesh(shape: str, resolution: int = 40) -> Mesh:
    axis = torch.linspace(-0.5, 0.5, resolution)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    return marching_cubes((-world.sdf(shape, points)).reshape((resolution,) * 3).numpy(), 0.0, 0.5)


def _quad(z: float, half: float) -> tuple[np.ndarray, np.ndarray]:
    v = np.array([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]], dtype=np.float32)
    return v, np.array([[0, 1, 2], [0, 2, 3]])


def test_rasteriser_matches_ray_traced_sphere() -> None:
    mesh = _shape_mesh("sphere")
    views = eval_views(3)
    for i in range(3):
        raster = rasterise(torch.as_tensor(mesh.vertices), torch.as_tensor(mesh.faces).long(), views.c2w[i],
                           views.fovy[i], 48, 40)
        origins, dirs = ray_bundle(views.select([i]), 48, 40)
        o, d = origins[0], dirs[0]
        b = (o * d).sum(-1)
        disc = b * b - ((o * o).sum(-1) - 0.4**2)
        truth = disc > 0
        both = truth & raster.covered
        iou = float(both.sum() / (truth | raster.covered).sum())
        assert iou > 0.97, iou
        # The faceted sphere's hit lies within a cell of the true sphere, along the same ray.
        true_depth = -b - disc.clamp(min=0).sqrt()
        assert float((raster.depth - true_depth)[both].abs().max()) < 0.02
        # Barycentrics rebuild a point on the pixel's ray at the hit distance.
        corners = torch.as_tensor(mesh.vertices)[torch.as_tensor(mesh.faces).long()[raster.face_id[both]]]
        points = torch.einsum("nc,ncd->nd", raster.bary[both], corners)
        expected = o[both] + raster.depth[both][:, None] * d[both]
        assert float((points - expected).norm(dim=-1).max()) < 1e-4


def test_rasteriser_keeps_the_nearest_face_whatever_the_order() -> None:
    view = orbit_views([0.0], [89.0], [2.0], [40.0])  # from above, looking down -Z
    near_v, near_f = _quad(0.2, 0.1)
    far_v, far_f = _quad(-0.2, 0.3)
    for first_near in (True, False):
        parts = [(near_v, near_f, 0), (far_v, far_f, 1)] if first_near else [(far_v, far_f, 1), (near_v, near_f, 0)]
        vertices = np.concatenate([p[0] for p in parts])
        faces = np.concatenate([parts[0][1], parts[1][1] + 4])
        tag = np.repeat([parts[0][2], parts[1][2]], 2)  # 0: a near face
        raster = rasterise(torch.as_tensor(vertices), torch.as_tensor(faces), view.c2w[0], view.fovy[0], 32, 32)
        centre = int(raster.face_id[16, 16])
        assert tag[centre] == 0
        seen = {int(tag[f]) for f in raster.face_id[raster.covered].tolist()}
        assert seen == {0, 1}  # the far quad shows around the near one


def test_textured_mesh_trains_colour_only_and_renders_it() -> None:
    mesh = _shape_mesh("cube", 24)
    settings = validate({"quality": "draft"})
    scene = TexturedMesh.from_mesh(mesh, settings, (0.5, 0.5, 0.5))
    views = eval_views(2)
    out = scene.render(views, 24, 24, "albedo")
    colour = scene.field(scene.vertices).detach()
    inside = out.opacity[:, 0] > 0.999
    empty = out.opacity[:, 0] < 1e-6
    assert inside.any() and empty.any()
    rgb = out.rgb.permute(0, 2, 3, 1)
    # A fresh field is near-constant: covered pixels show its colour, empty ones the background.
    assert torch.allclose(rgb[inside], colour.mean(0).expand_as(rgb[inside]), atol=0.02)
    assert torch.allclose(rgb[empty], torch.full_like(rgb[empty], 0.5))
    out.rgb.sum().backward()
    assert scene.field.encoding.table.grad is not None and scene.field.encoding.table.grad.abs().sum() > 0
    assert all(not b.requires_grad for b in (scene.vertices, scene.normals))
    # Lit renders use the view's light: the lit side is brighter than the ambient-only side.
    lit = scene.render(orbit_views([0.0], [0.0], [2.0], [40.0], light_dir=torch.tensor([[0.0, -1.0, 0.0]])), 24, 24)
    dark = scene.render(orbit_views([0.0], [0.0], [2.0], [40.0], light_dir=torch.tensor([[0.0, 1.0, 0.0]])), 24, 24)
    centre = (slice(None), slice(None), slice(10, 14), slice(10, 14))
    assert float(lit.rgb[centre].detach().mean()) > float(dark.rgb[centre].detach().mean()) + 0.1


def test_meshes_read_back_as_written(tmp_path: Path) -> None:
    mesh = _shape_mesh("torus", 24)
    uvs = np.random.default_rng(0).random((mesh.n_vertices, 2)).astype(np.float32)
    write_ply(tmp_path / "m.ply", mesh)
    write_obj(tmp_path / "m.obj", mesh, uvs)
    write_glb(tmp_path / "m.glb", mesh, uvs, np.zeros((8, 8, 3), np.float32))
    for name, has_uvs in (("m.ply", False), ("m.obj", True), ("m.glb", True)):
        got = read_mesh(tmp_path / name)
        assert np.array_equal(got.mesh.faces, mesh.faces), name
        assert np.allclose(got.mesh.vertices, mesh.vertices, atol=1e-5), name
        assert (got.uvs is not None) == has_uvs
        if has_uvs:
            assert np.allclose(got.uvs, uvs, atol=1e-5), name


@pytest.mark.parametrize("text, reason", [
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\n", "no faces"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nf 1 2 4 3\n", "4 corners"),
    ("v 0 0 nan\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "non-finite"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 7\n", "outside"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\nf 3 2 1\nf 1 3 2\n", "more than the 2"),
])
def test_bad_meshes_are_refused_with_the_reason(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "bad.obj"
    path.write_text(text)
    with pytest.raises(MeshFileError, match=reason) as info:
        read_mesh(path, max_faces=2)
    assert "bad.obj" in str(info.value)


def test_bad_ply_quads_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "quad.ply"
    path.write_text("ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\n"
                    "element face 1\nproperty list uchar int vertex_indices\nend_header\n"
                    "0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n")
    with pytest.raises(MeshFileError, match="quad.ply: a face with 4 corners"):
        read_mesh(path)


def test_bake_into_the_mesh_uvs_keeps_vertices_and_faces(tmp_path: Path) -> None:
    mesh = _shape_mesh("sphere", 24)
    # Planar UVs from x and z: every vertex keeps one UV, so no vertex needs splitting.
    uvs = (mesh.vertices[:, [0, 2]] + 0.5).astype(np.float32)

    def colour(points: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        return (points + 0.5).clamp(0, 1)  # a colour that tells places apart

    export_mesh(tmp_path, mesh, colour, texture_size=64, formats=("glb", "obj"), uvs=uvs)
    glb = read_glb(tmp_path / "mesh.glb")
    assert np.array_equal(glb["vertices"], mesh.vertices) and np.array_equal(glb["faces"], mesh.faces)
    assert np.allclose(glb["uvs"], uvs, atol=1e-6)
    obj = read_mesh(tmp_path / "mesh.obj")
    assert np.array_equal(obj.mesh.faces, mesh.faces)
    assert np.allclose(obj.mesh.vertices, mesh.vertices, atol=1e-5)


def test_texture_cli_colours_a_catalogue_cube_blue(tmp_path: Path) -> None:
    """The issue's done-when at test size: the draft preset with fewer steps, a small bank and texture."""
    mesh = _shape_mesh("cube", 32)
    write_ply(tmp_path / "cube.ply", mesh)
    out = tmp_path / "out"
    code = cli.main(["texture", str(tmp_path / "cube.ply"), "a blue cube", "--out", str(out), "--device", "cpu",
                     "--quality", "draft", "--steps", "60", "--camera-bank-size", "6", "--texture-size", "64",
                     "--preview-every", "0", "--quiet"])
    assert code == 0
    record = json.loads((out / "job.json").read_text())
    assert record["command"] == "texture" and record["status"] == "finished"
    assert (out / "preview.png").is_file() and (out / "mesh_albedo.png").is_file()
    figures = record["figures"]
    assert figures["colour_error_median"] <= 0.1, figures
    assert figures["wrong_colour_share"] <= 0.1, figures
    # Geometry unchanged: a mesh without UVs is unwrapped (vertices split along seams), so each face's corners
    # are compared, in order.
    glb = read_glb(out / "mesh.glb")
    assert len(glb["faces"]) == mesh.n_faces
    assert np.array_equal(glb["vertices"][glb["faces"]], mesh.vertices[mesh.faces])

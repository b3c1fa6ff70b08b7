"""Our GLB files through Blender's own glTF importer (bpy 4.5 LTS, in .venv-blender; see tests/blender_support.py).

One GLB is made with the project's exporter (density grid -> marching cubes -> UV unwrap -> bake -> write_glb)
and imported once per module (bpy takes seconds to start). The shape is an ellipsoid with three different
semi-axes, off the origin, so that a swapped or flipped axis anywhere between our +Z-up world, the GLB's +Y-up
and Blender's +Z-up world changes the bounding box Blender reports.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.export import bake_texture, density_grid, marching_cubes, unwrap_uvs, write_glb
import blender_support  # tests/ helper (pytest puts tests/ on sys.path)

RESOLUTION = 48
TEXTURE = 256
BOUND = 0.55
CENTRE = (0.08, -0.12, 0.15)
SEMI_AXES = (0.3, 0.18, 0.1)  # x, y, z: all different
TOLERANCE = 1e-3


def ellipsoid_sdf(p: torch.Tensor) -> torch.Tensor:
    """Not a true distance away from the surface, but zero exactly on it, which is all the level set needs."""
    q = (p - torch.tensor(CENTRE)) / torch.tensor(SEMI_AXES)
    return (q.norm(dim=-1) - 1.0) * min(SEMI_AXES)


def density(p: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.softplus(20.0 * -ellipsoid_sdf(p))  # = ln 2 on the surface


def colour(p: torch.Tensor, normals: torch.Tensor | None = None) -> torch.Tensor:
    """Red above the centre (world +Z), blue below."""
    top = (p[:, 2] > CENTRE[2]).float()
    return torch.stack([top, torch.zeros_like(top), 1.0 - top], dim=-1)


def glb_json(path: Path) -> dict:
    data = path.read_bytes()
    magic, version, _ = struct.unpack_from("<4sII", data, 0)
    assert magic == b"glTF" and version == 2
    json_len, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A
    return json.loads(data[20 : 20 + json_len])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    grid = density_grid(density, RESOLUTION, BOUND)
    mesh = marching_cubes(grid, math.log(2.0), BOUND)
    uv_mesh, uvs = unwrap_uvs(mesh, TEXTURE)
    texture = bake_texture(uv_mesh, uvs, colour, TEXTURE)
    path = write_glb(tmp_path_factory.mktemp("blender") / "ellipsoid.glb", uv_mesh, uvs, texture, name="ellipsoid")
    return {"path": path, "mesh": uv_mesh, "texture": texture, "doc": glb_json(path)}


@pytest.fixture(scope="module")
def blender(exported):
    return blender_support.import_in_blender(exported["path"])


def mesh_objects(report: dict) -> list[dict]:
    return [obj for obj in report["objects"] if obj["type"] == "MESH"]


def test_blender_is_4_5_lts(blender):
    assert blender["blender_version_tuple"][:2] == [4, 5], blender["blender_version"]


def test_one_mesh_object_with_the_glb_vertex_and_face_counts(blender, exported):
    meshes = mesh_objects(blender)
    assert len(meshes) == 1, [(o["name"], o["type"]) for o in blender["objects"]]
    (obj,) = meshes
    doc = exported["doc"]
    (primitive,) = doc["meshes"][0]["primitives"]
    positions = doc["accessors"][primitive["attributes"]["POSITION"]]["count"]
    triangles = doc["accessors"][primitive["indices"]]["count"] // 3
    assert positions == exported["mesh"].n_vertices
    assert obj["vertices"] == positions
    assert obj["faces"] == triangles == exported["mesh"].n_faces


def test_base_color_is_the_baked_image_texture(blender, exported):
    (obj,) = mesh_objects(blender)
    assert len(obj["materials"]) == 1, obj["materials"]
    (material,) = obj["materials"]
    assert material["name"] == exported["doc"]["materials"][0]["name"]
    assert material["principled_bsdf"], material
    assert material["base_color_image_texture_direct"], f"Base Color is fed by {material['base_color_from']}"
    image = material["image"]
    assert image is not None and image["has_pixels"], image
    assert image["size"] == [TEXTURE, TEXTURE]
    # Red over the top half, blue under it: both colours, and no green, came through the PNG.
    r, g, b = image["mean_rgba"][:3]
    assert r > 0.2 and b > 0.2 and g < 0.02, image["mean_rgba"]


def test_bounding_box_is_the_mesh_in_blenders_z_up_world(blender, exported):
    (obj,) = mesh_objects(blender)
    vertices = exported["mesh"].vertices.astype(np.float64)
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    # The shape's extents differ per axis, so an axis swap or flip would not go unnoticed.
    extents = hi - lo
    assert min(abs(extents[0] - extents[1]), abs(extents[1] - extents[2]), abs(extents[0] - extents[2])) > 0.05
    assert np.allclose(obj["bbox_min"], lo, atol=TOLERANCE), (obj["bbox_min"], lo.tolist())
    assert np.allclose(obj["bbox_max"], hi, atol=TOLERANCE), (obj["bbox_max"], hi.tolist())
    # And it is the ellipsoid where we put it: +Z is up in Blender as in our world.
    centre = (np.asarray(obj["bbox_min"]) + np.asarray(obj["bbox_max"])) / 2
    assert np.allclose(centre, CENTRE, atol=0.02), centre.tolist()
    assert np.allclose(np.asarray(obj["bbox_max"]) - obj["bbox_min"], 2 * np.asarray(SEMI_AXES), atol=0.04)

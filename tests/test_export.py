"""Mesh extraction and export on analytic fields: level choice, marching cubes, cleaning, UVs, bake, writers.

The fields are softplus(20 * -sdf) of known shapes, so the true surface (sdf = 0) sits at density ln 2 and the
silhouettes of any camera follow from sphere-tracing the SDF.
"""

from __future__ import annotations

import io
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.export import (
    DEFAULT_BOUND,
    Mesh,
    bake_texture,
    choose_level,
    decimate,
    density_grid,
    export_mesh,
    face_normals,
    level_from_renders,
    marching_cubes,
    rasterise_uv,
    ray_max_density,
    remove_small_components,
    unwrap_uvs,
    vertex_colours,
    write_glb,
)
from backend.export.mesh import connected_components
from backend.scene.cameras import orbit_views, ray_bundle
import gltf_validator  # tests/ helper (pytest puts tests/ on sys.path)

RESOLUTION = 64
TEXTURE = 512
SPHERE_RADIUS = 0.3
FLOATER_CENTRE = (0.4, -0.4, 0.35)
FLOATER_RADIUS = 0.05
BOX_HALF = (0.3, 0.2, 0.12)  # distinct extents, so an axis mix-up in the writers shows


# --- analytic shapes -------------------------------------------------------------------------------------------

def sphere_sdf(p: torch.Tensor) -> torch.Tensor:
    return p.norm(dim=-1) - SPHERE_RADIUS


def floater_sdf(p: torch.Tensor) -> torch.Tensor:
    return (p - torch.tensor(FLOATER_CENTRE)).norm(dim=-1) - FLOATER_RADIUS


def sphere_with_floater_sdf(p: torch.Tensor) -> torch.Tensor:
    return torch.minimum(sphere_sdf(p), floater_sdf(p))


def box_sdf(p: torch.Tensor) -> torch.Tensor:
    q = p.abs() - torch.tensor(BOX_HALF)
    return q.clamp(min=0).norm(dim=-1) + q.amax(dim=-1).clamp(max=0)


def density_of(sdf):
    return lambda p: torch.nn.functional.softplus(20.0 * -sdf(p))


def colour_fn(p: torch.Tensor, normals: torch.Tensor | None = None) -> torch.Tensor:
    """Red on the top half (world +Z), blue on the bottom, green a smooth ramp in x (the normal is not used)."""
    top = (p[:, 2] > 0).float()
    return torch.stack([top, (0.5 + p[:, 0]).clamp(0, 1), 1.0 - top], dim=-1)


def cameras():
    return orbit_views([0, 90, 180, 270, 45, 225, 135], [15, -10, 30, 0, 60, -45, 80], 2.0, 40.0)


def true_silhouette(sdf, views, size: int = 48) -> torch.Tensor:
    """Opacity [B, 1, H, W] of the exact shape by sphere tracing: 1 where the ray hits the surface."""
    origins, dirs = ray_bundle(views, size, size)
    t = torch.zeros(origins.shape[:-1])
    for _ in range(128):
        t = t + sdf(origins + t[..., None] * dirs).clamp(min=0)
    hit = sdf(origins + t[..., None] * dirs) < 1e-3
    return hit.float()[:, None]


# --- an inside test for meshes that does not trust the mesh code: ray parity along +z ---------------------------

def inside_by_parity(mesh: Mesh, points: np.ndarray) -> np.ndarray:
    """Whether each point [N, 3] is inside the closed mesh: odd number of crossings of the ray toward +z.

    Points share vertical columns (a grid), so each triangle is intersected with the columns its xy-shadow covers.
    """
    v = mesh.vertices.astype(np.float64)
    tri = v[mesh.faces]
    # Columns through the points' (x, y); a tiny irrational shift keeps rays off edges and vertices.
    shift = np.array([1e-5 * math.sqrt(2), 1e-5 * math.sqrt(3)])
    xy = points[:, :2] + shift
    cols, col_of_point = np.unique(xy, axis=0, return_inverse=True)
    col_of_point = col_of_point.reshape(-1)
    xs, ys = np.unique(cols[:, 0]), np.unique(cols[:, 1])
    assert len(cols) == len(xs) * len(ys), "points must lie on a grid of columns"
    hits_col, hits_z = [], []
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    det = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    i0 = np.searchsorted(xs, tri[:, :, 0].min(axis=1))
    i1 = np.searchsorted(xs, tri[:, :, 0].max(axis=1), side="right")
    j0 = np.searchsorted(ys, tri[:, :, 1].min(axis=1))
    j1 = np.searchsorted(ys, tri[:, :, 1].max(axis=1), side="right")
    n = np.where(np.abs(det) > 1e-15, (i1 - i0) * (j1 - j0), 0)
    f = np.repeat(np.arange(len(tri)), n)
    off = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    w = (j1 - j0)[f]
    i, j = i0[f] + off // w, j0[f] + off % w
    px, py = xs[i], ys[j]
    l1 = ((px - a[f, 0]) * (c[f, 1] - a[f, 1]) - (c[f, 0] - a[f, 0]) * (py - a[f, 1])) / det[f]
    l2 = ((b[f, 0] - a[f, 0]) * (py - a[f, 1]) - (px - a[f, 0]) * (b[f, 1] - a[f, 1])) / det[f]
    ok = (l1 >= 0) & (l2 >= 0) & (l1 + l2 <= 1)
    z = (a[f, 2] + l1 * (b[f, 2] - a[f, 2]) + l2 * (c[f, 2] - a[f, 2]))[ok]
    col = (i * len(ys) + j)[ok]
    hits_col.append(col)
    hits_z.append(z)
    col, z = np.concatenate(hits_col), np.concatenate(hits_z)
    # Column ids of the points in the same i * len(ys) + j numbering.
    pi = np.searchsorted(xs, xy[:, 0])
    pj = np.searchsorted(ys, xy[:, 1])
    pcol = pi * len(ys) + pj
    key = col * 8.0 + (z + 2.0)  # |z| < 2: keys of one column stay within [8 col, 8 col + 4)
    key.sort()
    above = np.searchsorted(key, pcol * 8.0 + 4.0) - np.searchsorted(key, pcol * 8.0 + (points[:, 2] + 2.0))
    return above % 2 == 1


def voxel_iou(mesh: Mesh, sdf, n: int = 40) -> float:
    xs = np.linspace(-0.5, 0.5, n)
    pts = np.stack(np.meshgrid(xs, xs, xs, indexing="ij"), axis=-1).reshape(-1, 3)
    pred = inside_by_parity(mesh, pts)
    true = (sdf(torch.from_numpy(pts).float()) < 0).numpy()
    return float((pred & true).sum() / (pred | true).sum())


# --- shared pipeline results -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sphere_stage():
    """Sphere + floater through grid -> level from silhouettes -> marching cubes -> cleaning."""
    views = cameras()
    grid = density_grid(density_of(sphere_with_floater_sdf), RESOLUTION)
    opacity = true_silhouette(sphere_with_floater_sdf, views)
    level, sil_iou = level_from_renders(grid, DEFAULT_BOUND, views, opacity)
    raw = marching_cubes(grid, level, DEFAULT_BOUND)
    clean = remove_small_components(raw, 0.05)
    return {"grid": grid, "level": level, "sil_iou": sil_iou, "raw": raw, "clean": clean}


@pytest.fixture(scope="module")
def box_mesh():
    views = cameras()
    grid = density_grid(density_of(box_sdf), RESOLUTION)
    level, _ = level_from_renders(grid, DEFAULT_BOUND, views, true_silhouette(box_sdf, views))
    return remove_small_components(marching_cubes(grid, level, DEFAULT_BOUND))


@pytest.fixture(scope="module")
def sphere_export(sphere_stage, tmp_path_factory):
    out = tmp_path_factory.mktemp("sphere_export")
    figures = export_mesh(out, sphere_stage["clean"], colour_fn, texture_size=TEXTURE)
    return out, figures


# --- field sampling and level choice ---------------------------------------------------------------------------

def test_density_grid_index_order():
    r, bound = 9, 0.5
    grid = density_grid(lambda p: p[:, 0] + 10 * p[:, 1] + 100 * p[:, 2], r, bound, chunk=50)
    xs = np.linspace(-bound, bound, r)
    expected = xs[:, None, None] + 10 * xs[None, :, None] + 100 * xs[None, None, :]
    assert grid.shape == (r, r, r) and grid.dtype == np.float32
    np.testing.assert_allclose(grid, expected, atol=1e-4)


def test_ray_max_density_matches_dense_sampling():
    field = density_of(box_sdf)
    grid = density_grid(field, 48)
    views = cameras()
    origins, dirs = ray_bundle(views, 12, 12)
    o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    got = ray_max_density(grid, DEFAULT_BOUND, o, d, n_samples=200)
    t = torch.linspace(0.5, 3.5, 3000)
    dense = field((o[:, None] + t[None, :, None] * d[:, None]).reshape(-1, 3)).reshape(len(o), -1).amax(dim=1)
    hit = np.isfinite(got)  # rays that miss the grid's box are -inf: the field is ~0 along them
    assert 0.5 < hit.mean() < 1.0 and (dense.numpy()[~hit] < 1e-2).all()
    # Trilinear interpolation of a 48^3 grid of a steep field: close, not exact.
    np.testing.assert_allclose(got[hit], dense.numpy()[hit], atol=0.35, rtol=0.1)
    miss = ray_max_density(grid, DEFAULT_BOUND, torch.tensor([[0.0, 0.0, 2.0]]), torch.tensor([[1.0, 0.0, 0.0]]))
    assert miss[0] == -np.inf


def test_choose_level_maximises_iou_against_brute_force():
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, 1.0, 400)
    values[:20] = values[20:40]  # ties
    values[40] = -np.inf  # a ray that missed the grid
    silhouette = (values + rng.normal(0, 0.5, values.shape)) > 2.0
    level = choose_level(values, silhouette)

    def iou(th: float) -> float:
        pred = values > th
        return (pred & silhouette).sum() / (pred | silhouette).sum()

    finite = np.sort(values[np.isfinite(values)])
    candidates = np.concatenate([[finite[0] - 1], (finite[:-1] + finite[1:]) / 2, [finite[-1] + 1]])
    assert iou(level) == pytest.approx(max(iou(c) for c in candidates))
    # A clean silhouette is recovered exactly.
    exact = choose_level(values, values > 1.7)
    assert ((values > exact) == (values > 1.7)).all()
    with pytest.raises(ValueError, match="silhouette is empty"):
        choose_level(values, np.zeros_like(silhouette))


def test_level_from_silhouettes_finds_the_true_surface(sphere_stage):
    # softplus(20 * -sdf) equals ln 2 on the surface; pixels quantise the silhouette, hence the tolerance.
    assert sphere_stage["level"] == pytest.approx(math.log(2.0), abs=0.1)
    assert sphere_stage["sil_iou"] > 0.97


# --- marching cubes and cleaning -------------------------------------------------------------------------------

def test_marching_cubes_winding_is_outward(sphere_stage, box_mesh):
    mesh = sphere_stage["clean"]
    centroids = mesh.vertices[mesh.faces].mean(axis=1)
    assert (np.einsum("fd,fd->f", centroids, face_normals(mesh)) > 0).all()
    centroids = box_mesh.vertices[box_mesh.faces].mean(axis=1)
    assert (np.einsum("fd,fd->f", centroids, face_normals(box_mesh)) > 0).mean() > 0.999


def test_marching_cubes_empty_level_is_a_clear_error(sphere_stage):
    grid = sphere_stage["grid"]
    with pytest.raises(ValueError, match=r"level 100 is above the field's range \[.*\]"):
        marching_cubes(grid, 100.0, DEFAULT_BOUND)


def test_floater_is_removed(sphere_stage):
    raw, clean = sphere_stage["raw"], sphere_stage["clean"]
    assert len(np.unique(connected_components(raw.faces, raw.n_vertices))) == 2
    assert len(np.unique(connected_components(clean.faces, clean.n_vertices))) == 1
    assert clean.n_faces < raw.n_faces
    distance = np.linalg.norm(clean.vertices - np.array(FLOATER_CENTRE), axis=1)
    assert distance.min() > 0.2
    # Vertices unused by any face were dropped.
    assert len(np.unique(clean.faces)) == clean.n_vertices


def test_mesh_volume_matches_the_shape(sphere_stage, box_mesh):
    assert voxel_iou(sphere_stage["clean"], sphere_sdf) >= 0.9
    assert voxel_iou(box_mesh, box_sdf) >= 0.9


def test_decimate(sphere_stage):
    mesh = sphere_stage["clean"]
    assert decimate(mesh, mesh.n_faces + 10) is mesh
    small = decimate(mesh, mesh.n_faces // 4)
    assert mesh.n_faces // 8 <= small.n_faces <= mesh.n_faces // 4
    assert voxel_iou(small, sphere_sdf) >= 0.85
    centroids = small.vertices[small.faces].mean(axis=1)
    assert (np.einsum("fd,fd->f", centroids, face_normals(small)) > 0).mean() > 0.99


# --- UVs and bake ----------------------------------------------------------------------------------------------

def test_unwrap_keeps_the_surface(sphere_stage):
    mesh = sphere_stage["clean"]
    uv_mesh, uvs = unwrap_uvs(mesh, TEXTURE)
    assert uv_mesh.n_faces == mesh.n_faces and uv_mesh.n_vertices >= mesh.n_vertices
    assert uvs.shape == (uv_mesh.n_vertices, 2) and uvs.min() >= 0 and uvs.max() <= 1
    # Seam copies are copies: every vertex of the unwrapped mesh is a vertex of the original one.
    original = {tuple(v) for v in mesh.vertices.tolist()}
    assert all(tuple(v) in original for v in uv_mesh.vertices.tolist())


def test_the_bake_hands_the_colour_function_outward_unit_normals(sphere_stage):
    """Surface colours depend on the side the surface is seen from (Gaussians: the shell, not the inside), so the
    bake and the vertex colours pass each point's outward normal: on a sphere at the origin, along the position."""
    seen = []

    def along_position(p: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        seen.append((torch.linalg.norm(normals, dim=-1), (normals * torch.nn.functional.normalize(p, dim=-1)).sum(-1)))
        return torch.zeros_like(p)

    uv_mesh, uvs = unwrap_uvs(sphere_stage["clean"], TEXTURE)
    bake_texture(uv_mesh, uvs, along_position, TEXTURE)
    vertex_colours(sphere_stage["clean"], along_position)
    assert len(seen) == 2
    for length, cosine in seen:
        assert torch.allclose(length, torch.ones_like(length), atol=1e-4)
        assert cosine.min() > 0.9  # outward, and smooth (interpolated vertex normals of a 96^3 sphere)


def test_baked_texture_matches_the_colour_function(sphere_stage):
    uv_mesh, uvs = unwrap_uvs(sphere_stage["clean"], TEXTURE)
    raster = rasterise_uv(uvs, uv_mesh.faces, TEXTURE)
    texture = bake_texture(uv_mesh, uvs, colour_fn, TEXTURE, raster=raster)
    assert texture.shape == (TEXTURE, TEXTURE, 3) and 0.3 < raster.coverage < 0.95
    # Random surface points: look the texture up through the UVs (nearest texel) and compare.
    rng = np.random.default_rng(1)
    f = rng.integers(0, uv_mesh.n_faces, 20000)
    w = rng.dirichlet(np.ones(3), len(f))
    corners = uv_mesh.faces[f]
    p = np.einsum("nc,ncd->nd", w, uv_mesh.vertices[corners])
    uv = np.einsum("nc,ncd->nd", w, uvs[corners])
    col = np.clip((uv[:, 0] * TEXTURE).astype(int), 0, TEXTURE - 1)
    row = np.clip(((1 - uv[:, 1]) * TEXTURE).astype(int), 0, TEXTURE - 1)
    got = texture[row, col]
    want = colour_fn(torch.from_numpy(p).float()).numpy()
    away_from_edge = np.abs(p[:, 2]) > 0.03
    assert (np.abs(got - want)[away_from_edge][:, [0, 2]] < 0.05).all(axis=1).mean() > 0.99
    assert np.quantile(np.abs(got[:, 1] - want[:, 1]), 0.99) < 0.03
    # Dilation filled the texture: no black left between charts.
    assert (texture.max(axis=2) > 0.05).all()


# --- writers ---------------------------------------------------------------------------------------------------

_COMPONENTS = {5126: ("<f4", 4), 5125: ("<u4", 4), 5123: ("<u2", 2), 5121: ("u1", 1)}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


def read_glb(path: Path) -> tuple[dict, bytes]:
    """A minimal GLB reader that checks the container: header, chunk types, lengths and alignment."""
    data = path.read_bytes()
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    assert magic == b"glTF" and version == 2 and length == len(data)
    json_len, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A and json_len % 4 == 0
    doc = json.loads(data[20 : 20 + json_len])
    bin_len, bin_type = struct.unpack_from("<II", data, 20 + json_len)
    assert bin_type == 0x004E4942 and bin_len % 4 == 0
    assert 28 + json_len + bin_len == len(data)
    blob = data[28 + json_len :]
    assert doc["buffers"][0]["byteLength"] <= bin_len
    return doc, blob


def accessor_array(doc: dict, blob: bytes, index: int) -> np.ndarray:
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    dtype, size = _COMPONENTS[acc["componentType"]]
    width = _WIDTH[acc["type"]]
    start = view["byteOffset"] + acc.get("byteOffset", 0)
    assert start % size == 0 and view["byteOffset"] + view["byteLength"] <= len(blob)
    return np.frombuffer(blob, dtype=dtype, count=acc["count"] * width, offset=start).reshape(acc["count"], width)


def image_from_glb(doc: dict, blob: bytes) -> np.ndarray:
    view = doc["bufferViews"][doc["images"][0]["bufferView"]]
    png = blob[view["byteOffset"] : view["byteOffset"] + view["byteLength"]]
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_glb_structure_axes_and_uv_origin(sphere_export, sphere_stage):
    out, figures = sphere_export
    doc, blob = read_glb(Path(figures["files"]["glb"]))
    assert doc["asset"]["version"] == "2.0" and doc["asset"]["generator"]
    prim = doc["meshes"][0]["primitives"][0]
    attrs = {name: accessor_array(doc, blob, i) for name, i in prim["attributes"].items()}
    assert set(attrs) == {"POSITION", "NORMAL", "TEXCOORD_0"}
    n = figures["uv_vertices"]
    for name, array in attrs.items():
        acc = doc["accessors"][prim["attributes"][name]]
        assert acc["count"] == n
        np.testing.assert_array_equal(acc["min"], array.min(axis=0))
        np.testing.assert_array_equal(acc["max"], array.max(axis=0))
    indices = accessor_array(doc, blob, prim["indices"])
    assert doc["accessors"][prim["indices"]]["componentType"] == 5125
    assert indices.size == 3 * figures["faces"] and indices.max() < n
    np.testing.assert_allclose(np.linalg.norm(attrs["NORMAL"], axis=1), 1.0, atol=1e-5)
    material = doc["materials"][prim["material"]]["pbrMetallicRoughness"]
    assert material["metallicFactor"] == 0 and material["roughnessFactor"] == 1
    assert material["baseColorTexture"]["index"] == 0
    assert doc["samplers"][0]["magFilter"] == 9729

    # +Y up: the sphere's top (world +Z) is glTF's largest y; world -Y (front) is glTF +z.
    pos = attrs["POSITION"]
    assert pos[:, 1].max() == pytest.approx(sphere_stage["clean"].vertices[:, 2].max(), abs=1e-6)
    assert pos[:, 2].max() == pytest.approx(-sphere_stage["clean"].vertices[:, 1].min(), abs=1e-6)
    # The texture through glTF's top-left UV origin: red at the top, blue at the bottom.
    image = image_from_glb(doc, blob)
    size = image.shape[0]
    for vertex, colour in ((pos[:, 1].argmax(), (255, 0)), (pos[:, 1].argmin(), (0, 255))):
        u, v = attrs["TEXCOORD_0"][vertex]
        texel = image[min(int(v * size), size - 1), min(int(u * size), size - 1)]
        assert abs(int(texel[0]) - colour[0]) < 20 and abs(int(texel[2]) - colour[1]) < 20


def test_glb_passes_the_khronos_validator(sphere_export, box_mesh, tmp_path):
    _, figures = sphere_export
    # Also the other GLB shape: vertex colours, no texture.
    colours = np.clip(box_mesh.vertices + 0.5, 0, 1)
    plain = write_glb(tmp_path / "box.glb", box_mesh, vertex_colors=colours)
    reports = gltf_validator.validate(figures["files"]["glb"], plain)
    for report in reports:
        assert report["numErrors"] == 0, gltf_validator.format_messages(report)
        assert report["numWarnings"] == 0, gltf_validator.format_messages(report)


def test_obj_mtl_png_and_ply(sphere_export, sphere_stage):
    out, figures = sphere_export
    files = {k: Path(v) for k, v in figures["files"].items()}
    for key in ("obj", "mtl", "texture", "ply"):
        assert files[key].exists(), key
    lines = files["obj"].read_text().splitlines()
    v = np.array([[float(x) for x in line.split()[1:4]] for line in lines if line.startswith("v ")])
    vt = np.array([[float(x) for x in line.split()[1:3]] for line in lines if line.startswith("vt ")])
    faces = [line for line in lines if line.startswith("f ")]
    assert len(v) == len(vt) == figures["uv_vertices"] and len(faces) == figures["faces"]
    mtl = files["mtl"].read_text()
    assert f"mtllib {files['mtl'].name}" in lines and f"map_Kd {files['texture'].name}" in mtl
    # Y-up like glTF, and OBJ's v-up UVs: the top vertex reads red from the PNG.
    assert v[:, 1].max() == pytest.approx(sphere_stage["clean"].vertices[:, 2].max(), abs=1e-5)
    image = np.asarray(Image.open(files["texture"]).convert("RGB"))
    size = image.shape[0]
    u_top, v_top = vt[v[:, 1].argmax()]
    texel = image[min(int((1 - v_top) * size), size - 1), min(int(u_top * size), size - 1)]
    assert texel[0] > 235 and texel[2] < 20

    data = files["ply"].read_bytes()
    header, body = data.split(b"end_header\n", 1)
    assert b"binary_little_endian" in header and b"property uchar red" in header
    n_vertex = int(header.split(b"element vertex ")[1].split(b"\n")[0])
    n_face = int(header.split(b"element face ")[1].split(b"\n")[0])
    assert n_vertex == figures["vertices"] and n_face == figures["faces"]
    assert len(body) == n_vertex * 15 + n_face * 13
    vertex = np.frombuffer(body, dtype=[("p", "<f4", 3), ("c", "u1", 3)], count=n_vertex)
    np.testing.assert_array_equal(vertex["p"], sphere_stage["clean"].vertices)  # PLY stays in world axes
    top = vertex["p"][:, 2].argmax()
    assert tuple(vertex["c"][top][[0, 2]]) == (255, 0)


def test_export_figures(sphere_export):
    _, figures = sphere_export
    json.dumps(figures)  # ready for job.json
    assert 0.3 < figures["texture_coverage"] < 0.95
    assert set(figures["seconds"]) >= {"unwrap", "bake"}
    with pytest.raises(ValueError, match="unknown formats"):
        export_mesh(Path("/nonexistent"), Mesh(np.zeros((3, 3)), np.array([[0, 1, 2]])), colour_fn, formats=("fbx",))


@pytest.fixture(scope="module")
def sphere_wire(sphere_stage, tmp_path_factory):
    out = tmp_path_factory.mktemp("sphere_wire")
    return export_mesh(out, sphere_stage["clean"], colour_fn, texture_size=TEXTURE, formats=("glb",),
                       wire_arrays=True)


def test_the_wire_arrays_export_mesh_returns_are_the_glbs_contents(sphere_wire):
    """The server sends the arrays the exporter wrote (no GLB read back): they must be exactly what a reader of
    the file gets, key for key, dtype for dtype, bit for bit."""
    from backend.export.meshfile import read_glb as read_wire_arrays

    figures = sphere_wire
    sent, on_disk = figures["arrays"], read_wire_arrays(Path(figures["files"]["glb"]))
    assert sorted(sent) == sorted(on_disk) == ["colours", "faces", "texture", "uvs", "vertices"]
    for name in on_disk:
        assert sent[name].dtype == on_disk[name].dtype and sent[name].shape == on_disk[name].shape, name
        assert sent[name].tobytes() == on_disk[name].tobytes(), name

def test_the_wire_uvs_are_the_files_not_the_unwrappers(sphere_stage, sphere_wire):
    """Why the arrays go through the file's conversions: glTF stores 1 - v, and 1 - (1 - v) is not v in float32
    for about a third of the UVs, so sending the unwrapper's UVs would not be what is on disk."""
    _, uvs = unwrap_uvs(sphere_stage["clean"], TEXTURE)
    sent = sphere_wire["arrays"]["uvs"]
    assert uvs.shape == sent.shape and np.count_nonzero(uvs.astype(np.float32) != sent) > len(uvs) // 10

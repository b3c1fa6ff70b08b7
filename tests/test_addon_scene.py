"""The add-on's scene builder in Blender (tests/blender/addon_mesh.py): arrays -> object, material, packed
texture; a streamed update replaces the same object's mesh in place; the texture survives save, move, reload."""

from __future__ import annotations

import pytest

from test_addon_build import addon_zip, run_blender_script  # noqa: F401 - addon_zip is a fixture


@pytest.fixture(scope="module")
def report(addon_zip, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("addon_mesh")
    return run_blender_script("addon_mesh.py", addon_zip, tmp, tmp_path=tmp)


def test_object_named_after_prompt_at_cursor_with_expected_counts(report):
    first = report["first"]
    assert first["name"] == "a red and blue sphere"  # whitespace collapsed
    assert first["location"] == [1.0, -2.0, 0.5]
    assert (first["vertices"], first["faces"]) == (9 * 13, 2 * 8 * 12)
    assert first["triangles_only"]
    assert first["uv_layers"] == ["UVMap"] and first["color_attributes"] == ["Color"]
    assert first["bbox_min"] == pytest.approx([-0.5] * 3, abs=1e-6)


def test_principled_material_with_packed_srgb_texture_mapped_through_the_uvs(report):
    first = report["first"]
    assert first["material"]["base_color_from"] == "TEX_IMAGE"
    image = first["image"]
    assert image["packed"] and image["size"] == [32, 32] and image["colorspace"] == "sRGB"
    assert image["top_rgb"] == pytest.approx([1, 0, 0]) and image["bottom_rgb"] == pytest.approx([0, 0, 1])
    assert first["uv_red_above"] and first["uv_blue_below"]


def test_streamed_update_replaces_the_mesh_in_place(report):
    second = report["second"]
    assert report["same_object"] and report["same_mesh_datablock"]
    assert (second["vertices"], second["faces"]) == (report["expected_second"]["vertices"],
                                                     report["expected_second"]["faces"])
    assert second["n_materials"] == 1 and second["image"]["size"] == [64, 64]
    assert second["uv_red_above"] and second["uv_blue_below"]
    # No leftovers: one mesh datablock for our object (plus the start-up cube's), images replaced not added.
    assert report["n_meshes"] == 2 and report["n_images_second"] == report["n_images_first"]
    assert "face indices" in report["bad_faces_error"] and report["after_bad"] == second["vertices"]


def test_packed_texture_survives_save_move_and_reload(report):
    reloaded = report["reloaded"]
    assert reloaded["vertices"] == report["second"]["vertices"]
    assert reloaded["image"]["packed"] and reloaded["image"]["size"] == [64, 64]
    assert reloaded["image"]["top_rgb"] == pytest.approx([1, 0, 0], abs=1e-3)
    assert reloaded["uv_red_above"] and reloaded["uv_blue_below"]

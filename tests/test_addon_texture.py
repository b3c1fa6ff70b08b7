"""Texture selected in Blender against a real backend (tests/blender/addon_texture.py): a cube with its own UV map
and a UV sphere without UVs are textured on the procedural prior at the draft preset with a few steps and a 64 px
texture; each keeps its geometry, gets a Principled BSDF material with a packed image, and undo restores it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from test_addon_build import REPO, addon_zip, blender_python_of, run_blender_script  # noqa: F401 - a fixture
from test_addon_generate import free_port

SETTINGS = {"steps": 6, "camera_bank_size": 4, "texture_size": 64, "procedural_resolution": 32,
            "preview_every": 3, "preview_size": 32}
# The default Blender always; another with TBSD_TEXTURE_BLENDERS="4.5,4.2".
BLENDERS = tuple(os.environ.get("TBSD_TEXTURE_BLENDERS", "4.5").split(","))


@pytest.fixture(scope="module", params=BLENDERS)
def report(request, addon_zip, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("addon_texture")
    results = tmp / "results"
    results.mkdir()
    out = run_blender_script("addon_texture.py", addon_zip, sys.executable, REPO, results, free_port(),
                             json.dumps(SETTINGS), tmp_path=tmp, timeout=600, python=blender_python_of(request.param))
    assert out["blender"].startswith(request.param + ".")
    out["results"] = str(results)
    return out


@pytest.mark.parametrize("name", ["user cube", "user sphere"])
def test_texture_selected_keeps_the_geometry_and_adds_a_packed_texture_material(report, name):
    job = report[name]
    assert job["job_state"] == "done" and job["last_error"] == "", job
    assert job["previews"] >= 1 and max(job["progress_steps"]) == SETTINGS["steps"]
    before, after = job["before"], job["after"]
    assert job["same_positions"]
    assert (after["vertices"], after["faces"], after["loops"]) == (before["vertices"], before["faces"], before["loops"])
    assert after["material"] == {"principled": True, "base_color_from": "TEX_IMAGE"}
    assert after["image"] == {"size": [64, 64], "packed": True}
    assert job["active"] == name and job["job_property"]


def test_a_mesh_with_uvs_is_textured_through_its_own_uv_map(report):
    job = report["user cube"]
    assert job["after"]["uv_maps"] == job["before"]["uv_maps"] == ["UVMap"]
    assert job["after"]["uv_map_node"] == "UVMap"


def test_a_mesh_without_uvs_gets_the_unwraps_uvs_per_corner_in_a_new_uv_map(report):
    job = report["user sphere"]
    assert job["before"]["uv_maps"] == [] and job["after"]["uv_maps"] == ["TBSD UV"]
    assert job["after"]["uv_map_node"] == "TBSD UV"
    low, high = job["after"]["new_uv_range"]
    assert 0.0 <= low < high <= 1.0
    assert job["after"]["new_uv_distinct"] > job["before"]["vertices"]  # seams: more UVs than vertices
    # Each face corner got the UV the backend's unwrap gave that corner: the job's GLB, corner by corner.
    from backend.export.meshfile import read_glb

    glb = read_glb(Path(report["results"]) / job["job_property"] / "mesh.glb")
    expected = glb["uvs"][glb["faces"]].reshape(-1, 2)
    assert np.allclose(np.asarray(job["after"]["new_uv_per_corner"]), expected, atol=1e-6)


@pytest.mark.parametrize("name", ["user cube", "user sphere"])
def test_undo_takes_the_texture_away_and_keeps_the_geometry_and_redo_brings_it_back(report, name):
    job = report[name]
    undone, before = job["after_undo"], job["before"]
    assert job["undo_same_positions"]
    assert undone["materials"] == 0 and undone["uv_maps"] == before["uv_maps"]
    assert (undone["vertices"], undone["faces"]) == (before["vertices"], before["faces"])
    assert job["after_redo"]["image"] == {"size": [64, 64], "packed": True}


@pytest.mark.parametrize("kind", ["refine", "edit"])
def test_refine_and_edit_of_a_textured_object_put_the_new_texture_on_it_and_undo_brings_the_first_back(report, kind):
    job = report[kind]
    assert job["job_state"] == "done" and job["last_error"] == "", job
    assert job["objects_added"] == 0 and job["previews"] >= 1
    before, after = job["before"], job["after"]
    # The geometry is the user's: untouched; the texture is the refine's, a new image with other pixels.
    assert job["same_positions"]
    assert (after["vertices"], after["faces"], after["loops"], after["uv_maps"]) == \
        (before["vertices"], before["faces"], before["loops"], before["uv_maps"])
    assert after["material"] == {"principled": True, "base_color_from": "TEX_IMAGE"}
    assert after["image"] == {"size": [64, 64], "packed": True} and after["uv_map_node"] == "UVMap"
    assert after["image_name"] != before["image_name"] and after["pixels"] != before["pixels"]
    # The object now shows the refine's job, a new one on the backend.
    assert job["job_property"] == job["state_job"] and job["job_property"] != job["job_before"]
    # Undo: the texture and job before the refine; redo: the refine's.
    assert job["undo_same_positions"]
    assert job["after_undo"]["pixels"] == before["pixels"] and job["undo_job_property"] == job["job_before"]
    assert job["after_redo"]["pixels"] == after["pixels"]


def test_refine_of_a_textured_object_whose_mesh_changed_is_refused_in_words(report):
    changed = report["changed_refine"]
    assert "changed since it was textured" in changed["last_error"], changed
    assert changed["job_state"] == "done"  # nothing was sent

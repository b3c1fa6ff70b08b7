"""The panel's image prompt reaches the backend (tests/blender/addon_reference.py, Blender 4.5's bpy wheel): an image
datablock picked as an isd job's reference image is sent with its Generate, saved by the server as the job's
reference, used by the job (its mode is the pictured cube) and the result comes back into the scene."""

from __future__ import annotations

import json
import sys

import numpy as np
from PIL import Image

from test_addon_build import REPO, addon_zip, run_blender_script  # noqa: F401 - addon_zip is a fixture
from test_addon_generate import free_port

SETTINGS = {"steps": 4, "representation": "gaussians", "gaussian_points": 200, "camera_bank_size": 4,
            "render_res_start": 16, "render_res_end": 16, "procedural_resolution": 16, "mesh_resolution": 32,
            "texture_size": 64, "preview_every": 0, "decimate_faces": 2000}


def test_a_picked_reference_image_is_sent_saved_and_used(addon_zip, tmp_path):  # noqa: F811
    from backend.priors.procedural.world import ground_truth
    from backend.reference import tensor_to_pixels
    from backend.scene.cameras import front_view

    pixels = tensor_to_pixels(ground_truth("a blue cube", front_view(1), 48)[0][0])
    pixels[0, 0] = [255, 0, 0]  # a marker in the top-left corner: rows must arrive top to bottom
    png = tmp_path / "blue cube.png"
    Image.fromarray(pixels).save(png)
    results = tmp_path / "results"
    results.mkdir()
    report = run_blender_script("addon_reference.py", addon_zip, sys.executable, REPO, results, free_port(),
                                json.dumps(SETTINGS), png, tmp_path=tmp_path, timeout=600)
    assert report["image_size"] == [48, 48] and report["sent_shape"] == [48, 48, 3]
    assert report["sent_corner"] == [255, 0, 0] and report["sent_for_tbsd"] is False
    assert report["job_state"] == "done" and report["last_error"] == "", report
    job = report["job_id"]
    assert report["object"] is not None and report["object"]["job"] == job and report["object"]["vertices"] > 0
    saved = np.asarray(Image.open(results / job / "reference.png"))
    assert np.array_equal(saved, pixels)  # exactly the picked image's pixels, as the server keeps them
    record = json.loads((results / job / "job.json").read_text())
    assert record["settings"]["method"] == "isd" and record["reference"]["source"] == "image"
    assert record["reference"]["mode"] == "a blue cube"

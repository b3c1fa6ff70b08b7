"""The headless add-on demo script (tests/blender/addon_demo.py, what `build.py demo` can run) on tiny settings:
it must leave a .blend holding the generated object and a rendered PNG that shows it."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from test_addon_build import REPO, addon_zip, run_blender_script  # noqa: F401 - addon_zip is a fixture
from test_addon_generate import TINY


@pytest.fixture(scope="module")
def demo(addon_zip, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("addon_demo")
    tiny = {k: v for k, v in TINY.items() if k != "preview_size"}
    report = run_blender_script("addon_demo.py", addon_zip, sys.executable, REPO, out, "a red cube",
                                json.dumps(tiny), tmp_path=out, timeout=900)
    return report, out


def test_demo_writes_blend_and_png_of_the_generated_object(demo):
    report, out = demo
    assert report["blend"] == str(out / "demo.blend") and (out / "demo.blend").stat().st_size > 0
    assert report["object"] == "a red cube" and report["vertices"] > 100
    assert report["meshes_received"] == 2  # one streamed on the way, the final


def test_png_shows_the_object_whole_near_the_centre(demo):
    from PIL import Image

    report, _ = demo
    image = np.asarray(Image.open(report["png"]).convert("RGB"), dtype=np.float32) / 255.0
    assert image.shape == (512, 512, 3)
    x0, y0, x1, y1 = report["frame_box"]
    # In frame, whole, and big enough to see.
    assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512, report["frame_box"]
    assert (x1 - x0) * (y1 - y0) > 0.1 * 512 * 512
    assert abs((x0 + x1) / 2 - 256) < 64 and abs((y0 + y1) / 2 - 256) < 64
    # The render shows it: pixels at the object's centre differ from the scene around it (floor and sky). What
    # colour it is depends on training (8 steps here leave the initial grey blob; the demo's 200 steps a red cube).
    cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
    centre = image[cy - 8 : cy + 8, cx - 8 : cx + 8].reshape(-1, 3).mean(0)
    outside = np.concatenate([image[: max(int(y0) - 4, 1)].reshape(-1, 3), image[min(int(y1) + 4, 511):].reshape(-1, 3)])
    assert np.abs(centre - outside.mean(0)).max() > 0.05, (centre, outside.mean(0))
    assert image.std() > 0.03

"""An isd job with a reference image picked in the panel, against a real backend process.

    $TBSD_BLENDER_PYTHON tests/blender/addon_reference.py ZIP BACKEND_PYTHON REPO RESULTS_DIR PORT SETTINGS_JSON PNG

The PNG is loaded as an image datablock and picked as the panel's reference image (method isd); Generate sends it
with the submit, and the job runs to its end. Reports the job's id and state, the image's size, and whether the
panel draws the picker (for isd) and not (for tbsd). One JSON report on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import addon_harness as h  # noqa: E402

import bpy  # noqa: E402


def tick_until(conn, state, what: str, predicate, timeout: float) -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}: {state.job_state} "
                                 f"{state.last_error!r}")
        conn._tick()
        time.sleep(0.05)
    return time.monotonic() - t0


def main(argv: list[str]) -> dict:
    zip_path, backend_python, repo, results_dir, port, settings_json, png = argv
    report: dict = {"blender": bpy.app.version_string}
    h.install(zip_path)
    conn = h.submodule("connection")
    jobs = h.submodule("jobs")
    state = bpy.context.window_manager.tbsd_state
    h.point_at_local_backend(backend_python, repo, port, results_dir)
    props = bpy.context.scene.tbsd
    props.quality = "draft"
    for name, value in json.loads(settings_json).items():
        setattr(props, name, value)
    props.prompt = "a cube"
    props.method = "isd"
    image = bpy.data.images.load(png)
    props.reference_image = image
    report["image_size"] = list(image.size)
    sent = jobs.reference_pixels(props)
    report["sent_shape"] = list(sent.shape)
    report["sent_corner"] = sent[0, 0].tolist()
    props.method = "tbsd"
    report["sent_for_tbsd"] = jobs.reference_pixels(props) is not None
    props.method = "isd"

    assert bpy.ops.tbsd.backend_start() == {"FINISHED"}
    report["connect_s"] = tick_until(conn, state, "the backend's welcome", lambda: state.connection == "connected",
                                     120)
    assert bpy.ops.tbsd.generate() == {"FINISHED"}, state.last_error
    report["seconds"] = tick_until(conn, state, "the isd job", lambda: state.job_state in ("done", "failed"), 300)
    report["job_state"], report["last_error"], report["job_id"] = state.job_state, state.last_error, state.job_id
    obj = bpy.data.objects.get(state.object_name)
    report["object"] = None if obj is None else {"name": obj.name, "job": obj.get("tbsd_job"),
                                                 "vertices": len(obj.data.vertices)}
    return report


if __name__ == "__main__":
    h.run(main)

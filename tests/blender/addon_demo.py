"""The product demo inside headless Blender: install the add-on zip, start the backend from its panel, Generate a
prompt with streaming through the add-on's real operators and timer callback, then save a .blend and render a PNG.

    $TBSD_BLENDER_PYTHON tests/blender/addon_demo.py ZIP BACKEND_PYTHON REPO OUT_DIR [PROMPT] [SETTINGS_JSON]

Progress goes to stderr as it streams; the last stdout line is JSON with the paths (demo.blend, demo.png) and
the job's figures. Blender's user folder is OUT_DIR/blender_user, so the real Blender configuration is untouched.
Meant to be called by `python build.py demo` (after `build_addon()`), which prints where the files are.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time

OUT = os.path.abspath(sys.argv[4]) if len(sys.argv) > 4 else os.path.abspath("demo_out")
# Before bpy is imported (by the harness): Blender reads its user folder once, at start-up.
os.environ.setdefault("BLENDER_USER_RESOURCES", os.path.join(OUT, "blender_user"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import addon_harness as h  # noqa: E402

import bpy  # noqa: E402
import mathutils  # noqa: E402

PROMPT = "a red cube"
# Sized for a 2-core CPU: a few minutes of NeRF training on the draft preset, two meshes streamed on the way.
SETTINGS = {"quality": "draft", "representation": "nerf", "steps": 300, "preview_every": 50}
RENDER_SIZE = 512


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(prompt: str, settings: dict, backend_python: str, repo: str, results: str) -> dict:
    conn = h.submodule("connection")
    prefs = bpy.context.preferences.addons[h.MODULE].preferences
    prefs.address = f"tcp://127.0.0.1:{free_port()}"
    prefs.python, prefs.arguments = backend_python, "-m backend serve --device auto"
    prefs.working_dir, prefs.results_dir = repo, results
    props = bpy.context.scene.tbsd
    props.quality = settings.get("quality", "draft")
    for name, value in settings.items():
        setattr(props, name, value)
    props.prompt = prompt
    props.stream_meshes = 1
    props.preview_size = 64
    state = bpy.context.window_manager.tbsd_state

    def tick_until(done, timeout: float, what: str) -> None:
        t0, last = time.monotonic(), ""
        while not done():
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{what}: no result after {timeout:.0f} s ({state.job_state}, {state.last_error})")
            conn._tick()  # what bpy.app.timers calls in an interactive Blender
            line = (f"  {state.job_state} step {state.step}/{state.steps}  ETA {state.eta_s:.0f} s  "
                    f"meshes {state.meshes_received}  previews {state.previews_received}")
            if line != last and (state.step % 10 == 0 or state.job_state != "running"):
                log(line)
                last = line
            time.sleep(0.05)

    log(f"starting the backend: {backend_python} {prefs.arguments}")
    if bpy.ops.tbsd.backend_start() != {"FINISHED"}:
        raise RuntimeError(state.last_error)
    tick_until(lambda: state.connection == "connected" or state.connection == "lost", 300, "connecting")
    if state.connection != "connected":
        raise RuntimeError(state.last_error)
    log(f"backend: device {state.device} {state.gpu}, model {state.model}")
    t0 = time.monotonic()
    bpy.ops.tbsd.generate()
    tick_until(lambda: state.job_state in ("done", "failed", "cancelled", "lost"), 1500, "the job")
    if state.job_state != "done":
        raise RuntimeError(f"the job ended {state.job_state}: {state.last_error}")
    out = {"job": state.job_id, "object": state.object_name, "seconds": round(time.monotonic() - t0, 1),
           "meshes_received": state.meshes_received, "previews_received": state.previews_received,
           "device": state.device}
    bpy.ops.tbsd.backend_stop()
    return out


def stage(obj) -> None:
    """Camera, light and a floor around ``obj``, rendered by Cycles on the CPU (no GPU or display needed)."""
    scene = bpy.context.scene
    corners = [obj.matrix_world @ v.co for v in obj.data.vertices]
    lo = [min(c[i] for c in corners) for i in range(3)]
    hi = [max(c[i] for c in corners) for i in range(3)]
    centre = [(a + b) / 2 for a, b in zip(lo, hi)]
    radius = max(max(b - a for a, b in zip(lo, hi)) / 2, 0.1) * math.sqrt(3)

    cam_data = bpy.data.cameras.new("Demo camera")
    cam_data.lens = 50
    cam = bpy.data.objects.new("Demo camera", cam_data)
    scene.collection.objects.link(cam)
    distance = radius / math.tan(cam_data.angle / 2) * 1.15
    az, el = math.radians(35), math.radians(25)
    cam.location = (centre[0] + distance * math.cos(el) * math.sin(az),
                    centre[1] - distance * math.cos(el) * math.cos(az),
                    centre[2] + distance * math.sin(el))
    direction = mathutils.Vector(centre) - cam.location
    cam.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
    scene.camera = cam

    sun_data = bpy.data.lights.new("Demo sun", "SUN")
    sun_data.energy = 3.0
    sun = bpy.data.objects.new("Demo sun", sun_data)
    sun.rotation_euler = (math.radians(40), 0.0, math.radians(30))
    scene.collection.objects.link(sun)

    bpy.ops.mesh.primitive_plane_add(size=radius * 12, location=(centre[0], centre[1], lo[2]))
    floor = bpy.context.active_object
    floor.name = "Demo floor"
    floor_mat = bpy.data.materials.new("Demo floor")
    floor_mat.diffuse_color = (0.6, 0.6, 0.6, 1.0)
    floor.data.materials.append(floor_mat)

    world = scene.world or bpy.data.worlds.new("Demo world")
    scene.world = world
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.35, 0.38, 0.42, 1.0)
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.8

    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 32
    scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = RENDER_SIZE
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"


def frame_box(obj) -> list[float]:
    """Where the object lies in the rendered image: [x0, y0, x1, y1] in pixels, y down (as the PNG's rows)."""
    from bpy_extras.object_utils import world_to_camera_view

    scene = bpy.context.scene
    pts = [world_to_camera_view(scene, scene.camera, obj.matrix_world @ v.co) for v in obj.data.vertices]
    xs, ys = [p.x * RENDER_SIZE for p in pts], [(1.0 - p.y) * RENDER_SIZE for p in pts]
    return [min(xs), min(ys), max(xs), max(ys)]


def main(argv: list[str]) -> dict:
    zip_path, backend_python, repo = argv[:3]
    prompt = argv[4] if len(argv) > 4 else PROMPT
    settings = {**SETTINGS, **(json.loads(argv[5]) if len(argv) > 5 else {})}
    os.makedirs(OUT, exist_ok=True)
    bpy.ops.wm.read_factory_settings(use_empty=True)  # an empty scene: nothing but what the demo makes
    h.install(zip_path)
    job = run_job(prompt, settings, backend_python, repo, os.path.join(OUT, "results"))
    obj = bpy.data.objects[job["object"]]
    job.update(vertices=len(obj.data.vertices), faces=len(obj.data.polygons))
    stage(obj)
    blend = os.path.join(OUT, "demo.blend")
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    png = os.path.join(OUT, "demo.png")
    log("rendering with Cycles on the CPU ...")
    t0 = time.monotonic()
    bpy.context.scene.render.filepath = png
    bpy.ops.render.render(write_still=True)
    job["render_seconds"] = round(time.monotonic() - t0, 1)
    job["frame_box"] = frame_box(obj)
    log(f"saved {blend}\nrendered {png}")
    return {"prompt": prompt, "blend": blend, "png": png, **job}


if __name__ == "__main__":
    h.run(main)

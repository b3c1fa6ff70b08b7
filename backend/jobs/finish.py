"""A job's end: trained representation -> textured mesh on disk, then the record.

`finish_job` extracts, bakes and writes ``mesh.glb``, ``mesh.obj`` (+ .mtl + texture PNG), ``mesh.ply`` and
``preview.png`` (turntable strip), then last ``job.json``; the runner (backend/jobs/runner.py) saved
``checkpoint.pt`` before it, so a job killed here is finished from that checkpoint by re-running only this.
Every file is written under a temporary name, fsynced and renamed (backend/files.py), and job.json is
published last: a job.json that says ``finished`` means every file it lists is complete on disk.
`export_result` also serves intermediate meshes; both hand back the GLB's arrays for the wire.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from backend import records
from backend.export import FORMATS, export_mesh, extract_mesh
from backend.export.pipeline import StageClock
from backend.export.field import DEFAULT_BOUND
from backend.files import publish_folder, remove_leftovers
from backend.images import save_png
from backend.records import CHECKPOINT_FILE
from backend.scene.cameras import eval_views
from backend.train import Trainer

# Renders used to choose the marching-cubes level: the eval turntable plus views from above and below,
# so concavities seen only from one side still constrain the level.
LEVEL_VIEWS = 8
LEVEL_RESOLUTION = 64


def _field(fn: Any) -> Any:
    def call(*arrays: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return fn(*arrays)

    return call


def extract_scene(trainer: Trainer, mesh_resolution: int | None = None) -> tuple[Any, dict[str, Any]]:
    """The trainer's current scene as a cleaned, smoothed, decimated mesh and the extraction's figures (with
    ``seconds`` per stage)."""
    s = trainer.settings
    scene = trainer.scene
    scene.eval()
    clock = StageClock(trainer.device)
    views = eval_views(LEVEL_VIEWS).to(trainer.device)
    opacity = trainer.render_eval(LEVEL_VIEWS, LEVEL_RESOLUTION, "albedo").opacity
    clock.mark("level_render")
    resolution = mesh_resolution or s["mesh_resolution"]
    with torch.no_grad():
        grid = scene.density_grid(resolution, DEFAULT_BOUND)  # on the scene's device, where extraction keeps it
    if grid is not None:
        clock.mark("grid")
    mesh, extract_figures = extract_mesh(
        _field(scene.density), views, opacity, resolution=resolution,
        target_faces=s["decimate_faces"] or None, device=trainer.device, smooth_iterations=s["mesh_smooth_iterations"],
        grid=grid, clock=clock,
    )
    return mesh, extract_figures


def export_result(trainer: Trainer, out_dir: Path, formats: tuple[str, ...] = FORMATS,
                  stem: str = "mesh", mesh_resolution: int | None = None,
                  texture_size: int | None = None) -> dict[str, Any]:
    """Extract, bake and write the trainer's current scene; returns figures, file paths and, when a GLB was
    written, ``export["arrays"]``: its mesh as wire arrays."""
    t0 = time.perf_counter()
    mesh, extract_figures = extract_scene(trainer, mesh_resolution)
    t1 = time.perf_counter()
    export_figures = export_mesh(out_dir, mesh, _field(trainer.scene.surface_albedo),
                                 texture_size=texture_size or trainer.settings["texture_size"], formats=formats,
                                 stem=stem,
                                 device=trainer.device, wire_arrays=True)
    t2 = time.perf_counter()
    return {"mesh": mesh, "extract": extract_figures, "export": export_figures,
            "seconds": {"extract": t1 - t0, "export": t2 - t1}}


def procedural_figures(prompt: str, trainer: Trainer, mesh: Any, resolution: int = 64) -> dict[str, Any]:
    """Voxel IoU of the mesh with the true shape and the mean surface colour's error. The mesh (what the artist
    gets) is voxelised by ray parity, so holes and inner shells count. A prompt naming one object is measured
    against it; one naming many (no colour, or no shape) against the object the mesh is nearest (``landed``), or,
    for an image-prompt job, the object its reference selects (``reference_mode``, ``in_reference_mode``)."""
    from backend.export import vertex_normals
    from backend.metrics import mesh_occupancy, nearest_colour, shape_ious, voxel_iou
    from backend.priors.procedural import world

    meaning = world.parse_prompt(prompt)
    single = len(meaning.shapes) == 1 and len(meaning.colours) == 1
    mode = reference_mode(trainer) if trainer.reference is not None else None
    axis = torch.linspace(-DEFAULT_BOUND, DEFAULT_BOUND, resolution)
    occupied = mesh_occupancy(np.asarray(mesh.vertices), np.asarray(mesh.faces), axis.numpy())
    with torch.no_grad():
        colours = _field(trainer.scene.surface_albedo)(
            torch.as_tensor(mesh.vertices, dtype=torch.float32, device=trainer.device),
            torch.as_tensor(vertex_normals(mesh), dtype=torch.float32, device=trainer.device)).cpu().numpy()
    mean = colours.mean(0)
    nearest = nearest_colour(mean)
    if single:
        shape, colour = meaning.shapes[0], meaning.colours[0]
        out: dict[str, Any] = {}
    else:
        # A prompt that names many objects is measured against the one the result is (``landed``), or, with a
        # reference image, the one the reference selects (its ``mode``): did the run make that one?
        ious = shape_ious(occupied, axis.numpy())
        landed_shape = max(ious, key=ious.get)
        out = {"landed": f"a {nearest} {landed_shape}", "shape_ious": {k: round(v, 4) for k, v in ious.items()}}
        shape, colour = landed_shape, nearest
        if mode is not None:
            shape, colour = mode.shapes[0], mode.colours[0]
            out["reference_mode"] = f"a {colour} {shape}"
            out["in_reference_mode"] = out["landed"] == out["reference_mode"]
    truth = (world.sdf(shape, torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)) < 0)
    truth = truth.numpy().reshape((resolution,) * 3)
    true_colour = np.array(world.COLOURS[colour])
    return {"voxel_iou": voxel_iou(occupied, truth), "mean_colour": mean.tolist(),
            "colour_error": float(np.linalg.norm(mean - true_colour)), "nearest_colour": nearest, **out}


def reference_mode(trainer: Trainer) -> Any:
    """The object (a ``PromptMeaning`` of one shape and colour) an image-prompt job's reference selects on the
    procedural prior: the component of the prompt's mixture with the largest weight; None on another prior."""
    from backend.priors.procedural import world

    mode_of = getattr(trainer.prior, "reference_mode", None)
    if mode_of is None or trainer.prompts.reference is None:
        return None
    best = mode_of(trainer.prompt, trainer.prompts.reference)
    if best is None:
        return None
    return world.PromptMeaning((best.shape,), (best.colour,), (None,))


@dataclass
class Finished:
    """A finished job: its record (as written) and its final mesh as the wire sends it (the GLB's arrays)."""

    record: dict[str, Any]
    arrays: dict[str, np.ndarray]


# (trainer, folder) -> export_result's dict: what a job's end writes (a generated scene: extract, bake and write;
# a textured mesh: bake into the user's mesh, backend/jobs/texture.py; a generated scene with its texture refined:
# backend/jobs/texture_refine.py, whose dict also holds the stage's ``trainer`` and a ``record`` entry)
Exporter = Callable[[Trainer, Path], dict[str, Any]]
# (prompt, trainer, the exporter's dict) -> the procedural prior's figures for the record
Figures = Callable[[str, Trainer, dict[str, Any]], dict[str, Any]]


def _generated_figures(prompt: str, trainer: Trainer, result: dict[str, Any]) -> dict[str, Any]:
    return procedural_figures(prompt, trainer, result["mesh"])


def finish_job(trainer: Trainer, out_dir: Path, record: Mapping[str, Any] | None = None,
               checkpoint: bool = True, export: Exporter = export_result,
               figures: Figures = _generated_figures) -> Finished:
    """The end of a job: extract, bake and write the meshes and the preview, then job.json.

    ``record`` holds what the caller knows (prompt, owner, timings of loading and training, ...); the figures
    of the export are added and the whole is written once, atomically, after every file it names.
    ``checkpoint``: the caller saved ``checkpoint.pt`` in ``out_dir`` at this step, and the record lists it.
    ``export`` writes the meshes into a folder (default: extract from the trained field) and ``figures`` measures
    them when the prior is the procedural one.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    t0 = time.perf_counter()
    result = export(trainer, staging)
    # The scene the files show: a texture refinement's own (its textured mesh), else the trained one.
    shown: Trainer = result.get("trainer", trainer)
    t1 = time.perf_counter()
    # Twice the training resolution, at most 128 px: a draft run on a CPU trained at 32 px gets a 64 px strip
    # (a NeRF's 8 views at 128 px cost 96 s on one CPU thread, more than a third of its training).
    save_png(shown.preview(8, min(128, 2 * trainer.settings["render_res_end"])), staging / "preview.png")
    t2 = time.perf_counter()
    files = publish_folder(staging, out_dir)
    if checkpoint:
        files.append(CHECKPOINT_FILE)
    remove_leftovers(out_dir)
    device = trainer.device
    export = dict(result["export"])
    arrays = export.pop("arrays")
    out: dict[str, Any] = {
        **records.finished_record(record, prompt=trainer.prompt, settings=trainer.settings, device=str(device),
                                  steps_done=trainer.step, total=trainer.total),
        "mesh": {k: v for k, v in result["extract"].items() if k != "seconds"},
        "extract_seconds": result["extract"].get("seconds", {}),
        "files": {k: Path(v).name for k, v in export.get("files", {}).items()},
        "all_files": sorted(files),
        "export": {k: v for k, v in export.items() if k != "files"},
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        **result.get("record", {}),  # what an exporter adds to the record (a texture refinement's account)
    }
    out["seconds"] = {**dict(out.get("seconds") or {}), **result["seconds"], "preview": t2 - t1,
                      "finish": t2 - t0, "train_phases": dict(trainer.timings)}
    if device.type == "cuda":
        out["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    if trainer.prior.name == "procedural":
        out["figures"] = figures(trainer.prompt, shown, result)
    records.write_record(out_dir, out)
    return Finished(out, arrays)


__all__ = ["Finished", "export_result", "extract_scene", "finish_job", "procedural_figures"]

"""Texture refinement of a generated asset: CSD's second stage (after Magic3D), its appearance part.

After extraction, the extracted mesh (geometry fixed) is trained again by the job's method and prior, colour only,
at ``texture_refine_resolution`` for ``texture_refine_steps`` steps, and that colour is baked. It is a texture job
on the extracted mesh: a ``TexturedMesh`` (rasterised per view, a colour field looked up at the surface), the one
``Trainer`` loop, ``texture_export``. The runner (``JobRun.finish``) runs it between extraction and the files, with
the job's progress and preview sinks, so one job owns train -> extract -> refine -> export.

Choices:
- The colour field starts from the trained scene's surface colour (``warm_start``), not from grey: the stage refines
  the asset's appearance rather than texturing it anew, as Magic3D's fine stage starts from the coarse model.
- The stage's steps continue the run's count (step = the run's, total = the run's + N): step-fraction schedules
  (the t_max anneal, TBSD's factor, CSD's anneal) stand at their late values, where a refinement belongs (Magic3D's
  fine stage also draws t below 0.5), and a client's progress keeps rising.
- The UVs are unwrapped once before the stage: the bake of the unrefined colour (the record's ``figures_before``)
  and the written one share them, and the written vertices and faces are extraction's, split along xatlas's seams
  as every generated export is.
- A cancel asked during the stage is heard when it ends: the stage gets the progress and preview sinks only, since
  the trained scene is already checkpointed and a stopped stage would leave no files to finish with.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from backend.export import bake_texture, unwrap_uvs, vertex_normals
from backend.export.mesh import Mesh
from backend.export.meshfile import mesh_arrays
from backend.export.meshread import InputMesh
from backend.jobs.finish import extract_scene
from backend.jobs.texture import texture_export, texture_figures, texture_scene
from backend.priors.base import DiffusionPrior
from backend.scene.textured_mesh import TexturedMesh
from backend.train import Trainer, TrainEvents

# The warm start: a full-batch fit of the colour field to the trained scene's colour at area-uniform surface
# samples. On a draft red cube 100 Adam steps at 0.03 over 4,096 samples left a mean error of 0.0013 in 5 s on one
# CPU thread (300 steps at 0.01 over 20,000: 0.0005 in 52 s); job.json's ``warm_start_error`` reports each run's.
WARM_START_STEPS = 100
WARM_START_SAMPLES = 4096
WARM_START_LR = 0.03


def surface_samples(mesh: Mesh, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` area-uniform points on ``mesh`` and their interpolated unit vertex normals (float32, CPU)."""
    vertices = torch.as_tensor(mesh.vertices)
    faces = torch.as_tensor(mesh.faces, dtype=torch.long)
    normals = torch.as_tensor(vertex_normals(mesh), dtype=torch.float32)
    tri = vertices[faces]
    area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1)
    face = torch.multinomial(area, n, replacement=True, generator=generator)
    root, r2 = torch.rand(n, generator=generator).sqrt(), torch.rand(n, generator=generator)
    bary = torch.stack([1 - root, root * (1 - r2), root * r2], dim=-1)
    points = torch.einsum("nc,ncd->nd", bary, tri[face])
    return points, F.normalize(torch.einsum("nc,ncd->nd", bary, normals[faces[face]]), dim=-1)


def warm_start(scene: TexturedMesh, source: Trainer, generator: torch.Generator) -> float:
    """Fit ``scene``'s colour field to ``source``'s surface colour on the scene's mesh; the mean absolute error
    left (colour units)."""
    points, normals = (t.to(source.device) for t in surface_samples(scene.mesh, WARM_START_SAMPLES, generator))
    with torch.no_grad():
        target = source.scene.surface_albedo(points, normals)
    optimiser = torch.optim.Adam(scene.field.parameters(), lr=WARM_START_LR)
    for _ in range(WARM_START_STEPS):
        optimiser.zero_grad(set_to_none=True)
        F.mse_loss(scene.field(points), target).backward()
        optimiser.step()
    with torch.no_grad():
        return float((scene.field(points) - target).abs().mean())


def stage_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The stage's settings: the job's, rendering at the refinement's side, the mesh taken as it lies (it is in
    the cameras' frame already)."""
    side = settings["texture_refine_resolution"]
    return {**settings, "render_res_start": side, "render_res_end": side, "texture_fit": False}


def refined_export(trainer: Trainer, out_dir: Path, prior: DiffusionPrior, events: TrainEvents | None = None,
                   cadence: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Extract ``trainer``'s scene, refine its texture on the extracted mesh with ``prior`` (the job's model at
    the stage's side), bake and write it: ``export_result``'s keys, plus the stage's ``trainer`` (whose scene the
    files show) and ``record["texture_refine"]``: steps, side, seconds, the warm start's error and, on the
    procedural prior, ``mesh_figures`` of the bake before and after the stage."""
    s = trainer.settings
    t0 = time.perf_counter()
    extracted, extract_figures = extract_scene(trainer)
    t1 = time.perf_counter()
    mesh, uvs = unwrap_uvs(extracted, s["texture_size"])
    settings = stage_settings(s)
    scene = texture_scene(InputMesh(mesh, uvs), settings, prior, trainer.device, "extracted")
    generator = torch.Generator().manual_seed(s["seed"])
    warm_error = warm_start(scene, trainer, generator)
    t2 = time.perf_counter()
    before: dict[str, Any] = {}
    if prior.name == "procedural":  # figures exist only against the procedural world's truth
        with torch.no_grad():
            texture = bake_texture(mesh, uvs, trainer.scene.surface_albedo, s["texture_size"], device=trainer.device)
        before = texture_figures(trainer.prompt, trainer, {"export": {"arrays": mesh_arrays(mesh, uvs, texture)}})
    t3 = time.perf_counter()
    stage = Trainer(prior, trainer.prompt, settings, representation=scene, device=trainer.device,
                    cadence_overrides=cadence, reference=trainer.reference)
    stage.step, stage.total = trainer.step, trainer.step + s["texture_refine_steps"]
    stage.settings["steps"] = stage.total
    sinks = events or TrainEvents()
    stage.run(TrainEvents(on_progress=sinks.on_progress, on_preview=sinks.on_preview))
    t4 = time.perf_counter()
    result = texture_export(stage, out_dir)
    t5 = time.perf_counter()
    after = texture_figures(trainer.prompt, stage, result) if prior.name == "procedural" else {}
    account = {"steps": s["texture_refine_steps"], "resolution": min(settings["render_res_end"], prior.image_size),
               "warm_start_error": warm_error, "figures_before": before, "figures_after": after,
               "seconds": {"unwrap_and_warm_start": t2 - t1, "bake_before": t3 - t2, "train": t4 - t3}}
    return {"mesh": extracted, "extract": extract_figures, "export": result["export"], "trainer": stage,
            "seconds": {"extract": t1 - t0, "texture_refine": t4 - t1, "export": t5 - t4},
            "record": {"texture_refine": account}}


__all__ = ["refined_export", "stage_settings", "surface_samples", "warm_start"]

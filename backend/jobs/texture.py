"""A texture job's own pieces: its scene from the user's mesh, its export into that mesh, its figures.

The job itself runs through the one runner (``backend/jobs/runner.py``, ``JobPlan.mesh``) and the one ending
(``finish_job``, with ``texture_export`` and ``texture_figures`` in place of extraction): the training loop, the
preview, the staging folder and job.json are a generated job's. The scene carries its mesh, UVs and name, so a
texture job continued from its checkpoint (a refine, an edit by text) exports the same way; a generated asset's
texture refinement (``texture_refine.py``) bakes through ``texture_export`` too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import torch

from backend.export import FORMATS, export_mesh
from backend.export.meshread import InputMesh
from backend.priors.base import DiffusionPrior
from backend.scene.textured_mesh import TexturedMesh
from backend.train import Trainer


def texture_scene(source: InputMesh, settings: Mapping[str, Any], prior: DiffusionPrior, device: torch.device,
                  name: str) -> TexturedMesh:
    """The representation a texture job trains: the mesh with a fresh colour field (the run's seed)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings["seed"])
        return TexturedMesh.from_mesh(source.mesh, settings, prior.background, source.uvs, name).to(device)


def texture_export(trainer: Trainer, out_dir: Path, formats: tuple[str, ...] = FORMATS) -> dict[str, Any]:
    """Bake the trained colour into the scene's mesh (its UVs, else xatlas's) and write it; ``export_result``'s
    keys, with the input in ``extract`` (nothing is extracted: the mesh is the scene's)."""
    scene = trainer.scene
    assert isinstance(scene, TexturedMesh), "a texture job trains a TexturedMesh"
    scene.eval()
    t0 = time.perf_counter()

    def colour(points: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return scene.mesh_albedo(points, normals)

    figures = export_mesh(out_dir, scene.mesh, colour, texture_size=trainer.settings["texture_size"],
                          formats=formats, device=trainer.device, wire_arrays=True, uvs=scene.uvs)
    input_figures = {"source": scene.name, "vertices": scene.mesh.n_vertices, "faces": scene.mesh.n_faces,
                     "uvs": "mesh" if scene.uvs is not None else "unwrapped",
                     "fit_centre": list(scene.fit.centre), "fit_scale": scene.fit.scale}
    return {"mesh": scene.mesh, "extract": input_figures, "export": figures,
            "seconds": {"extract": 0.0, "export": time.perf_counter() - t0}}


def texture_figures(prompt: str, trainer: Trainer, result: dict[str, Any]) -> dict[str, Any]:
    """``metrics.mesh_figures`` of the written GLB when the prompt names one object (else none): its colour
    figures are the texture's; its shape figures say how near the user's mesh is to the named shape."""
    from backend.metrics import mesh_figures
    from backend.priors.procedural import world

    meaning = world.parse_prompt(prompt)
    arrays = result["export"].get("arrays")
    if arrays is None or len(meaning.shapes) != 1 or len(meaning.colours) != 1:
        return {}
    return mesh_figures(arrays, prompt)


__all__ = ["texture_export", "texture_figures", "texture_scene"]

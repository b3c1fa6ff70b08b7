"""A generated asset's texture refinement (CSD's second stage) and editing a textured mesh by text, on the
procedural prior at test size: the stage keeps the extracted geometry and changes only the texture, is off by
default, and a texture job's checkpoint is edited toward a new colour with its mesh unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from backend.export import marching_cubes
from backend.export.meshfile import read_glb
from backend.export.writers import write_ply
from backend.jobs.runner import JobPlan, run_job
from backend.priors.procedural import world
from backend.priors.procedural.prior import ProceduralPrior
from shared.settings import validate

TINY = {"quality": "draft", "representation": "gaussians", "gaussian_points": 300, "procedural_resolution": 16,
        "render_res_start": 16, "render_res_end": 16, "camera_bank_size": 8, "mesh_resolution": 32,
        "texture_size": 64, "preview_every": 0, "lr": 0.05, "steps": 60}
CPU = torch.device("cpu")


def _loader() -> tuple[dict[int, ProceduralPrior], object]:
    """A loader that keeps one procedural prior per side (the job's and the stage's) and the texts each prior call
    was asked for."""
    priors: dict[int, ProceduralPrior] = {}
    texts: set[str] = set()

    def load(model: str, side: int, ip_adapter: str = "") -> ProceduralPrior:
        if side not in priors:
            prior = ProceduralPrior(resolution=side)
            denoise = prior._denoise

            def spy(x_t, t, branch_texts, views, **images):
                texts.update(branch_texts)
                return denoise(x_t, t, branch_texts, views, **images)

            prior._denoise = spy
            priors[side] = prior
        return priors[side]

    load.texts = texts  # type: ignore[attr-defined]
    return priors, load


def _record(folder: Path) -> dict:
    return json.loads((folder / "job.json").read_text())


def _towards(start: str, end: str) -> torch.Tensor:
    return torch.tensor(world.COLOURS[end]) - torch.tensor(world.COLOURS[start])


def test_texture_refinement_keeps_the_extracted_geometry_and_changes_only_the_texture(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    priors, load = _loader()
    assert validate({})["texture_refine_steps"] == 0  # off by default
    red, off, on = tmp_path / "red", tmp_path / "off", tmp_path / "on"
    for folder in (red, off, on):
        folder.mkdir()
    run_job(JobPlan("a red cube", validate(TINY), red), CPU, load)
    assert "texture_refine" not in _record(red)
    # The same trained scene exported again under "a green cube" with no more steps: off, nothing but the export
    # runs, so the files are the source's; on, the stage alone can turn the texture green.
    plan = dict(source=red / "checkpoint.pt", more_steps=0)
    run_job(JobPlan("a green cube", validate(TINY), off, overrides={}, **plan), CPU, load)
    run_job(JobPlan("a green cube", validate(TINY), on, **plan,
                    overrides={"texture_refine_steps": 40, "texture_refine_resolution": 24}), CPU, load)
    source, unrefined, refined = (read_glb(folder / "mesh.glb") for folder in (red, off, on))
    assert "texture_refine" not in _record(off)
    assert np.array_equal(unrefined["texture"], source["texture"])
    for key in ("vertices", "faces", "uvs"):
        assert np.array_equal(refined[key], unrefined[key]), key
    assert 24 in priors  # the stage ran on a prior at its own side
    account = _record(on)["texture_refine"]
    assert account["steps"] == 40 and account["resolution"] == 24
    before = torch.tensor(account["figures_before"]["mean_albedo"])
    after = torch.tensor(account["figures_after"]["mean_albedo"])
    assert torch.allclose(before, torch.tensor(_record(off)["figures"]["mean_colour"]), atol=0.05)
    towards = _towards("red", "green")
    assert (after - before) @ towards > 0.5 * towards.norm() ** 2, (before, after)
    assert account["figures_after"]["voxel_iou"] == account["figures_before"]["voxel_iou"]
    assert _record(on)["figures"]["nearest_colour"] == "green"  # the job's figures measure the refined texture


def test_a_texture_job_is_edited_by_text_from_its_checkpoint(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    _, load = _loader()
    axis = torch.linspace(-0.5, 0.5, 24)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    cube = marching_cubes((-world.sdf("cube", points)).reshape(24, 24, 24).numpy(), 0.0, 0.5)
    write_ply(tmp_path / "cube.ply", cube)
    blue, edit = tmp_path / "blue", tmp_path / "edit"
    blue.mkdir()
    edit.mkdir()
    settings = validate({**TINY, "steps": 60, "camera_bank_size": 6})
    run_job(JobPlan("a blue cube", settings, blue, mesh=tmp_path / "cube.ply"), CPU, load)
    load.texts.clear()  # type: ignore[attr-defined]
    run_job(JobPlan("a red cube", settings, edit, source=blue / "checkpoint.pt", overrides={"edit_prompt": "blue"},
                    more_steps=40), CPU, load)
    record = _record(edit)
    assert record["command"] == "texture" and record["mesh_source"] == "cube.ply" and record["steps_done"] == 100
    assert load.texts == {"a red cube", "", "blue"}  # type: ignore[attr-defined]  (eq. 11's branches)
    source, edited = read_glb(blue / "mesh.glb"), read_glb(edit / "mesh.glb")
    # Geometry unchanged: the input's faces, corner for corner (an unwrap splits vertices along seams).
    for glb in (source, edited):
        assert np.array_equal(glb["vertices"][glb["faces"]], cube.vertices[cube.faces])
    before = torch.tensor(_record(blue)["figures"]["mean_albedo"])
    after = torch.tensor(record["figures"]["mean_albedo"])
    towards = _towards("blue", "red")
    assert (after - before) @ towards > 0.5 * towards.norm() ** 2, (before, after)

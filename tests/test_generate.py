"""`python -m backend generate` end to end on the CPU at toy sizes, and checkpoint resume.

These check the plumbing (files, job record, validity of the GLB in Khronos' validator and in Blender's own
importer, resume), not the quality of the result: that needs a full-length run (docs/METHODS.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend.priors.procedural.prior import ProceduralPrior
from backend.train import Trainer
from shared.settings import validate
import blender_support  # tests/ helpers (pytest puts tests/ on sys.path)
import gltf_validator

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--quality", "draft", "--steps", "24", "--camera-bank-size", "6", "--mesh-resolution", "40",
       "--texture-size", "128", "--quiet"]


def _generate(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend", "generate", "a red cube", "--out", str(out), *TOY, *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module", params=["nerf", "gaussians"])
def generated(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    proc = _generate(out, "--representation", request.param, "--checkpoint-every", "12")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return request.param, out


def test_writes_every_file_and_a_complete_record(generated):
    representation, out = generated
    for name in ("mesh.glb", "mesh.obj", "mesh.mtl", "mesh.ply", "preview.png", "job.json", "checkpoint.pt"):
        assert (out / name).stat().st_size > 0, name
    record = json.loads((out / "job.json").read_text())
    assert record["status"] == "finished" and record["steps_done"] == 24
    assert record["settings"]["representation"] == representation
    assert record["settings"]["steps"] == 24 and record["settings"]["quality"] == "draft"
    for phase in ("train", "extract", "export", "preview"):
        assert record["seconds"][phase] > 0, phase
    assert record["mesh"]["faces"] > 0 and record["mesh"]["level_source"] == "renders"
    assert 0.0 <= record["figures"]["voxel_iou"] <= 1.0
    assert len(record["figures"]["mean_colour"]) == 3


def test_glb_passes_the_khronos_validator(generated):
    _, out = generated
    (report,) = gltf_validator.validate(out / "mesh.glb")
    assert report["numErrors"] == 0, gltf_validator.format_messages(report)


def test_glb_imports_in_blender_with_its_texture(generated):
    _, out = generated
    result = blender_support.import_in_blender(out / "mesh.glb")
    meshes = [o for o in result["objects"] if o["type"] == "MESH"]
    assert len(meshes) == 1
    (material,) = meshes[0]["materials"]
    assert material["base_color_image_texture_direct"], material
    assert material["image"]["has_pixels"] and material["image"]["size"] == [128, 128]


def test_bad_setting_is_refused_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "backend", "generate", "a red cube", "--out", str(tmp_path / "x"),
                           "--representation", "voxels", "--quiet"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "voxels" in proc.stderr and "nerf" in proc.stderr and "gaussians" in proc.stderr
    assert not (tmp_path / "x" / "job.json").exists()


@pytest.fixture
def one_thread():
    # Multi-threaded scatter-adds sum in varying order; one thread makes the comparison exact.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_resumed_nerf_run_matches_an_uninterrupted_one(tmp_path, one_thread):
    settings = validate({"quality": "draft", "steps": 12, "camera_bank_size": 4, "representation": "nerf"})
    prior = ProceduralPrior(resolution=32)
    straight = Trainer(prior, "a red cube", settings)
    straight.run()
    first = Trainer(prior, "a red cube", settings)
    first.run(until=6)
    first.save_checkpoint(tmp_path / "checkpoint.pt")
    # Plain tensors and containers only: loadable with weights_only=True (a planted pickle runs no code).
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["total"] == 12
    resumed = Trainer.from_checkpoint(tmp_path / "checkpoint.pt", prior)
    assert (resumed.step, resumed.total) == (6, 12)
    resumed.run()
    resumed.extend(3)  # refine and `--resume --steps 3`: three more steps, schedules see one 15-step run
    assert (resumed.total, resumed.settings["steps"]) == (15, 15)
    for (name, a), (_, b) in zip(straight.scene.state_dict().items(), resumed.scene.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    assert not torch.allclose(straight.scene.encoding.table, Trainer(prior, "a red cube", settings).scene.encoding.table)


@pytest.mark.parametrize("representation", ["nerf", "gaussians"])
def test_generate_runs_on_a_stable_diffusion_pipeline(tmp_path, representation):
    """The SD path end to end in 3D (VAE encode of renders, text prompts with the target-negative prompt, view
    suffixes, mesh export), on a tiny random diffusers pipeline saved to disk and loaded by the product."""
    from backend.priors.stable_diffusion import save_random_pipeline

    model = save_random_pipeline(tmp_path / "tiny-sd", "tiny", seed=0)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "backend", "generate", "a red cube", "--out", str(out), "--model", str(model),
         "--representation", representation, "--quality", "draft", "--steps", "4", "--render-res-start", "32",
         "--render-res-end", "32", "--mesh-resolution", "32", "--texture-size", "64", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "job.json").read_text())
    assert record["status"] == "finished" and record["steps_done"] == 4
    assert record["settings"]["model"] == str(model)
    assert (out / "mesh.glb").stat().st_size > 0
    assert "figures" not in record  # no ground truth outside the procedural world


def test_a_cpu_run_without_a_preset_takes_draft_and_says_so(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "backend", "generate", "a red cube", "--out", str(tmp_path),
                           "--device", "cpu", "--representation", "gaussians", "--steps", "3", "--camera-bank-size",
                           "2", "--mesh-resolution", "32", "--texture-size", "64", "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no GPU: using --quality draft" in proc.stderr
    settings = json.loads((tmp_path / "job.json").read_text())["settings"]
    assert settings["quality"] == "draft" and settings["render_res_end"] == 32  # the preset's values, not standard's


def test_renders_are_never_larger_than_the_prior_consumes():
    from backend.train import render_resolution

    settings = validate({})  # standard: 64 px, then 256 px from half the run
    assert render_resolution(0.9, settings) == 256
    assert render_resolution(0.9, settings, prior_resolution=64) == 64  # the procedural prior works at 64 px
    assert render_resolution(0.1, settings, prior_resolution=64) == 64
    assert render_resolution(0.9, settings, prior_resolution=512) == 256  # Stable Diffusion takes 512 px

"""`python build.py setup --gpu`: its plan on Linux and Windows, its refusal on a machine without an NVIDIA GPU
(this one and CI's), the GPU check's refusal when torch sees no CUDA, and the record the add-on starts from.
What needs a GPU (the CUDA torch, gsplat's compile) is documented in the README's "On your GPU"."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("tbsd_build_gpu", REPO / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)


@pytest.mark.parametrize("system", ["Linux", "Windows"])
def test_plan_installs_cuda_torch_the_cuda_extras_compiles_gsplat_and_checks(system):
    plan = build.gpu_plan(system, "some/model", Path("/x/.venv-gpu"))
    steps = dict(plan)
    assert [what.split(" ")[0] for what, _ in plan] == ["create", "install", "install", "compile", "check"]
    py = "/x/.venv-gpu/" + ("Scripts/python.exe" if system == "Windows" else "bin/python")
    assert all(cmd[0] == py for _, cmd in plan[1:])
    torch = steps["install the CUDA build of torch"]
    assert build.TORCH in torch
    # PyPI's Linux torch is the CUDA build; Windows needs PyTorch's CUDA index.
    assert (("--index-url" in torch) and build.TORCH_CUDA_INDEX in torch) == (system == "Windows")
    project = steps["install the project with its CUDA extras (gsplat)"]
    assert f"{REPO}[cuda]" in project and "-c" in project
    compile_step = next(cmd for what, cmd in plan if what.startswith("compile"))
    assert "from gsplat.cuda._backend import _C" in compile_step[-1]
    assert plan[-1][1][-3:] == ["-m", "backend.gpu_check", "some/model"]


def test_cuda_extras_are_in_pyproject_and_gsplat_is_one():
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("gsplat") for r in extras["cuda"])


def test_dry_run_prints_every_step_and_changes_nothing(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "build.py"), "setup", "--gpu", "--dry-run"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [line.split(".")[0] for line in proc.stdout.splitlines() if line[:1].isdigit()] == list("123456")
    assert "backend.gpu_check procedural" in proc.stdout


def test_setup_gpu_stops_with_why_on_a_machine_without_an_nvidia_gpu(tmp_path):
    if build.detect_gpus():
        pytest.skip("this machine has an NVIDIA GPU; the refusal is for machines without one")
    existed = build.GPU_VENV.exists()
    config = tmp_path / "backend.json"
    proc = subprocess.run([sys.executable, str(REPO / "build.py"), "setup", "--gpu"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "TBSD_STUDIO_CONFIG": str(config)})
    assert proc.returncode == 1
    assert "no NVIDIA GPU found" in proc.stderr and "python build.py setup" in proc.stderr
    assert build.GPU_VENV.exists() == existed and not config.exists()  # nothing made, nothing recorded


def test_gpu_check_says_torch_sees_no_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("torch sees a GPU here")
    proc = subprocess.run([sys.executable, "-m", "backend.gpu_check", "procedural"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "sees no CUDA GPU" in proc.stderr


def test_the_record_round_trips_and_a_broken_one_reads_as_none(tmp_path, monkeypatch):
    from shared import backend_config

    monkeypatch.setenv(backend_config.ENV_VAR, str(tmp_path / "sub" / "backend.json"))
    assert backend_config.read() is None
    path = backend_config.write("/v/bin/python", "/repo", "-m backend serve --device cuda")
    assert json.loads(path.read_text()) == {"python": "/v/bin/python", "working_dir": "/repo",
                                            "arguments": "-m backend serve --device cuda"}
    assert backend_config.read() == {"python": "/v/bin/python", "working_dir": "/repo",
                                     "arguments": "-m backend serve --device cuda"}
    path.write_text("{not json")
    assert backend_config.read() is None

"""Texture refinement on vs off, and editing a textured mesh by text (issue 25, items 4-5), through the CLI.

Refinement: each prompt x representation runs once with the stage on (``--texture-refine-steps``); its job.json
holds ``mesh_figures`` of the bake without the stage (``figures_before``: what the job writes with the stage off,
the same mesh, UVs and bake) and with it (``figures_after``), so one run gives both sides.

Edit of a textured mesh: the true cube (marching cubes of the world's SDF) textured "a blue cube" with a
checkpoint, then ``generate --resume`` toward "a red cube" removing "blue"; the figures of both GLBs.

    python bench/texture_refine_study.py --steps 300 --refine-steps 100 --refine-resolution 64 \
        --out bench/results/texture_refine/study.json

One thread per run, ``--workers`` runs at a time, the procedural prior, the draft preset, seed 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.export import marching_cubes  # noqa: E402
from backend.export.writers import write_ply  # noqa: E402
from backend.priors.procedural import world  # noqa: E402

PROMPTS = ("a red cube", "a blue sphere", "a pink torus")
REPRESENTATIONS = ("gaussians", "nerf")
KEPT = ("voxel_iou", "colour_error_mean", "colour_error_median", "wrong_colour_share", "nearest_colour",
        "mean_albedo")


def _cli(args: list[str], log: Path) -> float:
    """Run ``python -m backend ARGS`` on one thread; its seconds. Output goes to ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    with log.open("w") as out:
        subprocess.run([sys.executable, "-m", "backend", *args, "--device", "cpu", "--quiet"], cwd=ROOT, env=env,
                       stdout=out, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - t0


def _kept(figures: dict) -> dict:
    return {k: figures[k] for k in KEPT if k in figures}


def refine_case(root: Path, prompt: str, representation: str, a: argparse.Namespace) -> dict:
    out = root / f"{representation}_{prompt.replace(' ', '_')}"
    seconds = _cli(["generate", prompt, "--out", str(out), "--quality", "draft", "--representation", representation,
                    "--steps", str(a.steps), "--texture-refine-steps", str(a.refine_steps),
                    "--texture-refine-resolution", str(a.refine_resolution)], root / f"{out.name}.log")
    record = json.loads((out / "job.json").read_text())
    stage = record["texture_refine"]
    return {"prompt": prompt, "representation": representation, "seconds": seconds,
            "stage_seconds": record["seconds"]["texture_refine"], "stage": {k: stage[k] for k in (
                "steps", "resolution", "warm_start_error", "seconds")},
            "off": _kept(stage["figures_before"]), "on": _kept(stage["figures_after"])}


def edit_case(root: Path, a: argparse.Namespace) -> dict:
    axis = torch.linspace(-0.5, 0.5, 48)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    write_ply(root / "true_cube.ply", marching_cubes((-world.sdf("cube", points)).reshape(48, 48, 48).numpy(),
                                                     0.0, 0.5))
    blue, red = root / "texture_blue_cube", root / "texture_blue_cube_edit_red"
    t_blue = _cli(["texture", str(root / "true_cube.ply"), "a blue cube", "--out", str(blue), "--quality", "draft",
                   "--steps", str(a.texture_steps), "--checkpoint-every", str(a.texture_steps)], root / "blue.log")
    t_red = _cli(["generate", "a red cube", "--resume", str(blue / "checkpoint.pt"), "--edit-prompt", "blue",
                  "--steps", str(a.edit_steps), "--out", str(red)], root / "edit.log")
    from backend.export.meshfile import read_glb
    from backend.metrics import mesh_figures

    source, edited = read_glb(blue / "mesh.glb"), read_glb(red / "mesh.glb")
    same = bool((source["vertices"][source["faces"]] == edited["vertices"][edited["faces"]]).all())
    return {"texture": {"prompt": "a blue cube", "steps": a.texture_steps, "seconds": t_blue,
                        "as_blue": _kept(mesh_figures(source, "a blue cube")),
                        "as_red": _kept(mesh_figures(source, "a red cube"))},
            "edit": {"prompt": "a red cube", "edit_prompt": "blue", "steps": a.edit_steps, "seconds": t_red,
                     "as_red": _kept(mesh_figures(edited, "a red cube")),
                     "as_blue": _kept(mesh_figures(edited, "a blue cube"))},
            "geometry_unchanged": same}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="Training steps of each generated run.")
    p.add_argument("--refine-steps", type=int, default=100)
    p.add_argument("--refine-resolution", type=int, default=64)
    p.add_argument("--texture-steps", type=int, default=200, help="Steps of the blue cube's texture job.")
    p.add_argument("--edit-steps", type=int, default=100)
    p.add_argument("--prompts", default=",".join(PROMPTS))
    p.add_argument("--representations", default=",".join(REPRESENTATIONS))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("/tmp/texture_refine_study"))
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/texture_refine/study.json")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    cases = [(pr, r) for r in a.representations.split(",") for pr in a.prompts.split(",")]
    with ThreadPoolExecutor(a.workers) as pool:
        edit = pool.submit(edit_case, a.work, a)
        refine = list(pool.map(lambda c: refine_case(a.work, c[0], c[1], a), cases))
        result = {"command": " ".join(sys.argv), "settings": {k: v for k, v in vars(a).items()
                                                              if k not in ("work", "out")},
                  "refine": refine, "edit_textured_mesh": edit.result()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()

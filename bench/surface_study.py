"""What makes an exported mesh lumpy: kept runs re-extracted with other grid resolutions, levels and smoothing passes,
each mesh measured against the true object (normal figures and voxel IoU; no UV unwrap or bake, so it is quick).

    python bench/surface_study.py --runs DIR --out study.json   # DIR: bench/quality.py --keep DIR

Per run: ``res{R}`` is the extraction at grid resolution R with the render-derived level (res64 at a draft run's
settings is its exported mesh before smoothing); ``res{R}_smooth{N}`` the same after N Taubin passes;
``res64_level x{k}`` the level scaled by k. bench/rebake.py measures the product's own export (baked GLB) instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.export.field import DEFAULT_BOUND  # noqa: E402
from backend.export.mesh import Mesh  # noqa: E402
from backend.export.pipeline import extract_mesh  # noqa: E402
from backend.export.smooth import smooth_mesh  # noqa: E402
from backend.jobs.finish import LEVEL_RESOLUTION, LEVEL_VIEWS, _field  # noqa: E402
from backend.metrics import mesh_occupancy, normal_figures, sample_surface, voxel_iou  # noqa: E402
from backend.priors import load_prior  # noqa: E402
from backend.priors.procedural import world  # noqa: E402
from backend.scene.cameras import eval_views  # noqa: E402
from backend.train import Trainer  # noqa: E402


def measure(mesh: Mesh, shape: str, axis: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    v = mesh.vertices.astype(np.float64)
    points, face, _ = sample_surface(v, mesh.faces, 20000, np.random.default_rng(0))
    c = v[mesh.faces[face]]
    n = np.cross(c[:, 1] - c[:, 0], c[:, 2] - c[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    out = normal_figures(points, n, shape)
    out["voxel_iou"] = voxel_iou(mesh_occupancy(v, mesh.faces, axis), truth)
    return {k: round(x, 4) for k, x in out.items()}


def study(run: Path, resolutions: list[int], passes: list[int]) -> dict[str, Any]:
    prompt = json.loads((run / "job.json").read_text())["prompt"]
    shape = world.parse_prompt(prompt).shapes[0]
    axis = np.linspace(-0.55, 0.55, 64)  # mesh_figures' grid
    grid_points = torch.as_tensor(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3))
    truth = (world.sdf(shape, grid_points) < 0).numpy().reshape((64,) * 3)
    trainer = Trainer.from_checkpoint(run / "checkpoint.pt", load_prior("procedural", "cpu", 32), "cpu")
    trainer.scene.eval()
    views = eval_views(LEVEL_VIEWS)
    opacity = trainer.render_eval(LEVEL_VIEWS, LEVEL_RESOLUTION, "albedo").opacity
    rows: dict[str, Any] = {"prompt": prompt}
    for res in resolutions:
        with torch.no_grad():
            grid = trainer.scene.density_grid(res, DEFAULT_BOUND)
        grid = None if grid is None else grid.float().cpu().numpy()
        mesh, figures = extract_mesh(_field(trainer.scene.density), views, opacity, resolution=res, grid=grid)
        rows[f"res{res}"] = measure(mesh, shape, axis, truth)
        for n in passes:
            rows[f"res{res}_smooth{n}"] = measure(smooth_mesh(mesh, n), shape, axis, truth)
        if res == resolutions[0]:
            for k in (0.7, 1.4):
                other, _ = extract_mesh(_field(trainer.scene.density), views, opacity, resolution=res, grid=grid,
                                        level=figures["level"] * k)
                rows[f"res{res}_level x{k}"] = measure(other, shape, axis, truth)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="Folder of kept runs (bench/quality.py --keep).")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resolutions", default="64,96,128")
    parser.add_argument("--passes", default="3,5,10,20")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = {}
    for run in sorted(p for p in args.runs.iterdir() if (p / "checkpoint.pt").exists()):
        out[run.name] = study(run, [int(r) for r in args.resolutions.split(",")], [int(n) for n in args.passes.split(",")])
        print(json.dumps({run.name: out[run.name]}), flush=True)
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

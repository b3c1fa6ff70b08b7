"""How long a job's end and a job's start take: mesh extraction by stage, and process start -> first step.

Issue 27, item 3: a Gaussian scene's mesh extraction in <= 3 s on an H200 at the standard preset, and the first
training step within 3 s of a cold start. Both are measured here, never asserted in tests.

    # extraction, per stage, of kept runs (bench/quality.py --keep DIR) at the standard preset's export settings
    python bench/extract_speed.py extract --runs DIR --device cuda --out bench/results/extract_speed.json
    # or of a scene trained now (the representative case: a standard Gaussian scene has up to 200k splats)
    python bench/extract_speed.py extract --prompt "a pink cylinder" --train-quality standard --device cuda \
        --out bench/results/extract_speed_fresh.json
    # cold start: process start -> first step done, with the -X importtime summary; and `--help`'s wall
    python bench/extract_speed.py cold --device cuda --out bench/results/cold_start.json
    # two kept-mesh folders (--keep of two extract runs) against each other and against the true objects
    python bench/extract_speed.py compare --a DIR_BEFORE --b DIR_AFTER --out compare.json

``extract`` calls ``export_result`` (what ``finish_job`` calls) once per repeat and reports its own stage seconds
(on CUDA each stage ends with a synchronize, so a stage's seconds are its own); ``--no-bake`` stops after the
mesh (no UV unwrap, bake or files), which keeps CPU runs short. This module imports nothing heavy at its top, so
``cold``'s child process imports exactly what the product does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Modules a job should not import before its first step unless it needs them: the compiler torch.optim pulls in
# (backend/optimiser.py), the other priors' and the GPU splatter's libraries, and the export's.
HEAVY_MODULES = ("torch._dynamo", "sympy", "diffusers", "transformers", "gsplat", "xatlas", "mcubes",
                 "fast_simplification", "scipy")
# The export settings a preset sets (shared/settings.py); everything else stays as the run was trained.
EXPORT_SETTINGS = ("mesh_resolution", "texture_size", "decimate_faces", "mesh_smooth_iterations")


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=float))
    print(f"wrote {path}", file=sys.stderr)


def _export_settings(quality: str, representation: str, extra: dict[str, Any]) -> dict[str, Any]:
    from shared.settings import defaults, preset_values

    values = {**defaults(), **preset_values(quality, representation)}
    return {**{k: values[k] for k in EXPORT_SETTINGS}, **extra}


def _sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _trained(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """(name, Trainer) per kept run, or one scene trained now from ``--prompt``."""
    import torch

    from backend.priors import load_prior
    from backend.train import Trainer

    device = torch.device(args.device)
    runs: list[Path] = list(args.run or [])
    if args.runs is not None:
        runs += sorted(p for p in args.runs.iterdir() if (p / "checkpoint.pt").exists())
    out: list[tuple[str, Any]] = []
    for run in runs:
        record = json.loads((run / "job.json").read_text())
        prior = load_prior(record["settings"]["model"], device, record["settings"]["procedural_resolution"])
        out.append((run.name, Trainer.from_checkpoint(run / "checkpoint.pt", prior, device)))
    if args.prompt:
        from shared.settings import validate

        settings = validate({"quality": args.train_quality, "representation": args.representation,
                             **({"steps": args.train_steps} if args.train_steps else {})})
        prior = load_prior(settings["model"], device, settings["procedural_resolution"])
        trainer = Trainer(prior, args.prompt, settings, device=device)
        t = time.perf_counter()
        trainer.run()
        _sync(device)
        print(f"trained {args.prompt!r} {trainer.total} steps in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        out.append((args.prompt.replace(" ", "_"), trainer))
    if not out:
        raise SystemExit("give --run, --runs or --prompt")
    return out


def _cpu_clock() -> None:
    """Stage seconds as this process's CPU time: on a shared machine (other jobs on the same cores) wall seconds
    measure the neighbours; with one torch thread CPU seconds are the work itself. Works on the code before this
    issue too, whose stages read ``time.perf_counter`` through the same two modules."""
    import types

    import backend.export.pipeline as pipeline
    import backend.jobs.finish as finish

    shim = types.SimpleNamespace(perf_counter=time.process_time, time=time.time)
    pipeline.time = shim  # type: ignore[attr-defined]
    finish.time = shim  # type: ignore[attr-defined]


def run_extract(args: argparse.Namespace) -> int:
    import torch

    from backend.jobs.finish import export_result

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_clock:
        _cpu_clock()

    extra = json.loads(args.settings)
    rows = []
    for name, trainer in _trained(args):
        settings = _export_settings(args.quality, trainer.settings["representation"], extra)
        trainer.settings.update(settings)
        row: dict[str, Any] = {"run": name, "prompt": trainer.prompt, "representation": trainer.settings["representation"],
                               "export_settings": settings, "repeats": []}
        if trainer.settings["representation"] == "gaussians":
            row["gaussians"] = int(trainer.scene.num_points)
        for i in range(args.repeat):
            keep = args.keep is not None and i == args.repeat - 1
            formats = () if args.no_bake else ("glb", "obj", "ply")
            with tempfile.TemporaryDirectory(prefix="extract_speed_") as scratch:
                folder = (args.keep / name) if keep else Path(scratch)
                _sync(trainer.device)
                t, cpu = time.perf_counter(), time.process_time()
                result = export_result(trainer, folder, formats=formats)
                _sync(trainer.device)
                wall, cpu = time.perf_counter() - t, time.process_time() - cpu
            extract = result["extract"]
            rep = {"wall": wall, "cpu": cpu, "extract": result["seconds"]["extract"], "export": result["seconds"]["export"],
                   "extract_stages": extract.get("seconds", {}),
                   "export_stages": result["export"].get("seconds", {})}
            staged = sum(rep["extract_stages"].values())
            rep["extract_unstaged"] = rep["extract"] - staged  # the density grid, before it was a stage of its own
            row["repeats"].append(rep)
            row["mesh"] = {k: extract.get(k) for k in ("faces_raw", "faces_after_clean", "faces", "vertices", "level",
                                                       "silhouette_iou", "filled_voxels")}
            if keep:
                import numpy as np

                mesh = result["mesh"]
                np.savez(folder / "extracted.npz", vertices=mesh.vertices, faces=mesh.faces)
                (folder / "bench.json").write_text(json.dumps({"prompt": trainer.prompt, "mesh": row["mesh"]}))
        print(json.dumps({"run": name, "extract": [r["extract"] for r in row["repeats"]],
                          "stages": row["repeats"][-1]["extract_stages"]}), file=sys.stderr, flush=True)
        rows.append(row)
    last = [r["repeats"][-1] for r in rows]
    summary = {"extract_median": statistics.median(r["extract"] for r in last),
               "export_median": statistics.median(r["export"] for r in last)}
    stage_names = sorted({k for r in last for k in r["extract_stages"]})
    summary["extract_stage_medians"] = {k: statistics.median(r["extract_stages"].get(k, 0.0) for r in last)
                                        for k in stage_names}
    _write(args.out, {"command": "python bench/extract_speed.py " + " ".join(sys.argv[1:]),
                      "device": _device_name(args.device), "torch_threads": torch.get_num_threads(),
                      "clock": "process CPU seconds" if args.cpu_clock else "wall seconds", "quality": args.quality,
                      "runs": rows, "summary": summary})
    return 0


def _device_name(device: str) -> str:
    import platform

    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


# ------------------------------------------------------------------------------------------------- cold start

def run_first_step_child(args: argparse.Namespace) -> int:
    """In a fresh process: the CLI's generate path up to the first step done; prints wall-clock stamps as JSON."""
    stamps = {"child_start": time.time(), "cpu_child_start": time.process_time()}
    from backend.cli import _settings, build_parser
    from backend.jobs.runner import JobPlan, JobRun
    from backend.priors import load_prior
    from backend.train import TrainEvents

    stamps["imported"], stamps["cpu_imported"] = time.time(), time.process_time()
    with tempfile.TemporaryDirectory() as out:
        flags = [f"--{name.replace('_', '-')}={str(value).lower() if isinstance(value, bool) else value}"
                 for name, value in json.loads(args.settings).items()]
        cli = build_parser().parse_args(["generate", args.prompt, "--device", args.device, "--out", out,
                                         "--quality", args.quality, "--representation", args.representation, *flags])
        settings, device = _settings(cli)
        run = JobRun(JobPlan(args.prompt, settings, Path(out)), device,
                     lambda model, resolution, adapter: load_prior(model, device, resolution, adapter))
        run.prepare()
        _sync(device)
        stamps["prepared"], stamps["cpu_prepared"] = time.time(), time.process_time()
        done: list[bool] = []

        def on_progress(p: Any) -> None:
            _sync(device)
            stamps.setdefault("first_step", time.time())
            stamps.setdefault("cpu_first_step", time.process_time())
            done.append(True)

        run.train(TrainEvents(on_progress=on_progress, should_stop=lambda: bool(done)))
    stamps["heavy_modules"] = sorted(m for m in HEAVY_MODULES if m in sys.modules)
    print("FIRST_STEP " + json.dumps(stamps), flush=True)
    return 0


def run_probe_child(args: argparse.Namespace) -> int:
    """In a fresh process: the pieces of a cold start one after another, each timed (wall and CPU): torch's
    import, CUDA's start, the backend's imports, torch._dynamo's import (what backend/optimiser.py avoids) and, on
    CUDA, gsplat's extension load (its JIT build check runs on every start)."""
    phases: dict[str, dict[str, float]] = {}

    def timed(name: str, fn: Any) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        phases[name] = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}

    def cuda_start() -> None:
        import torch

        if torch.device(args.device).type == "cuda":
            torch.zeros(1, device=args.device).add_(1)
            torch.cuda.synchronize(args.device)

    def backend_imports() -> None:
        import backend.cli  # noqa: F401
        import backend.jobs.runner  # noqa: F401
        import backend.priors  # noqa: F401

    def gsplat_load() -> None:
        import torch

        if torch.device(args.device).type == "cuda":
            from gsplat.cuda._backend import _C  # noqa: F401

    timed("import_torch", lambda: __import__("torch"))
    timed("cuda_start", cuda_start)
    timed("import_backend", backend_imports)
    timed("import_torch_dynamo", lambda: __import__("torch._dynamo"))
    timed("gsplat_load", gsplat_load)
    print("PROBE " + json.dumps(phases), flush=True)
    return 0


def _importtime(stderr: str, top: int = 25) -> dict[str, Any]:
    """-X importtime's lines -> the slowest top-level packages and modules (cumulative microseconds)."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        fields = line[len("import time:"):].split("|")
        if len(fields) != 3:
            continue
        self_us, cumulative, raw = int(fields[0]), int(fields[1]), fields[2]
        depth = (len(raw) - len(raw.lstrip(" "))) // 2
        rows.append((raw.strip(), self_us, cumulative, depth))
    packages: dict[str, int] = {}
    for name, self_us, _, _ in rows:
        packages[name.split(".")[0]] = packages.get(name.split(".")[0], 0) + self_us
    top_level = sorted(((name, cum) for name, _, cum, depth in rows if depth == 0), key=lambda r: -r[1])
    return {"total_seconds": sum(r[1] for r in rows) / 1e6,
            "by_package_seconds": {k: round(v / 1e6, 4) for k, v in sorted(packages.items(), key=lambda kv: -kv[1])[:top]},
            "top_level_seconds": {k: round(v / 1e6, 4) for k, v in top_level[:top]}}


def run_cold(args: argparse.Namespace) -> int:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-X", "importtime", str(Path(__file__).resolve()), "_first-step", "--device", args.device,
           "--prompt", args.prompt, "--quality", args.quality, "--representation", args.representation,
           "--settings", args.settings]
    tries = []
    for _ in range(args.repeat):
        spawn = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        end = time.time()
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("FIRST_STEP ")), None)
        if proc.returncode != 0 or line is None:
            raise SystemExit(f"first-step child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        s = json.loads(line[len("FIRST_STEP "):])
        tries.append({"to_first_step": s["first_step"] - spawn, "interpreter": s["child_start"] - spawn,
                      "imports": s["imported"] - s["child_start"], "prepare": s["prepared"] - s["imported"],
                      "first_step": s["first_step"] - s["prepared"], "process_wall": end - spawn,
                      "heavy_modules": s["heavy_modules"],
                      # The child's own CPU seconds per phase: on a shared machine, what the phases cost without
                      # the wait for a core (CUDA work and file reads are not in them).
                      "cpu": {"to_first_step": s["cpu_first_step"], "imports": s["cpu_imported"] - s["cpu_child_start"],
                              "prepare": s["cpu_prepared"] - s["cpu_imported"],
                              "first_step": s["cpu_first_step"] - s["cpu_prepared"]},
                      "importtime": _importtime(proc.stderr)})
    probe = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_probe", "--device", args.device],
                           cwd=ROOT, capture_output=True, text=True, env=env)
    line = next((ln for ln in probe.stdout.splitlines() if ln.startswith("PROBE ")), None)
    phases = json.loads(line[len("PROBE "):]) if line else {"error": probe.stderr[-2000:]}
    helps = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "backend", "--help"], cwd=ROOT, capture_output=True, check=True, env=env)
        helps.append(time.perf_counter() - t)
    best = min(tries, key=lambda r: r["to_first_step"])
    _write(args.out, {"command": "python bench/extract_speed.py " + " ".join(sys.argv[1:]),
                      "device": args.device, "prompt": args.prompt, "quality": args.quality,
                      "representation": args.representation,
                      "to_first_step_seconds": [r["to_first_step"] for r in tries], "best": best,
                      "help_seconds_min": min(helps), "phases_one_by_one": phases, "tries": tries})
    print(json.dumps({k: round(v, 3) for k, v in best.items() if isinstance(v, float)}), json.dumps(best["cpu"]),
          file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------- comparison

def _nearest(points: Any, cloud: Any) -> Any:
    """Distance from each point to its nearest point of ``cloud`` (scipy's k-d tree when installed, else chunked
    brute force: scipy is not one of the product's dependencies)."""
    try:
        from scipy.spatial import cKDTree
    except ImportError:
        from backend.metrics import _nearest_distance

        return _nearest_distance(points, cloud)
    return cKDTree(cloud).query(points)[0]


def _geometry_figures(mesh: Any, prompt: str) -> dict[str, Any]:
    """An extracted mesh (no texture) against the prompt's true object: voxel IoU on mesh_figures' 64^3 grid and
    the normal figures (backend/metrics.py); empty when the prompt names no single object."""
    import numpy as np
    import torch

    from backend.metrics import mesh_occupancy, normal_figures, sample_surface, voxel_iou
    from backend.priors.procedural import world

    meaning = world.parse_prompt(prompt)
    if len(meaning.shapes) != 1:
        return {}
    shape = meaning.shapes[0]
    axis = np.linspace(-0.55, 0.55, 64)
    points = torch.as_tensor(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3))
    truth = (world.sdf(shape, points) < 0).numpy().reshape((64,) * 3)
    v, f = mesh["vertices"].astype(np.float64), mesh["faces"]
    samples, face, _ = sample_surface(v, f, 20000, np.random.default_rng(0))
    corners = v[f[face]]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    figures = normal_figures(samples, normals, shape)
    return {"voxel_iou": voxel_iou(mesh_occupancy(v, f, axis), truth),
            "normal_error_mean_deg": figures["normal_error_mean_deg"], "normal_off_share": figures["normal_off_share"]}


def _compare_pair(a: Path, b: Path, prompt: str) -> dict[str, Any]:
    """Two kept exports of the same scene: counts, the extracted meshes' voxel IoU with each other, their surface
    distance, and each GLB's figures against the true object (backend/metrics.py)."""
    import numpy as np

    from backend.metrics import mesh_figures, mesh_occupancy, sample_surface, voxel_iou

    ma, mb = np.load(a / "extracted.npz"), np.load(b / "extracted.npz")
    row: dict[str, Any] = {"vertices": [len(ma["vertices"]), len(mb["vertices"])],
                           "faces": [len(ma["faces"]), len(mb["faces"])]}
    same_shape = ma["faces"].shape == mb["faces"].shape and ma["vertices"].shape == mb["vertices"].shape
    row["identical_faces"] = bool(same_shape and np.array_equal(ma["faces"], mb["faces"]))
    row["max_vertex_shift"] = float(np.abs(ma["vertices"] - mb["vertices"]).max()) if same_shape else None
    axis = np.linspace(-0.55, 0.55, 128)
    occ = [mesh_occupancy(m["vertices"].astype(np.float64), m["faces"], axis) for m in (ma, mb)]
    row["mutual_voxel_iou_128"] = voxel_iou(occ[0], occ[1])
    # Each surface's 20k samples against the other's 500k: the distance to a dense sampling stands for the distance
    # to the surface; "floor" is the same measure between two samplings of one mesh (A against itself), what
    # identical meshes would score.
    rng = np.random.default_rng(0)
    va, vb = ma["vertices"].astype(np.float64), mb["vertices"].astype(np.float64)
    pa, _, _ = sample_surface(va, ma["faces"], 20000, rng)
    pb, _, _ = sample_surface(vb, mb["faces"], 20000, rng)
    dense_a, _, _ = sample_surface(va, ma["faces"], 500000, rng)
    dense_b, _, _ = sample_surface(vb, mb["faces"], 500000, rng)
    d = np.concatenate([_nearest(pa, dense_b), _nearest(pb, dense_a)])
    floor = _nearest(pb if row["identical_faces"] else pa, dense_a)
    row["surface_distance_mean"] = float(d.mean())
    row["surface_distance_p99"] = float(np.quantile(d, 0.99))
    row["surface_distance_max"] = float(d.max())
    row["surface_distance_floor_mean"] = float(floor.mean())
    row["geometry_figures"] = {k: [x, y] for (k, x), y in zip(_geometry_figures(ma, prompt).items(),
                                                              _geometry_figures(mb, prompt).values())}
    if (a / "mesh.glb").exists() and (b / "mesh.glb").exists():
        from backend.export.meshfile import read_glb

        try:
            fa, fb = mesh_figures(read_glb(a / "mesh.glb"), prompt), mesh_figures(read_glb(b / "mesh.glb"), prompt)
            keys = ("voxel_iou", "chamfer", "normal_error_mean_deg", "normal_off_share", "colour_error_mean",
                    "wrong_colour_share", "components")
            row["figures"] = {k: [fa.get(k), fb.get(k)] for k in keys}
        except ValueError as exc:  # a prompt with no single object has no truth
            row["figures"] = str(exc)
    return row


def run_compare(args: argparse.Namespace) -> int:
    rows = {}
    for a in sorted(p for p in args.a.iterdir() if (p / "extracted.npz").exists()):
        b = args.b / a.name
        if not (b / "extracted.npz").exists():
            continue
        prompt = json.loads((a / "bench.json").read_text())["prompt"]
        rows[a.name] = _compare_pair(a, b, prompt)
        print(json.dumps({a.name: rows[a.name]}), file=sys.stderr, flush=True)
    _write(args.out, {"command": "python bench/extract_speed.py " + " ".join(sys.argv[1:]), "a": str(args.a),
                      "b": str(args.b), "runs": rows})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract", help="Mesh extraction (and bake) seconds per stage.")
    ex.add_argument("--run", type=Path, action="append", help="A kept run's folder (job.json + checkpoint.pt).")
    ex.add_argument("--runs", type=Path, help="A folder of kept runs (bench/quality.py --keep DIR).")
    ex.add_argument("--prompt", help="Train a scene now instead (see --train-quality).")
    ex.add_argument("--train-quality", default="standard", help="Preset the --prompt scene is trained at.")
    ex.add_argument("--train-steps", type=int, default=0, help="Steps of the --prompt scene (0: the preset's).")
    ex.add_argument("--representation", default="gaussians", choices=("gaussians", "nerf"))
    ex.add_argument("--quality", default="standard", help="Preset whose export settings apply (mesh_resolution ...).")
    ex.add_argument("--settings", default="{}", help="JSON export settings over the preset's.")
    ex.add_argument("--device", default="cpu")
    ex.add_argument("--repeat", type=int, default=1, help="Exports per scene (the first warms CUDA's kernels).")
    ex.add_argument("--no-bake", action="store_true", help="Stop after the mesh: no unwrap, bake or files.")
    ex.add_argument("--keep", type=Path, help="Keep each scene's last export (and extracted.npz) here.")
    ex.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    ex.add_argument("--cpu-clock", action="store_true",
                    help="Stage seconds as process CPU time (a shared CPU machine; use with --threads 1).")
    ex.add_argument("--out", type=Path, required=True)
    cold = sub.add_parser("cold", help="Process start -> first step done, with -X importtime.")
    child = sub.add_parser("_first-step", help=argparse.SUPPRESS)
    for p in (cold, child):
        p.add_argument("--device", default="cpu")
        p.add_argument("--prompt", default="a red cube")
        p.add_argument("--quality", default="standard")
        p.add_argument("--representation", default="gaussians", choices=("gaussians", "nerf"))
        p.add_argument("--settings", default="{}", help="JSON settings over the preset's, as the CLI's flags.")
    probe = sub.add_parser("_probe", help=argparse.SUPPRESS)
    probe.add_argument("--device", default="cpu")
    cold.add_argument("--repeat", type=int, default=3)
    cold.add_argument("--out", type=Path, required=True)
    cmp = sub.add_parser("compare", help="Two --keep folders of the same scenes against each other.")
    cmp.add_argument("--a", type=Path, required=True)
    cmp.add_argument("--b", type=Path, required=True)
    cmp.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    return {"extract": run_extract, "cold": run_cold, "_first-step": run_first_step_child, "_probe": run_probe_child,
            "compare": run_compare}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())

"""ISD (ModeDreamer's Image-prompt Score Distillation) measured on the procedural prior, where every mode is known.

Three questions (docs/METHODS.md, session 14):
- mode selection: a prompt the world reads as many objects ("a cube": ten colours; "a red object": six shapes), with
  a reference image of one of them, over seeds: how often is the result that object (``in_reference_mode``), and
  how often without a reference (SDS, TBSD) does a run land on it anyway?
- ISD beside SDS and TBSD on prompts of the quality suite (one object each: the reference can only be that object);
- the IP-scale trade-off of the paper's study (0, 0.2, 0.5, 0.7, 1.0) in this world.

Every 3D run is a real CLI process (`python -m backend generate ... --quality draft --device cpu`) measured on its GLB
(backend.metrics: ``landed_object``, the object the mesh is; ``mesh_figures`` against the reference's mode, or the
landed object without one). References are the world's own renders from the front camera, written as PNG files and
passed with --image. The 2D part (``--part 2d``) runs the image experiment in process over the same cases.

    python bench/isd_study.py --part 3d --groups modes,suite,scale --out bench/results/isd/cpu_draft_s14 --workers 2
    python bench/isd_study.py --part 2d --out bench/results/isd/cpu_2d_s14

The SD path with learned weights (issue 26's bar: "a cube" with a reference of a coloured cube gives that colour in at
least 4 of 5 colours, world-SD and its IP-Adapter, GPU standard): the ``colours`` group, with the run's model named.

    python bench/isd_study.py --groups colours --model world-sd --ip-adapter world-sd-ip --quality standard \
        --device cuda --workers 8 --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.export.meshfile import read_glb  # noqa: E402
from backend.metrics import landed_object, mesh_figures  # noqa: E402

SEEDS = (0, 1, 2)
# (prompt, reference object or None, method, extra settings, group)
MODE_CASES: list[tuple[str, str | None, str, dict[str, Any]]] = [
    ("a cube", "a blue cube", "isd", {}),
    ("a cube", "a red cube", "isd", {}),
    ("a cube", None, "isd", {}),  # reference_source 'sample': a seeded draw of the mixture
    ("a cube", None, "tbsd", {}),
    ("a red object", "a red torus", "isd", {}),
    ("a red object", None, "tbsd", {}),
]
SUITE_PROMPTS = ("a red cube", "a pink torus")  # a prism and the hardest shape of the suite
SCALES = (0.0, 0.2, 0.5, 0.7, 1.0)  # the paper's IP-scale study
# Five of the world's ten colours, spread round the hue circle plus white (the hardest to tell from the background).
REFERENCE_COLOURS = ("red", "blue", "green", "yellow", "white")


def cases(groups: list[str], representation: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if "modes" in groups:
        for prompt, ref, method, extra in MODE_CASES:
            for seed in SEEDS:
                out.append(dict(group="modes", prompt=prompt, reference=ref, method=method, seed=seed,
                                settings=extra))
    if "suite" in groups:
        for prompt in SUITE_PROMPTS:
            for method in ("isd", "sds", "tbsd"):
                out.append(dict(group="suite", prompt=prompt, reference=None, method=method, seed=0, settings={}))
    if "scale" in groups:  # 0.5 is the default: the modes group's seed-0 run of the same reference
        for scale in (s for s in SCALES if s != 0.5):
            for ref in ("a blue cube",):
                out.append(dict(group="scale", prompt="a cube", reference=ref, method="isd", seed=0,
                                settings={"ip_scale": scale}))
    if "nerf" in groups:  # both representations: the NeRF at the draft preset takes minutes more per run
        for ref in ("a blue cube", "a red cube"):
            out.append(dict(group="nerf", prompt="a cube", reference=ref, method="isd", seed=0, settings={},
                            representation="nerf"))
    if "colours" in groups:  # seeds 0-1 with a reference; without one, what "a cube" gives on its own
        for colour in REFERENCE_COLOURS:
            for seed in (0, 1):
                out.append(dict(group="colours", prompt="a cube", reference=f"a {colour} cube", method="isd",
                                seed=seed, settings={}))
        for method in ("tbsd", "sds"):
            for seed in (0, 1):
                out.append(dict(group="colours", prompt="a cube", reference=None, method=method, seed=seed,
                                settings={}))
    if "noise" in groups:  # ISD's control-variate blend: 0 is the paper's eq. 7
        for a in (0.0, 0.1, 0.2, 0.5, 1.0):
            out.append(dict(group="noise", prompt="a cube", reference="a blue cube", method="isd", seed=0,
                            settings={"isd_noise_weight": a}))
    for c in out:
        c.setdefault("representation", representation)
    return out


def name_of(case: dict[str, Any]) -> str:
    ref = (case["reference"] or "none").replace("a ", "").replace(" ", "-")
    extra = "_".join(f"{k}{v}" for k, v in sorted(case["settings"].items()))
    parts = [case["group"], case["representation"], case["prompt"].replace("a ", "").replace(" ", "-"), ref,
             case["method"], f"s{case['seed']}"] + ([extra] if extra else [])
    return "_".join(parts)


def write_references(folder: Path, objects: set[str], size: int = 64) -> dict[str, Path]:
    """The world's render of each object from the front camera (the reference's camera), as PNG files."""
    from backend.images import save_png
    from backend.priors.procedural.world import ground_truth
    from backend.scene.cameras import front_view

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for obj in sorted(objects):
        path = folder / (obj.replace("a ", "").replace(" ", "_") + ".png")
        if not path.exists():
            image, _ = ground_truth(obj, front_view(1), size)
            save_png(image[0], path)
        paths[obj] = path
    return paths


def run_3d(case: dict[str, Any], refs: dict[str, Path], runs: Path, threads: int, run_args: list[str]) -> dict[str, Any]:
    out = runs / name_of(case)
    row = {**case, "name": out.name}
    if not (out / "job.json").exists():
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "backend", "generate", case["prompt"], "--out", str(out), "--method",
               case["method"], "--representation", case["representation"], "--seed", str(case["seed"]), "--quiet",
               *run_args]
        if case["reference"] is not None:
            cmd += ["--image", str(refs[case["reference"]])]
        for key, value in case["settings"].items():
            cmd += ["--" + key.replace("_", "-"), str(value)]
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        row["wall_seconds"] = round(time.perf_counter() - started, 1)
        if proc.returncode != 0:
            return {**row, "error": proc.stderr[-2000:]}
    record = json.loads((out / "job.json").read_text())
    glb = read_glb(out / "mesh.glb")
    landed = landed_object(glb)
    ref = record.get("reference") or {}
    mode = ref.get("mode")
    if "mode" not in ref and case["reference"] is not None:
        mode = case["reference"]  # an SD prior has no mixture to pick from: the reference's object is the mode
    if len(set((ref.get("weights") or {}).values())) == 1:
        mode = None  # equal weights (ip_scale 0) select no mode (records written before this was said say one)
    single = case["prompt"] in SUITE_PROMPTS
    target = case["prompt"] if single else (mode or landed["landed"])
    figures = mesh_figures(glb, target) if target else {}
    row.update(
        reference_source=ref.get("source"), reference_mode=mode, reference_weight=(ref.get("weights") or {}).get(mode),
        landed=landed["landed"], shape_ious=landed["shape_ious"], measured_against=target,
        in_reference_mode=None if mode is None else landed["landed"] == mode,
        voxel_iou=figures.get("voxel_iou"), scaled_iou=figures.get("scaled_iou"),
        colour_error=figures.get("colour_error_mean"), wrong_colour_share=figures.get("wrong_colour_share"),
        nearest_colour=figures.get("nearest_colour"), train_seconds=round(record["seconds"]["train"], 1),
    )
    return row


def run_2d(out: Path, groups: list[str]) -> list[dict[str, Any]]:
    """The image experiment (64 px, 500 steps) over mode cases, the noise blend and the IP scale, three seeds."""
    import torch

    from backend.cli import _procedural_figures
    from backend.distill.step import prompt_set
    from backend.image2d import optimise_image
    from backend.priors.procedural.prior import ProceduralPrior
    from backend.priors.procedural.world import ground_truth
    from backend.scene.cameras import front_view
    from backend.reference import job_reference
    from shared.settings import validate

    torch.set_num_threads(1)
    prior = ProceduralPrior(resolution=64)
    rows = []
    grid: list[tuple[str, str, str | None, dict[str, Any]]] = []
    for ref in ("a blue cube", "a red cube", "a green cube"):
        for a in (0.0, 0.1, 0.2, 0.5, 1.0):
            grid.append(("noise", "a cube", ref, {"method": "isd", "isd_noise_weight": a}))
        for scale in SCALES:
            grid.append(("scale", "a cube", ref, {"method": "isd", "ip_scale": scale}))
    grid.append(("modes", "a red object", "a red torus", {"method": "isd"}))
    grid.append(("modes", "a cube", None, {"method": "isd"}))  # a reference drawn from the prior per seed
    for method in ("sds", "tbsd"):
        grid.append(("modes", "a cube", None, {"method": method}))
        grid.append(("modes", "a red object", None, {"method": method}))
    for group, prompt, ref, settings in grid:
        if group not in groups:
            continue
        for seed in SEEDS:
            s = validate({**settings, "seed": seed, "image_steps": 500})
            given = None
            if ref is not None:
                from backend.reference import Reference, tensor_to_pixels

                given = Reference(tensor_to_pixels(ground_truth(ref, front_view(1), 64)[0][0]), "image")
            reference = job_reference(prior, prompt, s, given)
            tensor = None if reference is None else reference.tensor()
            run = optimise_image(prior, prompt, s, reference=tensor)
            image_prompt = None if tensor is None else prompt_set(prompt, s, tensor).reference
            figures = _procedural_figures(prompt, run.image, front_view(1), prior, image_prompt)
            rows.append({"group": group, "prompt": prompt, "reference": ref, "seed": seed, "settings": settings,
                         "reference_source": None if reference is None else reference.source,
                         **figures, "seconds": round(run.seconds, 2)})
            print(json.dumps(rows[-1]), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    return rows


def summarise(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if "error" in r:
            continue
        groups.setdefault(tuple(json.dumps(r.get(k), sort_keys=True) for k in keys), []).append(r)
    out = []
    for key, members in groups.items():
        row = {k: json.loads(v) for k, v in zip(keys, key)}
        row["runs"] = len(members)
        modes = [m["in_reference_mode"] for m in members if m.get("in_reference_mode") is not None]
        if modes:
            row["in_reference_mode"] = f"{sum(modes)}/{len(modes)}"
        row["landed"] = [m.get("landed") for m in members]
        for fig in ("voxel_iou", "colour_error", "silhouette_iou", "background_error"):
            values = [m[fig] for m in members if isinstance(m.get(fig), (int, float))]
            if values:
                row[fig + "_median"] = round(statistics.median(values), 3)
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("3d", "2d"), default="3d")
    parser.add_argument("--groups", default="modes,suite,scale", help="Comma list of modes, suite, scale, noise.")
    parser.add_argument("--representation", default="gaussians", choices=("gaussians", "nerf"))
    parser.add_argument("--only", default=None, help="Run only cases whose name contains this text.")
    parser.add_argument("--out", type=Path, required=True, help="Folder for runs/, refs/ and study.json / .md.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quality", default="draft", choices=("draft", "standard", "high"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=None, help="the prior (--model of generate) [the product's default]")
    parser.add_argument("--ip-adapter", default=None, help="the model's IP-Adapter (needed by isd on an SD model)")
    parser.add_argument("--reference-size", type=int, default=64, help="reference PNG side in pixels")
    args = parser.parse_args(argv)
    run_args = ["--quality", args.quality, "--device", args.device]
    run_args += ["--model", args.model] if args.model else []
    run_args += ["--ip-adapter", args.ip_adapter] if args.ip_adapter else []
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part == "2d":
        rows = run_2d(args.out, args.groups.split(","))
        summary = summarise(rows, ("group", "prompt", "reference", "settings"))
        (args.out / f"study_2d_{args.groups.replace(',', '_')}.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
        return 0
    todo = cases(args.groups.split(","), args.representation)
    if args.only:
        todo = [c for c in todo if args.only in name_of(c)]
    refs = write_references(args.out / "refs", {c["reference"] for c in todo if c["reference"]}, args.reference_size)
    rows = []
    with ThreadPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run_3d, c, refs, args.out / "runs", args.threads, run_args) for c in todo]
        for f in as_completed(futures):
            rows.append(f.result())
            r = rows[-1]
            print(r["name"], r.get("error", "")[-300:] or
                  f"landed {r['landed']} mode {r['reference_mode']} iou {r['voxel_iou']:.3f} "
                  f"colour {r['colour_error']:.3f}", flush=True)
    rows.sort(key=lambda r: r["name"])
    path = args.out / f"study_{args.representation}.json"
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    merged = {r["name"]: r for r in old} | {r["name"]: r for r in rows}
    rows = sorted(merged.values(), key=lambda r: r["name"])
    summary = summarise(rows, ("group", "prompt", "reference", "method", "settings"))
    path.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

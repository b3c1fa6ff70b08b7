"""The quality suite: `python -m backend generate` over many prompts at the defaults, measured on the exported GLB.

Every run is a real CLI process with the product's defaults for the preset (anything else must be asked for with
``--settings``), on the procedural prior, where the right answer is known. Figures per run come from the GLB an
artist would import (backend.metrics.mesh_figures): voxel IoU with the world's solid, Chamfer distance to the true
surface, the angle of the faces' normals to the true surface's, the mean and median albedo's distance to the named colour, the share of the surface nearer another
catalogue colour, connected components, seconds. Writes into ``--out``:

- ``quality.json``: every run and the per (method, representation) summary;
- ``quality.md``: the same as Markdown tables;
- ``contact_sheet.png``: each run's preview strip above the true object from the same eight views.

    # CPU, draft preset, one thread per run:
    python bench/quality.py --out bench/results/quality/draft_cpu --preset draft --device cpu --workers 2
    # GPU, standard preset, many runs at once on one GPU:
    python bench/quality.py --out $OUT --preset standard --device cuda --workers 12 --methods tbsd,sds
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.export.meshfile import read_glb  # noqa: E402
from backend.metrics import mesh_figures  # noqa: E402
from backend.priors.procedural import world  # noqa: E402
from shared.settings import METHODS, REPRESENTATIONS  # noqa: E402

# One prompt per shape at least, every colour of the catalogue but one, and the hard ones: white and black are the
# lightest and darkest albedos (clipping and shading), cones and tori have thin parts.
SUITE: tuple[str, ...] = (
    "a red cube", "a blue sphere", "a green cylinder", "an orange cone", "a pink torus", "a cyan capsule",
    "a white cube", "a black sphere", "a yellow cylinder", "a purple cone", "a blue torus", "a red capsule",
)
# The bars (docs/METHODS.md says why each is a fair bar in this world).
BARS = {"iou_median": 0.9, "iou_min": 0.8, "colour_median": 0.1, "wrong_share_max": 0.10}


def run_one(prompt: str, method: str, representation: str, preset: str, device: str, settings: dict[str, Any],
            out: Path, threads: int, variant: str = "defaults") -> dict[str, Any]:
    """One CLI run and its figures (or its error)."""
    settings = dict(settings)
    method = settings.pop("method", method)  # a variant may name its own method or representation
    representation = settings.pop("representation", representation)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "backend", "generate", prompt, "--out", str(out), "--method", method,
           "--representation", representation, "--quality", preset, "--device", device, "--quiet"]
    for name, value in settings.items():
        cmd += ["--" + name.replace("_", "-"), str(value).lower() if isinstance(value, bool) else str(value)]
    row: dict[str, Any] = {"variant": variant, "prompt": prompt, "method": method, "representation": representation,
                           "preset": preset, "settings": settings}
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    row["wall_seconds"] = round(time.perf_counter() - started, 1)
    if proc.returncode != 0:
        return {**row, "error": proc.stderr[-2000:]}
    record = json.loads((out / "job.json").read_text())
    row.update(steps=record["steps_done"], seconds={k: round(v, 2) for k, v in record["seconds"].items()
                                                   if isinstance(v, (int, float))})
    if "peak_gpu_memory_gb" in record:
        row["peak_gpu_memory_gb"] = round(record["peak_gpu_memory_gb"], 2)
    row.update(mesh_figures(read_glb(out / "mesh.glb"), prompt))
    return row


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (variant, method, representation): medians, worst cases and how many prompts meet each bar."""
    out = []
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    keys = sorted({(r["variant"], r["method"], r["representation"]) for r in rows},
                  key=lambda k: (variants.index(k[0]), k[2], METHODS.index(k[1])))
    for variant, method, rep in keys:
        group = [r for r in rows if (r["variant"], r["method"], r["representation"]) == (variant, method, rep)]
        ok = [r for r in group if "error" not in r]
        if not ok:
            out.append({"variant": variant, "method": method, "representation": rep, "runs": len(group),
                        "failed": len(group)})
            continue
        iou = [r["voxel_iou"] for r in ok]
        colour = [r["colour_error_mean"] for r in ok]
        wrong = [r["wrong_colour_share"] for r in ok]
        named = sum(r["nearest_colour"] == world.parse_prompt(r["prompt"]).colours[0] for r in ok)
        s = {"variant": variant, "method": method, "representation": rep, "runs": len(group),
             "failed": len(group) - len(ok),
             "iou_median": statistics.median(iou), "iou_min": min(iou),
             "chamfer_median": statistics.median(r["chamfer"] for r in ok),
             # Shape apart from size (backend.metrics.scale_aligned_iou); absent from runs measured before it.
             "scaled_iou_median": statistics.median(r.get("scaled_iou", float("nan")) for r in ok),
             "best_scale_median": statistics.median(r.get("best_scale") or float("nan") for r in ok),
             # Lumps and voxel steps on the surface (backend.metrics.normal_figures); absent from older runs.
             "normal_error_median": statistics.median(r.get("normal_error_mean_deg", float("nan")) for r in ok),
             "normal_off_median": statistics.median(r.get("normal_off_share", float("nan")) for r in ok),
             "colour_median": statistics.median(colour), "colour_max": max(colour),
             "wrong_share_median": statistics.median(wrong), "wrong_share_max": max(wrong),
             "named_colour": f"{named}/{len(ok)}",
             "components_max": max(r["components"] for r in ok),
             "train_seconds_median": statistics.median(r["seconds"].get("train", 0.0) for r in ok)}
        s["meets_bars"] = (len(ok) == len(group) and s["iou_median"] >= BARS["iou_median"]
                           and s["iou_min"] >= BARS["iou_min"] and named == len(ok)
                           and s["colour_median"] <= BARS["colour_median"]
                           and s["wrong_share_max"] <= BARS["wrong_share_max"])
        out.append(s)
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Quality suite: {result['preset']} preset on {result['device']}", "",
             f"Command: `{result['command']}`", "", "## Per method and representation", ""]
    cols = ["variant", "method", "representation", "runs", "failed", "iou_median", "iou_min", "scaled_iou_median",
            "best_scale_median", "chamfer_median", "normal_error_median", "normal_off_median", "colour_median",
            "colour_max", "wrong_share_median", "wrong_share_max", "named_colour", "components_max",
            "train_seconds_median", "meets_bars"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(s.get(c, "")) for c in cols) + " |" for s in result["summary"]]
    lines += ["", "## Runs", ""]
    cols = ["variant", "prompt", "method", "representation", "voxel_iou", "scaled_iou", "best_scale", "chamfer",
            "normal_error_mean_deg", "normal_off_share", "colour_error_mean", "colour_error_median",
            "wrong_colour_share", "nearest_colour", "mean_albedo", "components", "wall_seconds"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["runs"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['prompt']} | {r['method']} | {r['representation']} | failed: "
                         f"{r['error'].strip().splitlines()[-1][:120] if r['error'].strip() else '?'} |")
        else:
            lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=None)
def _truth_strip(prompt: str, n: int, size: int) -> np.ndarray:
    """The true object from the preview's ``n`` views, as 8-bit RGB side by side. Cached: the sheets are redrawn
    after every finished run, and each render traces every catalogue shape."""
    import torch

    from backend.scene.cameras import eval_views

    truth, _ = world.ground_truth(prompt, eval_views(n), size)
    return (torch.cat(list(truth.clamp(0, 1)), dim=-1).permute(1, 2, 0).numpy() * 255).round()


def contact_sheet(rows: list[dict[str, Any]], run_dirs: dict[int, Path], path: Path) -> None:
    """Each run's preview strip above the true object from the same views, labelled with its figures."""
    from PIL import Image, ImageDraw

    tiles = []
    for i, row in enumerate(rows):
        preview = run_dirs[i] / "preview.png"
        if "error" in row or not preview.exists():
            continue
        strip = Image.open(preview).convert("RGB")
        size = strip.height
        n = strip.width // size
        truth_strip = _truth_strip(row["prompt"], n, size)
        label = (f"{row['prompt']} | {row['variant']} {row['method']} {row['representation']} | IoU {row['voxel_iou']:.2f} "
                 f"colour {row['colour_error_mean']:.2f} ({row['nearest_colour']}) wrong {row['wrong_colour_share']:.0%}")
        tile = Image.new("RGB", (strip.width, 2 * size + 14), (255, 255, 255))
        ImageDraw.Draw(tile).text((2, 1), label, fill=(0, 0, 0))
        tile.paste(strip, (0, 14))
        tile.paste(Image.fromarray(truth_strip.astype(np.uint8)), (0, 14 + size))
        tiles.append(tile)
    if not tiles:
        return
    width = max(t.width for t in tiles)
    sheet = Image.new("RGB", (width, sum(t.height + 4 for t in tiles)), (255, 255, 255))
    y = 0
    for tile in tiles:
        sheet.paste(tile, (0, y))
        y += tile.height + 4
    tmp = path.with_suffix(".tmp.png")
    sheet.save(tmp)
    tmp.replace(path)


def write_sheets(rows: list[dict[str, Any]], dirs: dict[int, Path], variants: dict[str, Any], out: Path) -> None:
    """One contact sheet per variant (``rows[i]`` ran in ``dirs[i]``)."""
    for n, v in enumerate(variants):
        picked = [i for i, row in enumerate(rows) if row["variant"] == v]
        name = "contact_sheet.png" if len(variants) == 1 else f"contact_sheet_{n}_{v}.png"
        contact_sheet([rows[i] for i in picked], {j: dirs[i] for j, i in enumerate(picked)}, out / name)


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="Folder for quality.json, quality.md, contact_sheet.png.")
    parser.add_argument("--preset", default="draft", choices=("draft", "standard", "high"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--methods", default="tbsd", help=f"Comma list of {', '.join(METHODS)} [tbsd].")
    parser.add_argument("--representations", default=",".join(REPRESENTATIONS))
    parser.add_argument("--prompts", default=";".join(SUITE), help="Semicolon list [the suite].")
    parser.add_argument("--settings", default="{}", help="JSON object of settings over the preset (a study, not the "
                                                         "defaults: recorded in the output).")
    parser.add_argument("--variants", default=None,
                        help='JSON object {"name": {settings}, ...}: run the whole grid once per variant, all sharing '
                             'the worker pool (a study of several changes in one go); --settings applies to each.')
    parser.add_argument("--workers", type=int, default=2, help="Runs at once.")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run.")
    parser.add_argument("--keep", type=Path, default=None,
                        help="Keep every run's folder here, with its final checkpoint.pt for bench/rebake.py "
                             "(default: a temp dir, no checkpoint).")
    args = parser.parse_args(argv)
    # The runs are separate processes; this one only measures their meshes, in its worker threads. Left at torch's
    # default (a thread per core in each of them) the measuring oversubscribed a 32-core machine running five studies
    # (480 threads), and the GPU sat idle while finished runs waited to be measured (session 6).
    import torch

    torch.set_num_threads(1)
    settings = json.loads(args.settings)
    if args.keep:
        settings.setdefault("checkpoint_every", 100000)  # a checkpoint at the end only (the run's own steps)
    variants = json.loads(args.variants) if args.variants else {"defaults": {}}
    prompts = [p.strip() for p in args.prompts.split(";") if p.strip()]
    runs = [(v, p, m, r) for v in variants for r in args.representations.split(",") for m in args.methods.split(",")
            for p in prompts]
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"command": "python bench/quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
                              "preset": args.preset, "device": args.device, "settings": settings, "runs": []}
    if args.device == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory(prefix="tbsd-quality-") as tmp:
        base = args.keep or Path(tmp)
        dirs = {i: base / f"{i:03d}_{v}_{r}_{m}_{p.replace(' ', '_')}" for i, (v, p, m, r) in enumerate(runs)}
        started = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool:
            futures = [pool.submit(run_one, p, m, r, args.preset, args.device, {**settings, **variants[v]}, dirs[i],
                                   args.threads, v)
                       for i, (v, p, m, r) in enumerate(runs)]
            index = {f: i for i, f in enumerate(futures)}
            done: dict[int, dict[str, Any]] = {}
            for future in as_completed(futures):
                row = future.result()
                done[index[future]] = row
                brief = {k: row.get(k) for k in ("variant", "prompt", "method", "representation", "voxel_iou",
                                                  "scaled_iou", "normal_error_mean_deg", "colour_error_mean", "nearest_colour", "wrong_colour_share",
                                                  "components", "wall_seconds", "error")}
                print(json.dumps(brief), flush=True)
                rows = [done[i] for i in sorted(done)]
                result["runs"] = rows
                result["summary"] = summarise(rows)
                _write(args.out / "quality.json", json.dumps(result, indent=1))
                # Written as runs finish, so a study cut short still leaves everything it measured.
                _write(args.out / "quality.md", markdown(result))
                write_sheets(rows, {j: dirs[i] for j, i in enumerate(sorted(done))}, variants, args.out)
        result["wall_seconds"] = round(time.perf_counter() - started, 1)
        _write(args.out / "quality.json", json.dumps(result, indent=1))
    for s in result["summary"]:
        print(json.dumps(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())

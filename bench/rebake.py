"""Re-export finished runs with the current extraction and bake, without training again, and measure both GLBs.

A change to mesh extraction or texture baking is measured on exactly the scenes the quality suite trained
(``bench/quality.py --keep DIR`` keeps each run's folder with its final ``checkpoint.pt``):

    python bench/rebake.py --runs DIR --out bench/results/quality/rebake.json [--device cpu|cuda] [--settings JSON]

Each run is resumed at its last step (``generate --resume``, no further steps), which runs ``finish_job`` again;
the JSON holds the kept GLB's figures ("before") and the new one's ("after") per run, with the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from concurrent.futures import ProcessPoolExecutor
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.export.meshfile import read_glb  # noqa: E402
from backend.files import write_json  # noqa: E402
from backend.metrics import mesh_figures  # noqa: E402

FIGURES = ("voxel_iou", "excess_volume", "missing_volume", "chamfer", "normal_error_mean_deg", "normal_off_share",
           "normal_edge_share", "colour_error_mean", "colour_error_median", "wrong_colour_share", "nearest_colour")


def rebake(run: Path, out: Path, device: str, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """``settings``: export settings over the run's own (e.g. ``{"mesh_smooth_iterations": 0}``), as CLI flags."""
    record = json.loads((run / "job.json").read_text())
    prompt = record["prompt"]
    cmd = [sys.executable, "-m", "backend", "generate", prompt, "--out", str(out), "--resume",
           str(run / "checkpoint.pt"), "--device", device, "--quiet"]
    for name, value in (settings or {}).items():
        cmd += ["--" + name.replace("_", "-"), str(value).lower() if isinstance(value, bool) else str(value)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    row: dict[str, Any] = {"run": run.name, "prompt": prompt,
                           "before": {k: v for k, v in mesh_figures(read_glb(run / "mesh.glb"), prompt).items()
                                      if k in FIGURES}}
    if proc.returncode != 0:
        return {**row, "error": proc.stderr[-2000:]}
    row["after"] = {k: v for k, v in mesh_figures(read_glb(out / "mesh.glb"), prompt).items() if k in FIGURES}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="Folder of kept runs (bench/quality.py --keep).")
    parser.add_argument("--out", type=Path, required=True, help="JSON to write; the new files go beside it.")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--workers", type=int, default=1, help="Runs re-exported at once (separate processes).")
    parser.add_argument("--settings", default="{}",
                        help='JSON object of export settings over each run\'s own, e.g. \'{"mesh_smooth_iterations": 0}\'.')
    args = parser.parse_args(argv)
    settings = json.loads(args.settings)
    runs = sorted(p for p in args.runs.iterdir() if (p / "checkpoint.pt").exists())
    with ProcessPoolExecutor(max(1, args.workers)) as pool:
        futures = [pool.submit(rebake, run, args.out.parent / f"{args.out.stem}_runs" / run.name, args.device,
                               settings) for run in runs]
        rows = []
        for future in futures:
            rows.append(future.result())
            print(json.dumps(rows[-1]), flush=True)
    done = [r for r in rows if "after" in r]
    summary = {when: {k: statistics.median(r[when][k] for r in done) for k in FIGURES if k != "nearest_colour"}
               for when in ("before", "after")} if done else {}
    write_json(args.out, {"command": "python bench/rebake.py " + " ".join(sys.argv[1:] if argv is None else argv),
                          "runs": rows, "median": summary})
    return 0 if len(done) == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

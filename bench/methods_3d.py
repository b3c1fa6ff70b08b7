"""Every method on both representations through `python -m backend generate`, on the procedural prior (CPU).

Each run is a CLI process with one thread; ``--workers`` run at once. Writes JSON with, per run, the exported
mesh's voxel IoU with the true shape, the mean albedo's colour error and nearest catalogue colour, and timings.

    python bench/methods_3d.py --out bench/results/methods_3d.json --prompts "a red cube" --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shared.settings import METHODS, REPRESENTATIONS

ROOT = Path(__file__).resolve().parents[1]


def one(method: str, representation: str, prompt: str, steps: int, out: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "backend", "generate", prompt, "--out", str(out), "--method", method,
           "--representation", representation, "--quality", "draft", "--steps", str(steps), "--device", "cpu",
           "--quiet"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"method": method, "representation": representation, "prompt": prompt, "error": proc.stderr[-2000:]}
    record = json.loads((out / "job.json").read_text())
    return {"method": method, "representation": representation, "prompt": prompt, "steps": steps,
            **record["figures"], "seconds": {k: v for k, v in record["seconds"].items() if k != "train_phases"}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prompts", default="a red cube")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--representations", default=",".join(REPRESENTATIONS))
    parser.add_argument("--steps", default="nerf=300,gaussians=600", help="steps per representation")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    steps = dict(item.split("=") for item in args.steps.split(","))
    runs = [(m, r, p) for r in args.representations.split(",") for m in args.methods.split(",")
            for p in args.prompts.split(",")]
    result: dict = {"command": " ".join(sys.argv), "runs": []}
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.workers) as pool:
        futures = [pool.submit(one, m, r, p, int(steps[r]), Path(tmp) / f"{m}_{r}_{i}")
                   for i, (m, r, p) in enumerate(runs)]
        for future in futures:
            run = future.result()
            result["runs"].append(run)
            print(json.dumps(run), flush=True)
            args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

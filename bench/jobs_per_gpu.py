"""Assets per hour at N jobs at once on one GPU, through the product's own batch command (issue 27): for each N
of ``--jobs-per-gpu`` (default 1,2,4,8), ``python -m backend batch ROWS --out DIR --jobs-per-gpu N`` runs the same
kind of jobs (N local worker processes, each one job at a time, backend/jobs/slots.py) and this script times it.
JSON out, rewritten after each N (a cut-off run keeps what it finished).

Each N gets max(8, 2 N) rows (two rounds at the largest N, so no N is judged by a half-full GPU), a fresh results
folder and fresh workers, as a user's batch does. Timed per N:
- ``span_s``: from starting the batch command to the last row's job.json saying ``finished`` (polled every
  0.25 s): worker start-up (torch import, CUDA context, prior), training, extraction, bake and files, without the
  summary and contact sheet the command makes afterwards; ``assets_per_hour`` is rows x 3600 / span_s.
- ``wall_s``: the whole command.
- per row: train and finish seconds, torch's allocator peak (job.json), and the GPU's memory in use at its
  highest while the batch ran (nvidia-smi every 0.25 s, all processes: the figure `auto`'s 10 GiB a job is for).
A first one-row batch warms the machine (gsplat's kernel compile, 70 s on a fresh one) and is not timed.

The default rows are the standard preset's Gaussians (512 px renders: a real job's cost per step) cut to 300 steps
so four N fit one 10-minute call; a job's finish (extract, unwrap, bake, write: ~5-8 s) is then a larger share than
in the default 1,500-step asset, which flatters overlap a little. Whether MPS runs is recorded; this script starts
no daemon: the device command starts it (docs/SCALE.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend import records  # noqa: E402
from backend.jobs import slots  # noqa: E402
from shared.status import JobStatus  # noqa: E402

PROMPTS = ("a red cube", "a blue sphere", "a green cylinder", "a yellow cone", "a red torus", "a blue capsule",
           "a green cube", "a yellow sphere")
SETTINGS = {"quality": "standard", "representation": "gaussians", "method": "tbsd", "model": "procedural",
            "steps": 300, "preview_every": 0}


def write_rows(path: Path, count: int, settings: dict[str, Any]) -> None:
    """A batch CSV: ``count`` rows over the suite prompts, seeds 0.. so no two rows are the same job."""
    names = sorted(settings)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "seed", *names])
        for i in range(count):
            writer.writerow([PROMPTS[i % len(PROMPTS)], i, *(settings[n] for n in names)])


def gpu_memory_used_mib() -> int | None:
    """Memory in use on the first visible GPU, all processes (nvidia-smi); None without it."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10)
        return int(out.stdout.split()[0]) if out.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def run_batch(jobs_per_gpu: int, rows: int, settings: dict[str, Any], work: Path, device: str) -> dict[str, Any]:
    folder = work / f"n{jobs_per_gpu}"
    folder.mkdir(parents=True)
    table = folder / "rows.csv"
    write_rows(table, rows, settings)
    out = folder / "results"
    command = [sys.executable, "-m", "backend", "batch", str(table), "--out", str(out), "--device", device,
               "--jobs-per-gpu", str(jobs_per_gpu), "--quiet"]
    log = (folder / "batch.log").open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    done: dict[str, float] = {}
    peak_mib = None
    while proc.poll() is None:
        for job in out.iterdir() if out.is_dir() else ():
            if job.name not in done and (records.read_record(job) or {}).get("status") == JobStatus.FINISHED:
                done[job.name] = time.perf_counter() - t0
        used = gpu_memory_used_mib()
        if used is not None:
            peak_mib = max(peak_mib or 0, used)
        time.sleep(0.25)
    wall = time.perf_counter() - t0
    log.close()
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    per_row = []
    for row in summary.get("results", []):
        record = records.read_record(out / row["folder"]) or {}
        seconds = record.get("seconds") or {}
        per_row.append({"row": row["folder"], "prompt": row["prompt"], "status": row["status"],
                        "worker_pid": record.get("worker_pid"), "done_at_s": done.get(row["folder"]),
                        "load_prior_s": seconds.get("load_prior"), "train_s": seconds.get("train"),
                        "finish_s": seconds.get("finish"), "peak_gpu_memory_gb": record.get("peak_gpu_memory_gb"),
                        "voxel_iou": (row.get("figures") or {}).get("voxel_iou"), "error": row.get("error")})
    finished = sum(r["status"] == JobStatus.FINISHED for r in per_row)
    result: dict[str, Any] = {"jobs_per_gpu": jobs_per_gpu, "rows": rows, "finished": finished,
                              "returncode": proc.returncode, "wall_s": wall, "gpu_memory_used_peak_mib": peak_mib,
                              "workers": len({r["worker_pid"] for r in per_row if r["worker_pid"]})}
    if finished == rows and len(done) == rows:
        result["span_s"] = span = max(done.values())
        result["assets_per_hour"] = rows * 3600.0 / span
        trained = [r["train_s"] + r["finish_s"] for r in per_row if r["train_s"] and r["finish_s"]]
        result["mean_job_s"] = sum(trained) / len(trained)
    else:
        result["log_tail"] = (folder / "batch.log").read_text()[-3000:]
    result["per_row"] = per_row
    return result


def with_ratios(result: dict[str, Any]) -> dict[str, Any]:
    """Each N's assets per hour over N = 1's."""
    base = next((c for c in result["configs"] if c["jobs_per_gpu"] == 1 and c.get("assets_per_hour")), None)
    for c in result["configs"]:
        if base is not None and c.get("assets_per_hour"):
            c["ratio_to_1"] = c["assets_per_hour"] / base["assets_per_hour"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write.")
    parser.add_argument("--jobs-per-gpu", default="1,2,4,8", help="Comma list of N [1,2,4,8].")
    parser.add_argument("--rows", type=int, default=0, help="Rows per N [max(8, 2 N)].")
    parser.add_argument("--settings", default="{}", help="JSON of settings over the rows' (see SETTINGS).")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cpu: a smoke run of this script (the numbers mean nothing) [cuda].")
    parser.add_argument("--no-warmup", action="store_true", help="Skip the untimed one-row batch first.")
    args = parser.parse_args(argv)
    counts = [slots.parse_setting(n) for n in args.jobs_per_gpu.split(",")]
    settings = {**SETTINGS, **json.loads(args.settings)}
    result: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "gpu": subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
                    if shutil.which("nvidia-smi") else None},
        "mps": slots.mps_running(), "auto": None, "settings": settings, "configs": []}
    if args.device == "cuda":
        auto = slots.resolve("auto", "cuda")
        result["auto"] = {"jobs": auto.jobs, "why": auto.why}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tbsd-jobs-per-gpu-") as tmp:
        if not args.no_warmup:
            t0 = time.perf_counter()
            warm = run_batch(1, 1, {**settings, "steps": 20}, Path(tmp) / "warmup", args.device)
            result["warmup"] = {"wall_s": time.perf_counter() - t0, "finished": warm["finished"]}
        for n in counts:
            print(f"== {n} job(s) at once", flush=True)
            config = run_batch(n, args.rows or max(8, 2 * n), settings, Path(tmp), args.device)
            result["configs"].append(config)
            args.out.write_text(json.dumps(with_ratios(result), indent=2))
            print(json.dumps({k: v for k, v in config.items() if k not in ("per_row", "log_tail")}), flush=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

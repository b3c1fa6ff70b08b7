"""Batch throughput through the Ray executor: the same batch of default-preset Gaussian jobs (procedural prior,
TBSD, standard quality) on 1 GPU, then on 2 GPUs, optionally with several actors per GPU (fractional num_gpus);
assets per hour for each configuration and the ratio to the first. JSON out, rewritten after each
configuration (a cut-off run keeps what it finished).

Each configuration starts its own local Ray instance with ``num_gpus`` = its GPU count (Ray hands each actor
its own CUDA_VISIBLE_DEVICES), starts the actors, runs one short warm-up job per actor (CUDA context, gsplat's
kernels, the prior: what a long-lived server pays once), then times the batch from the first submit to the
last job's end. The jobs are the server's (backend/jobs/worker.py through backend/jobs/ray_executor.py):
training, mesh extraction, texture bake and every file of the job written.

On the GPU machine (Python 3.12, torch + CUDA present), carrying from the repository root these ignored paths
(about 56 MiB; .whl holds the Ray wheel repacked without its Java jars, Ray's dependencies in .whl/ray-deps and
the project's own wheels; diffusers is not needed for the procedural prior):

    .whl/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl  .whl/ray-deps  .whl/gsplat-1.5.3-py3-none-any.whl
    .whl/pyzmq-27.3.0-cp312-abi3-manylinux_2_26_x86_64.manylinux_2_28_x86_64.whl
    .whl/xatlas-0.0.11-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
    .whl/PyMCubes-0.1.6-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
    .whl/fast_simplification-0.2.0-cp312-cp312-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl

run, once per GPU count (8 jobs of ~45 s take ~6 min on one GPU, plus gsplat's one-time kernel compile in the
warm-up on a fresh machine, so one call each stays under a call's 10 minutes):

    [ -d /tmp/site/ray ] || python3 -m pip install -q --no-index --no-cache-dir --target /tmp/site \
        --find-links .whl/ray-deps .whl/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl
    [ -d /tmp/site/gsplat ] || python3 -m pip install -q --no-index --no-deps --no-cache-dir --target /tmp/site \
        .whl/gsplat-*.whl .whl/pyzmq-*.whl .whl/xatlas-*.whl .whl/PyMCubes-*.whl .whl/fast_simplification-*.whl
    PYTHONPATH=/tmp/site:. MAX_JOBS=16 python3 bench/batch_throughput.py --configs 1x1 --cpus-per-actor 4 \
        --out $OUT/throughput_1gpu.json
    PYTHONPATH=/tmp/site:. MAX_JOBS=16 python3 bench/batch_throughput.py --configs 2x1,2x2 --cpus-per-actor 4 \
        --out $OUT/throughput_2gpu.json

(`--configs 1x1,2x1` in one call, the default, fits only where the machine is already warm.) Then, on any
machine: ``python bench/batch_throughput.py --merge a.json b.json --out throughput.json`` puts them in one file
with the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = ("a red cube", "a blue sphere", "a green cylinder", "a yellow cone", "a red torus", "a blue capsule",
           "a green cube", "a yellow sphere")


def _config(text: str) -> tuple[int, int]:
    gpus, _, per_gpu = text.partition("x")
    return int(gpus), int(per_gpu or 1)


def _machine() -> dict[str, Any]:
    import ray
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "gpus": gpus, "cpus": os.cpu_count()}


def run_config(gpus: int, per_gpu: int, jobs: int, settings: dict[str, Any], cpus_per_actor: float,
               warmup_steps: int, work: Path, device: str = "cuda") -> dict[str, Any]:
    import ray

    from backend.jobs.executor import Ended, JobSpec
    from backend.jobs.ray_executor import RayExecutor
    from backend.jobs.results import ResultStore
    from shared import protocol as P
    from shared.settings import validate

    ray.init(num_gpus=gpus, num_cpus=os.cpu_count(), include_dashboard=False)
    store = ResultStore(work / f"{gpus}x{per_gpu}")
    executor = RayExecutor(store, device, gpus_per_actor=1.0 / per_gpu, cpus_per_actor=cpus_per_actor)
    stream = P.check_stream({"progress_every": 1000, "preview_size": 16, "preview_views": 1})
    out: dict[str, Any] = {"gpus": gpus, "actors_per_gpu": per_gpu, "jobs": jobs}

    def drive(specs: list[JobSpec]) -> float:
        queue, ended, t0 = list(specs), 0, time.perf_counter()
        while ended < len(specs):
            while queue and executor.idle():
                executor.submit(queue.pop(0))
            for event in executor.events():
                if isinstance(event, Ended):
                    ended += 1
                    if event.status != "finished":
                        raise RuntimeError(f"job {event.job} {event.status}: {store.read_record(event.job)}")
            time.sleep(0.01)
        return time.perf_counter() - t0

    def spec(name: str, prompt: str, values: dict[str, Any]) -> JobSpec:
        return JobSpec(name, "bench", prompt, validate(values), dict(stream), time.strftime("%Y-%m-%dT%H:%M:%SZ"))

    try:
        t0 = time.perf_counter()
        executor.start()
        while not all(s.ready for s in executor.slots):
            executor.events()
            time.sleep(0.05)
        out["actors"] = len(executor.slots)
        out["actor_start_s"] = time.perf_counter() - t0
        warm = [spec(f"warmup-{i}", PROMPTS[i % len(PROMPTS)], {**settings, "steps": warmup_steps})
                for i in range(len(executor.slots))]
        out["warmup_s"] = drive(warm) if warmup_steps > 0 else 0.0
        batch = [spec(f"job-{i:02d}", PROMPTS[i % len(PROMPTS)], {**settings, "seed": i}) for i in range(jobs)]
        out["wall_s"] = wall = drive(batch)
        out["assets_per_hour"] = jobs * 3600.0 / wall
        per_job = []
        for s in batch:
            record = store.read_record(s.id) or {}
            seconds = record.get("seconds") or {}
            per_job.append({"job": s.id, "prompt": s.prompt, "worker": record.get("worker"),
                            "train_s": seconds.get("train"), "finish_s": seconds.get("finish"),
                            "load_prior_s": seconds.get("load_prior"), "prior_loaded": record.get("prior_loaded"),
                            "peak_gpu_memory_gb": record.get("peak_gpu_memory_gb"),
                            "voxel_iou": (record.get("figures") or {}).get("voxel_iou")})
        out["per_job"] = per_job
        out["mean_job_s"] = sum((j["train_s"] or 0) + (j["finish_s"] or 0) for j in per_job) / len(per_job)
    finally:
        executor.shutdown(5.0)
        if ray.is_initialized():
            ray.shutdown()
    return out


def with_ratios(result: dict[str, Any]) -> dict[str, Any]:
    """Each configuration's assets per hour over the first 1-GPU one's (the baseline)."""
    configs = result["configs"]
    base = next((c for c in configs if c["gpus"] == 1 and c.get("assets_per_hour")), None)
    for c in configs:
        if base is not None and c.get("assets_per_hour"):
            c["ratio_to_1_gpu"] = c["assets_per_hour"] / base["assets_per_hour"]
    two = [c for c in configs if c["gpus"] == 2 and c.get("ratio_to_1_gpu")]
    if two:
        result["ratio_2_gpus_over_1"] = max(c["ratio_to_1_gpu"] for c in two)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write.")
    parser.add_argument("--configs", default="1x1,2x1",
                        help="GPUs x actors per GPU, comma separated; 2x2 = 2 GPUs, 2 actors on each (0.5 GPU "
                             "each) [1x1,2x1].")
    parser.add_argument("--jobs", type=int, default=8, help="Jobs in the batch (at least 8 for the study) [8].")
    parser.add_argument("--settings", default="{}",
                        help="JSON of settings over the default preset, e.g. '{\"steps\": 300}' for a quick look.")
    parser.add_argument("--cpus-per-actor", type=float, default=None,
                        help="CPUs each actor holds (its torch threads) [CPUs / the most actors of any config].")
    parser.add_argument("--warmup-steps", type=int, default=20, help="Steps of each actor's warm-up job (0: none).")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cpu: a smoke run of this script on logical GPUs (numbers mean nothing) [cuda].")
    parser.add_argument("--merge", type=Path, nargs="*", default=None,
                        help="Instead of running: combine these earlier outputs into --out with the ratios.")
    args = parser.parse_args(argv)
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        merged = {**parts[0], "configs": [c for p in parts for c in p["configs"]], "merged_from": [str(p) for p in args.merge]}
        args.out.write_text(json.dumps(with_ratios(merged), indent=2))
        print(json.dumps({k: v for k, v in merged.items() if k != "configs"}, indent=2))
        return 0
    configs = [_config(c) for c in args.configs.split(",")]
    cpus = args.cpus_per_actor or max(1.0, float((os.cpu_count() or 1) // max(g * a for g, a in configs)))
    # The default preset on CUDA is standard quality: 1500 Gaussian steps, 512 px renders.
    settings = {"quality": "standard", "representation": "gaussians", "method": "tbsd", "model": "procedural",
                "preview_every": 0, **json.loads(args.settings)}
    result: dict[str, Any] = {"machine": _machine(), "settings": settings, "cpus_per_actor": cpus,
                              "warmup_steps": args.warmup_steps, "configs": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tbsd-throughput-") as tmp:
        for gpus, per_gpu in configs:
            print(f"== {gpus} GPU(s) x {per_gpu} actor(s) each, {args.jobs} jobs", flush=True)
            try:
                config = run_config(gpus, per_gpu, args.jobs, settings, cpus, args.warmup_steps, Path(tmp),
                                    args.device)
            except Exception as exc:  # noqa: BLE001 - a failed configuration is reported, the next one runs
                config = {"gpus": gpus, "actors_per_gpu": per_gpu, "error": f"{type(exc).__name__}: {exc}"}
            result["configs"].append(config)
            args.out.write_text(json.dumps(with_ratios(result), indent=2))
            print(json.dumps({k: v for k, v in config.items() if k != "per_job"}), flush=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Kernel-level profile of whole training steps (where a NeRF or Gaussian step's GPU time goes).

    python bench/profile_step.py --prior procedural --representation nerf --out $OUT/profile_nerf.json

Warms up, then records a few steps with torch.profiler and prints the top operators by CUDA time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from backend.benchmark import RESOLUTION, build_prior, step_settings
from backend.priors.acceleration import Acceleration
from backend.train import Trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prior", default="procedural")
    parser.add_argument("--representation", default="nerf")
    parser.add_argument("--method", default="tbsd")
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=30)
    args = parser.parse_args()
    device = torch.device("cuda")
    prior = build_prior(args.prior, device, Acceleration())
    res = args.resolution or RESOLUTION[args.representation]
    trainer = Trainer(prior, "a red cube", step_settings(args.representation, args.method, res), device=device)
    for _ in range(args.warmup):
        trainer.train_step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU], profile_memory=False) as prof:
        for _ in range(args.steps):
            trainer.train_step()
        torch.cuda.synchronize()
    averages = prof.key_averages()
    print(averages.table(sort_by="cuda_time_total", row_limit=args.rows), flush=True)
    rows = sorted(averages, key=lambda e: e.device_time_total, reverse=True)[: args.rows]
    args.out.write_text(json.dumps({
        "device": torch.cuda.get_device_name(), "prior": args.prior, "representation": args.representation,
        "resolution": res, "steps": args.steps, "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 1e9,
        "rows": [{"name": e.key[:160], "calls_per_step": e.count / args.steps,
                  "ms_per_step": e.device_time_total / args.steps / 1000} for e in rows]}, indent=1))


if __name__ == "__main__":
    main()

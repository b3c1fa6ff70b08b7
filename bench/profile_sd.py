"""Kernel-level profile of the two SD pieces a 3D step runs: the VAE encoder forward+backward at 512x512 and the
UNet at batch 3 (TBSD's three branches), random weights of SD 2.1-base's architecture, fp16, eager.

    python bench/profile_sd.py --out $OUT/profile_sd.json

Prints torch.profiler's table of the top CUDA kernels for each and writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from backend.priors.acceleration import Acceleration
from backend.priors.stable_diffusion import build_random_sd21_base


def top_kernels(fn, repeats: int, rows: int) -> tuple[str, list[dict]]:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    averages = prof.key_averages()
    table = averages.table(sort_by="cuda_time_total", row_limit=rows)
    kernels = sorted(averages, key=lambda e: e.device_time_total, reverse=True)[:rows]
    return table, [{"name": e.key[:160], "count": e.count // repeats,
                    "ms_per_call": e.device_time_total / repeats / 1000} for e in kernels]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--acceleration", default="none",
                        help="Acceleration.parse text; leave out cuda_graphs to see the kernels [none].")
    args = parser.parse_args()
    prior = build_random_sd21_base(device="cuda", acceleration=Acceleration.parse(args.acceleration))
    image = torch.rand(1, 3, 512, 512, device="cuda", requires_grad=True)

    def encoder() -> None:
        latents = prior.encode(image)
        latents.backward(torch.ones_like(latents))

    sample = torch.randn(3, 4, 64, 64, device="cuda", dtype=prior.dtype)
    t = torch.full((3,), 500, device="cuda")
    emb = torch.randn(3, 77, 1024, device="cuda", dtype=prior.dtype)

    def unet() -> None:
        with torch.no_grad():
            prior._unet_call(sample.contiguous(memory_format=torch.channels_last)
                             if prior.acceleration.unet_channels_last else sample, t, emb)

    result = {"device": torch.cuda.get_device_name(), "acceleration": args.acceleration}
    for name, fn in (("encoder_fwd_bwd_512", encoder), ("unet_batch3", unet)):
        table, rows = top_kernels(fn, args.repeats, args.rows)
        print(f"== {name}\n{table}", flush=True)
        result[name] = rows
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

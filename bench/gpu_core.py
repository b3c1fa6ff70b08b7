"""GPU measurement of the score-distillation core (run through the device tool).

For every method: ms per step of
- the 2D experiment in SD latent space (random weights of SD 2.1-base's full architecture, fp16),
- a "3D-shaped" step: a 512x512 RGB parameter encoded by the VAE with gradient, then the method,
- the 2D experiment on the procedural prior on CUDA (checks the CUDA path end to end, with figures),
and the peak GPU memory of each. Writes JSON.

    python bench/gpu_core.py --out $OUT/gpu_core.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from backend.distill.step import DistillConfig, distillation_loss, prompt_set
from backend.image2d import optimise_image
from backend.metrics import image_figures
from backend.priors.procedural.prior import ProceduralPrior
from backend.priors.procedural.world import ground_truth
from backend.priors.stable_diffusion import build_random_sd21_base
from backend.scene.cameras import front_view
from shared.settings import METHODS, validate


def _time_steps(step_fn, warmup: int, steps: int) -> float:
    for i in range(warmup):
        step_fn(i)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        step_fn(warmup + i)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps * 1000


def sd_method_timings(prior, method: str, warmup: int, steps: int) -> dict:
    settings = validate({"method": method})
    prompts = prompt_set("a photograph of an astronaut riding a horse", settings)
    gen = torch.Generator().manual_seed(0)
    out = {}
    cases = {
        # 2D experiment: the latent itself is the parameter.
        "latent": (torch.randn(1, *prior.sample_shape, device="cuda"), 0.03, lambda p: p),
        # 3D-shaped: an RGB render at 512 goes through the VAE encoder with gradient.
        "encode512": (torch.rand(1, 3, 512, 512, device="cuda"), 0.01, prior.encode),
    }
    distill = DistillConfig.from_settings(settings)
    for name, (init, lr, to_sample) in cases.items():
        param = torch.nn.Parameter(init)
        opt = torch.optim.Adam([param], lr=lr)

        def step(i: int) -> None:
            r = distillation_loss(prior, to_sample(param), prompts, distill, progress=i / 100, generator=gen)
            opt.zero_grad(set_to_none=True)
            r.loss.backward()
            opt.step()

        torch.cuda.reset_peak_memory_stats()
        out[f"{name}_ms_per_step"] = _time_steps(step, warmup, steps)
        out[f"{name}_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "sd21_base_random_fp16": {},
              "procedural_cuda": {}}
    t0 = time.perf_counter()
    prior = build_random_sd21_base(device="cuda")
    result["sd_build_seconds"] = time.perf_counter() - t0
    for method in METHODS:
        result["sd21_base_random_fp16"][method] = sd_method_timings(prior, method, args.warmup, args.steps)
        print(method, {k: round(v, 2) for k, v in result["sd21_base_random_fp16"][method].items()}, flush=True)
    del prior
    torch.cuda.empty_cache()
    proc = ProceduralPrior(device="cuda")
    truth = ground_truth("a red cube", front_view(1), proc.resolution)[0][0]
    for method in METHODS:
        run = optimise_image(proc, "a red cube", validate({"method": method}))
        result["procedural_cuda"][method] = {"seconds": run.seconds,
                                             "ms_per_step": run.seconds / len(run.trace) * 1000,
                                             **image_figures(run.image, truth)}
        print("procedural", method, {k: round(v, 3) for k, v in result["procedural_cuda"][method].items()}, flush=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

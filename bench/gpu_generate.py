"""GPU end-to-end runs of `generate` on both representations (run through the device tool). Writes JSON.

For the procedural prior and for random weights of SD 2.1-base's architecture (fp16), on NeRF and on
3D Gaussians (gsplat): steps/s, time per phase, peak GPU memory, and for the procedural prior the
figures against the true shape.

    python bench/gpu_generate.py --out $OUT/gpu_generate.json --steps 1000 --sd-steps 200
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from backend.jobs.runner import JobPlan, fixed_prior, run_job
from backend.priors.procedural.prior import ProceduralPrior
from backend.priors.stable_diffusion import build_random_sd21_base
from shared.settings import validate


def one(prior, prompt: str, settings: dict, device: torch.device) -> dict:
    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        record = run_job(JobPlan(prompt, settings, Path(tmp), checkpoint=False), device, fixed_prior(prior)).record
        record["seconds"]["total"] = time.perf_counter() - t0
    keep = ("steps_done", "steps_per_second", "seconds", "peak_gpu_memory_gb", "figures", "mesh", "export")
    return {k: record[k] for k in keep if k in record}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--sd-steps", type=int, default=200)
    parser.add_argument("--prompts", default="a red cube,a blue sphere,a green torus")
    parser.add_argument("--representations", default="gaussians,nerf")
    parser.add_argument("--skip-procedural", action="store_true")
    parser.add_argument("--sd-settings", type=json.loads, default={},
                        help='extra settings for the SD runs as JSON, e.g. \'{"render_res_end": 128}\'')
    args = parser.parse_args()
    device = torch.device("cuda")
    result: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": []}
    procedural = ProceduralPrior(device=device)
    representations = args.representations.split(",")
    for representation in representations if not args.skip_procedural else []:
        for prompt in args.prompts.split(","):
            settings = validate({"representation": representation, "steps": args.steps})
            run = {"prior": "procedural", "representation": representation, "prompt": prompt,
                   **one(procedural, prompt, settings, device)}
            result["runs"].append(run)
            print(json.dumps({k: run[k] for k in ("representation", "prompt", "steps_per_second", "figures",
                                                  "peak_gpu_memory_gb")}), flush=True)
            args.out.write_text(json.dumps(result, indent=1))
    sd = build_random_sd21_base(device=device)
    for representation in representations:
        settings = validate({"representation": representation, "steps": args.sd_steps, "model": "sd21-base-random",
                             **args.sd_settings})
        run = {"prior": "sd21-base-random-fp16", "representation": representation, "settings": args.sd_settings,
               **one(sd, "a photograph of an astronaut riding a horse", settings, device)}
        result["runs"].append(run)
        print(json.dumps({k: run[k] for k in ("representation", "steps_per_second", "seconds", "peak_gpu_memory_gb")}),
              flush=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Every method's 2D experiment on the procedural prior against the ground truth (CPU). Writes JSON.

    python bench/methods_2d.py --out bench/results/methods_2d.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from backend.image2d import optimise_image
from backend.metrics import image_figures
from backend.priors.procedural.prior import ProceduralPrior
from backend.priors.procedural.world import ground_truth
from backend.scene.cameras import front_view
from shared.settings import METHODS, validate

PROMPTS = ("a red cube", "a blue sphere", "a green torus")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    prior = ProceduralPrior()
    truths = {p: ground_truth(p, front_view(1), prior.resolution)[0][0] for p in PROMPTS}
    result: dict = {"created": time.strftime("%Y-%m-%d %H:%M"), "steps": validate({})["image_steps"], "methods": {}}
    for method in METHODS:
        per_prompt = {}
        for prompt in PROMPTS:
            run = optimise_image(prior, prompt, validate({"method": method}))
            per_prompt[prompt] = {**image_figures(run.image, truths[prompt]), "seconds": run.seconds}
            mus = [r["mgda_weight"] for r in run.trace if "mgda_weight" in r]
            if mus:
                k = max(1, len(mus) // 10)
                per_prompt[prompt]["mu_start_middle_end"] = [statistics.fmean(mus[:k]),
                                                              statistics.fmean(mus[len(mus) // 2 - k // 2:][:k]),
                                                              statistics.fmean(mus[-k:])]
        mean = {k: statistics.fmean(v[k] for v in per_prompt.values())
                for k in ("silhouette_iou", "colour_error", "background_error", "seconds")}
        result["methods"][method] = {"mean": mean, "prompts": per_prompt}
        print(method, {k: round(v, 3) for k, v in mean.items()}, flush=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Study of TBSD's unpublished alpha, beta, gamma on the procedural prior (2D experiment, CPU).

For each combination: silhouette IoU, colour error and background error against the ground
truth, and the MGDA weight mu over the run (start / middle / end tenth). Writes JSON.

    python bench/tbsd_defaults.py --out bench/tbsd_defaults.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

from backend.image2d import optimise_image
from backend.metrics import image_figures
from backend.priors.procedural.prior import ProceduralPrior
from backend.priors.procedural.world import ground_truth
from backend.scene.cameras import front_view
from shared.settings import validate

PROMPTS = ("a red cube", "a blue sphere", "a green torus")


def _window_means(values: list[float]) -> dict[str, float]:
    n = len(values)
    k = max(1, n // 10)
    mid = n // 2
    return {"start": statistics.fmean(values[:k]), "middle": statistics.fmean(values[mid - k // 2 : mid - k // 2 + k]),
            "end": statistics.fmean(values[-k:])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--alphas", default="1,2,4,8")
    parser.add_argument("--betas", default="0.25,0.5")
    parser.add_argument("--gammas", default="0.1,0.5,1")
    args = parser.parse_args()
    prior = ProceduralPrior()
    truths = {p: ground_truth(p, front_view(1), prior.resolution)[0][0] for p in PROMPTS}
    rows = []
    grid = itertools.product(*(map(float, s.split(",")) for s in (args.alphas, args.betas, args.gammas)))
    for alpha, beta, gamma in grid:
        if gamma > alpha:
            continue
        settings = validate({"method": "tbsd", "tbsd_alpha": alpha, "tbsd_beta": beta, "tbsd_gamma": gamma})
        per_prompt = {}
        for prompt in PROMPTS:
            run = optimise_image(prior, prompt, settings)
            per_prompt[prompt] = {
                **image_figures(run.image, truths[prompt]),
                "mu": _window_means([r["mgda_weight"] for r in run.trace]),
                "seconds": run.seconds,
            }
        summary = {k: statistics.fmean(v[k] for v in per_prompt.values())
                   for k in ("silhouette_iou", "colour_error", "background_error")}
        rows.append({"alpha": alpha, "beta": beta, "gamma": gamma, "mean": summary, "prompts": per_prompt})
        print(alpha, beta, gamma, {k: round(v, 3) for k, v in summary.items()}, flush=True)
    args.out.write_text(json.dumps({"created": time.strftime("%Y-%m-%d %H:%M"), "steps": settings["image_steps"],
                                    "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

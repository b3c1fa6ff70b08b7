"""`python build.py demo`: the best end-to-end run the backend has so far.

Today that is the papers' 2D experiment on the embedded procedural prior: every method
optimises "a red cube" and the results are written side by side with the ground truth,
with each method's figures against it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from backend.image2d import optimise_image
from backend.images import save_png, side_by_side
from backend.metrics import image_figures
from backend.priors.procedural.prior import ProceduralPrior
from backend.priors.procedural.world import ground_truth
from backend.scene.cameras import front_view
from shared.settings import METHODS, validate


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--prompt", default="a red cube")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    prior = ProceduralPrior()
    truth = ground_truth(args.prompt, front_view(1), prior.resolution)[0][0]
    images, report = [truth], {}
    for method in METHODS:
        run = optimise_image(prior, args.prompt, validate({"method": method}))
        save_png(run.image, args.out / f"{method}.png")
        figures = image_figures(run.image, truth)
        report[method] = {**figures, "seconds": round(run.seconds, 2)}
        images.append(run.image)
        print(f"{method:7s} " + "  ".join(f"{k} {v:.3f}" for k, v in report[method].items()), flush=True)
    save_png(side_by_side(images, scale=4), args.out / "comparison.png")
    (args.out / "figures.json").write_text(json.dumps({"prompt": args.prompt, "methods": report}, indent=2))
    print(f"comparison (ground truth, then {', '.join(METHODS)}): {args.out / 'comparison.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

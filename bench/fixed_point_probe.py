"""What each method's terms do at the right answer: the procedural prior's exact branches at x = the true render.

For each t, draws noise, noises the true render of PROMPT and reports the norm of the mean (over draws) and the mean
norm of TBSD's d_s = e_tgt - e_null and d_t = e_tgt - e_tnp, and of SDS's e_tgt - eps (docs/METHODS.md, "Why:
classifier-only directions have no fixed point at the target"). JSON out, one row per t.

    python bench/fixed_point_probe.py --out bench/results/quality/fixed_point_probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.priors.base import PromptSet  # noqa: E402
from backend.priors.procedural import world  # noqa: E402
from backend.priors.procedural.prior import ProceduralPrior  # noqa: E402
from backend.scene.cameras import orbit_views  # noqa: E402
from shared.settings import TARGET_NEGATIVE_DESCRIPTORS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prompt", default="a yellow cylinder")
    parser.add_argument("--timesteps", default="50,200,400,600,620,660,700,740,780,800,900,950,980")
    parser.add_argument("--draws", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    prior = ProceduralPrior(resolution=64)
    view = orbit_views([30.0], [20.0], [2.0], [40.0])
    image, _ = world.ground_truth(args.prompt, view, 64)
    x = prior.encode(image)
    prompts = PromptSet(target=args.prompt, negative="", target_negative_descriptors=TARGET_NEGATIVE_DESCRIPTORS)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for t in (int(v) for v in args.timesteps.split(",")):
        abar = prior.alphas_cumprod[t]
        terms: dict[str, list[torch.Tensor]] = {"d_s": [], "d_t": [], "e_tgt_minus_eps": []}
        for _ in range(args.draws):
            eps = torch.randn(x.shape, generator=gen)
            x_t = abar.sqrt() * x + (1 - abar).sqrt() * eps
            out = prior.predict_noise(x_t, torch.tensor([t]), prompts, ["target", "null", "target_negative"], view)
            terms["d_s"].append(out["target"] - out["null"])
            terms["d_t"].append(out["target"] - out["target_negative"])
            terms["e_tgt_minus_eps"].append(out["target"] - eps)
        row = {"t": t, "abar": float(abar)}
        for name, values in terms.items():
            stacked = torch.stack(values).flatten(1)
            row[name] = {"norm_of_mean": float(stacked.mean(0).norm()), "mean_norm": float(stacked.norm(dim=1).mean())}
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "prompt": args.prompt, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

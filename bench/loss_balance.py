"""How strong is the prior's pull beside the regularisers? Gradient norms of each loss term on a 3D run's parameters.

With Adam only the ratio between the terms matters: a prior whose distillation gradient is weak beside the sparsity
and orientation terms lets those terms shape the object (the sparsity term shrinks it). This probe builds the run a
job would build (same settings, seed, cameras), renders and scores ``--steps`` steps WITHOUT updating, and reports per
term the mean norm of its gradient on all parameters, for each prior named.

    python bench/loss_balance.py --models procedural,world-sd --representation nerf --out balance.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.distill.step import distillation_loss  # noqa: E402
from backend.priors import load_prior  # noqa: E402
from backend.train import Trainer, orientation_weight, render_resolution  # noqa: E402
from shared.settings import validate  # noqa: E402


def _grad_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))


def balance(model: str, prompt: str, settings: dict, steps: int, progress: float) -> dict[str, float]:
    prior = load_prior(model, "cpu", procedural_resolution=settings["procedural_resolution"])
    trainer = Trainer(prior, prompt, settings, device="cpu")
    params = [p for g in trainer.optimiser.param_groups for p in g["params"] if p.requires_grad]
    norms: dict[str, list[float]] = {}
    for _ in range(steps):
        views, angles = trainer._views()
        res = render_resolution(progress, settings, prior.image_size)
        out = trainer.scene.render(views, res, res, trainer._shading())
        x = prior.encode(out.rgb)
        distill = torch.zeros(())
        for prompts, idx in trainer._prompt_groups(angles):
            result = distillation_loss(prior, x[idx], prompts, trainer.distill, progress, trainer.generator,
                                       views.select(idx) if prior.camera_aware else None)
            distill = distill + result.loss * len(idx) / len(angles)
        terms = {"distillation": distill}
        if "orientation" in out.losses:
            terms["orientation"] = orientation_weight(progress, settings) * out.losses["orientation"]
        for name in ("sparsity", "translucency"):
            if settings[f"lambda_{name}"] > 0 and name in out.losses:
                terms[name] = settings[f"lambda_{name}"] * out.losses[name]
        for name, loss in terms.items():
            norms.setdefault(name, []).append(_grad_norm(loss, params))
    row = {name: statistics.mean(v) for name, v in norms.items()}
    row["sample_elements"] = int(torch.tensor(prior.sample_shape).prod())
    row["render_res"] = render_resolution(progress, settings, prior.image_size)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="procedural,world-sd")
    parser.add_argument("--representation", default="nerf")
    parser.add_argument("--quality", default="standard")
    parser.add_argument("--prompt", default="a red cube")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--progress", default="0.0,0.6", help="Run fractions to probe (schedules depend on it).")
    parser.add_argument("--settings", default="{}")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for model in args.models.split(","):
        settings = validate({"representation": args.representation, "quality": args.quality,
                             **json.loads(args.settings)})
        for p in (float(v) for v in args.progress.split(",")):
            row = {"model": model, "progress": p, **balance(model, args.prompt, settings, args.steps, p)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which object size does a prior prefer? The denoising loss of the TRUE object rendered at scale s.

A camera-unaware prior (Stable Diffusion, world-SD) is told the view's azimuth and elevation in words but not its
distance or field of view, so nothing in it fixes how large the object is: the training images show the same object
at every apparent size the camera band makes. This probe renders the true object from the product's training cameras
with the object scaled by ``s`` (the camera moved to ``distance / s``), and measures the prior's conditional denoising
loss ``E_t,eps ||eps_hat(x_t; prompt + view words) - eps||^2`` with the same noises for every ``s``. Score
distillation descends this loss's gradient (up to the UNet Jacobian), so its minimum over ``s`` is the size the prior
pulls a 3D object towards, and its curvature how hard. The procedural prior (camera-aware, exact) is the reference.

    python bench/world_sd_scale_probe.py --model world-sd --out bench/results/world_sd/scale_probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.priors import load_prior  # noqa: E402
from backend.priors.base import PromptSet  # noqa: E402
from backend.priors.procedural import world  # noqa: E402
from backend.scene.cameras import CameraConfig, Views, orbit_views, sample_orbit_views, view_suffix  # noqa: E402
from shared.settings import defaults  # noqa: E402


def scaled_views(views: Views, angles: list[tuple[float, float]], distances: torch.Tensor, scale: float) -> Views:
    """The same cameras with the object ``scale`` times larger: each camera ``scale`` times nearer, light kept."""
    az = torch.tensor([a for a, _ in angles])
    el = torch.tensor([e for _, e in angles])
    return orbit_views(az, el, distances / scale, torch.rad2deg(views.fovy), light_dir=views.light_dir,
                       ambient=views.ambient)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="world-sd")
    parser.add_argument("--prompts", default="a red cube;a blue sphere;a green cylinder;an orange cone;a pink torus;"
                                             "a cyan capsule")
    parser.add_argument("--scales", default="0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.35")
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--noises", type=int, default=4, help="Noise draws per view and timestep.")
    parser.add_argument("--timesteps", default="100,200,300,400,500,600,700,800,900")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    prior = load_prior(args.model, args.device)
    settings = defaults()
    scales = [float(s) for s in args.scales.split(",")]
    timesteps = [int(t) for t in args.timesteps.split(",")]
    gen = torch.Generator().manual_seed(args.seed)
    views, angles = sample_orbit_views(args.views, CameraConfig.from_settings(settings), gen)
    # Distances back from the camera positions (sample_orbit_views draws them inside).
    distances = views.origins.norm(dim=-1)
    dev_views = views.to(prior.device)
    result = {"model": args.model, "scales": scales, "timesteps": timesteps, "views": args.views,
              "noises": args.noises, "prompts": {}}
    for prompt in [p.strip() for p in args.prompts.split(";") if p.strip()]:
        latents = []
        for s in scales:
            image, _ = world.ground_truth(prompt, scaled_views(views, angles, distances, s), prior.image_size)
            with torch.no_grad():
                latents.append(prior.encode(image.clamp(0, 1).to(prior.device)))
        losses = torch.zeros(len(scales), len(timesteps))
        noise = torch.randn((args.noises,) + tuple(latents[0].shape), generator=gen).to(prior.device)
        with torch.no_grad():
            for j, t in enumerate(timesteps):
                abar = prior.alphas_cumprod[t].float()
                tt = torch.full((latents[0].shape[0],), t, dtype=torch.long, device=prior.device)
                for i, x0 in enumerate(latents):
                    for k in range(args.noises):
                        eps = noise[k].to(x0.dtype)
                        xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
                        err = 0.0
                        # One call per view-word group, as the trainer makes them.
                        groups: dict[str, list[int]] = {}
                        for v, (az, el) in enumerate(angles):
                            groups.setdefault(view_suffix(az, el), []).append(v)
                        for suffix, idx in groups.items():
                            pred = prior.predict_noise(xt[idx], tt[idx], PromptSet(prompt + suffix), ["target"],
                                                       dev_views.select(idx) if prior.camera_aware else None)["target"]
                            err += float(((pred.float() - eps[idx].float()) ** 2).sum())
                        losses[i, j] += err / (args.noises * eps.numel())
        total = losses.mean(dim=1)
        best = scales[int(total.argmin())]
        result["prompts"][prompt] = {"loss_by_scale": [round(float(v), 5) for v in total],
                                     "loss_by_scale_and_t": [[round(float(v), 5) for v in row] for row in losses],
                                     "preferred_scale": best}
        print(json.dumps({"prompt": prompt, "preferred_scale": best,
                          "loss_by_scale": [round(float(v), 4) for v in total]}), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which size does a method's distillation pull an object towards? The force along scale on the TRUE object.

No training: the true object of a prompt is rendered (the world's own renderer) scaled by ``k`` about the origin from
cameras drawn as a 3D run draws them (``sample_orbit_views`` at the preset's settings), encoded as a training step
encodes it, and the method's distillation gradient g = dL/dx (``distillation_loss``, exactly as ``Trainer.train_step``
calls it, view words included) is projected on the latent's derivative along the scale:

    dL/dk = < dL/dx, (encode(render(k + d)) - encode(render(k - d))) / 2d >

(the encoder's Jacobian applied to the render's change, by central differences). Scaling a centred object by k is
rendered as the camera moved to distance / k with the same field of view (exactly equivalent). The force is -dL/dk
per view (a batch of one view, the product's ``views_per_step``): positive means the prior wants the object bigger.
The same timesteps and noises serve every k (common random numbers), so the curve over k is smooth. The stable
equilibrium is where the mean force crosses zero from + to - (linear interpolation).

Camera variants (probe options only, the product's defaults are unchanged):
- ``default``: the preset's sampling (distance and fovy independent and uniform);
- ``relative``: threestudio's relative radius: distance = c / tan(fovy / 2), so the unit box has one apparent size in
  every view, c chosen so the mean distance over the fovy band is the band's mean distance;
- ``fixed_fov``: fovy fixed at the band's mean, the distance band unchanged.

``--sample-size`` adds a 2D check: the foreground share (world-SD's judge's threshold) of the prior's own DDIM samples
against the world's renders from world-SD's training cameras, for the same prompts.

    python bench/scale_probe.py --models world-sd,procedural --views 32 --draws 2 \
        --variants default --sample-size 8 --out part1.json
    python bench/scale_probe.py --models world-sd --views 32 --draws 2 \
        --variants relative,fixed_fov --variant-methods tbsd,sds --out part2.json

(each about 20-35 minutes on 2 CPU cores; bench/results/world_sd/scale_probe_cpu_s16.json merges the two, part 2
stopped by the clock after 13 of its 16 rows: fixed_fov lacks the white sphere's SDS and the green cone).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.distill.step import DistillConfig, distillation_loss, prompt_set  # noqa: E402
from backend.priors import load_prior  # noqa: E402
from backend.priors.base import DiffusionPrior, PromptSet  # noqa: E402
from backend.priors.procedural import world  # noqa: E402
from backend.scene.cameras import CameraConfig, Views, orbit_views, sample_orbit_views, view_suffix  # noqa: E402
from backend.train import render_resolution  # noqa: E402
from shared.settings import validate  # noqa: E402

VARIANTS = ("default", "relative", "fixed_fov")


def probe_views(n: int, settings: dict, variant: str, generator: torch.Generator) -> tuple[Views, list, Tensor, Tensor]:
    """``n`` training cameras as a run samples them, changed by ``variant``: views, (azimuth, elevation) per view,
    distances and fovy (degrees)."""
    views, angles = sample_orbit_views(n, CameraConfig.from_settings(settings), generator)
    distance = views.origins.norm(dim=-1)
    fovy = torch.rad2deg(views.fovy)
    lo, hi = settings["camera_fovy_min"], settings["camera_fovy_max"]
    mean_distance = (settings["camera_distance_min"] + settings["camera_distance_max"]) / 2
    if variant == "relative":
        # E[1 / tan(fovy / 2)] over the uniform fovy band, numerically, so the mean distance stays at the band's.
        grid = torch.linspace(lo, hi, 1001)
        c = mean_distance / float((1 / torch.tan(torch.deg2rad(grid) / 2)).mean())
        distance = c / torch.tan(torch.deg2rad(fovy) / 2)
    elif variant == "fixed_fov":
        fovy = torch.full_like(fovy, (lo + hi) / 2)
    elif variant != "default":
        raise ValueError(f"unknown camera variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    return views, angles, distance, fovy


def scaled(views: Views, angles: list, distance: Tensor, fovy: Tensor, k: float) -> Views:
    """The same cameras and lights with the object ``k`` times larger: each camera ``k`` times nearer."""
    az = torch.tensor([a for a, _ in angles])
    el = torch.tensor([e for _, e in angles])
    return orbit_views(az, el, distance / k, fovy, light_dir=views.light_dir, ambient=views.ambient)


def equilibrium(ks: list[float], force: list[float]) -> float | None:
    """The first k where the force crosses from + to - (a stable size), linearly interpolated; None if none."""
    for (k0, f0), (k1, f1) in zip(zip(ks, force), zip(ks[1:], force[1:])):
        if f0 > 0 >= f1:
            return round(k0 + (k1 - k0) * f0 / (f0 - f1), 4)
    return None


def pooled(rows: list[dict], ks: list[float]) -> list[dict]:
    """Per (model, variant, method): the force averaged over the prompts (standard errors combined) and its
    equilibrium."""
    out = []
    for key in dict.fromkeys((r["model"], r["variant"], r["method"]) for r in rows):
        sel = [r for r in rows if (r["model"], r["variant"], r["method"]) == key]
        force = [statistics.mean(r["force"][i] for r in sel) for i in range(len(ks))]
        se = [math.sqrt(sum(r["force_se"][i] ** 2 for r in sel)) / len(sel) for i in range(len(ks))]
        out.append({"model": key[0], "variant": key[1], "method": key[2], "prompts": len(sel),
                    "force": [round(v, 4) for v in force], "force_se": [round(v, 4) for v in se],
                    "equilibrium": equilibrium(ks, force)})
    return out


def apparent_size(distance: tuple[float, float], fovy: tuple[float, float], n: int = 200_000,
                  seed: int = 0) -> dict:
    """The distribution of the unit box's apparent size 1 / (distance tan(fovy / 2)) over a uniform camera band:
    mean, median and mode (histogram peak). The product of two independent draws is not 1/x of one uniform, so
    its mode is inside the band, not at its smallest size."""
    gen = torch.Generator().manual_seed(seed)
    d = distance[0] + (distance[1] - distance[0]) * torch.rand(n, generator=gen)
    f = torch.deg2rad(fovy[0] + (fovy[1] - fovy[0]) * torch.rand(n, generator=gen))
    s = 1 / (d * torch.tan(f / 2))
    hist = torch.histc(s, bins=60, min=float(s.min()), max=float(s.max()))
    width = float(s.max() - s.min()) / 60
    mode = float(s.min()) + (int(hist.argmax()) + 0.5) * width
    return {"mean": round(float(s.mean()), 4), "median": round(float(s.median()), 4), "mode": round(mode, 4),
            "min": round(float(s.min()), 4), "max": round(float(s.max()), 4)}


def prompt_groups(prior: DiffusionPrior, prompt: str, settings: dict, angles: list) -> list[tuple[PromptSet, list[int]]]:
    """The trainer's grouping (``Trainer._prompt_groups``): view words split a camera-unaware prior's batch."""
    if prior.camera_aware or not settings["view_prompts"]:
        return [(prompt_set(prompt, settings), list(range(len(angles))))]
    groups: dict[str, list[int]] = {}
    for i, (az, el) in enumerate(angles):
        groups.setdefault(view_suffix(az, el), []).append(i)
    return [(prompt_set(prompt + s, settings), idx) for s, idx in groups.items()]


def force_curve(prior: DiffusionPrior, latents: dict[float, Tensor], ks: list[float], delta: float, views: Views,
                angles: list, prompt: str, settings: dict, progresses: list[float], draws: int,
                seed: int) -> dict:
    """Per k the force -dL/dk averaged over views, progresses and draws, with its standard error over views."""
    distill = DistillConfig.from_settings(settings)
    groups = prompt_groups(prior, prompt, settings, angles)
    means, errors, by_progress = [], [], []
    for k in ks:
        x = latents[k].clone().requires_grad_(True)
        dx = (latents[round(k + delta, 6)] - latents[round(k - delta, 6)]) / (2 * delta)
        per_view = torch.zeros(len(progresses), draws, len(angles))
        for i, p in enumerate(progresses):
            for j in range(draws):
                # The same timesteps and noises for every k and method: only the render changes along the curve.
                gen = torch.Generator().manual_seed(seed * 7919 + i * 101 + j)
                for prompts, idx in groups:
                    result = distillation_loss(prior, x[idx], prompts, distill, p, gen,
                                               views.select(idx) if prior.camera_aware else None)
                    (g,) = torch.autograd.grad(result.loss, x)
                    # The loss averages its batch; a run's batch is one view, so undo the average per view.
                    dl = (g[idx] * dx[idx]).flatten(1).sum(1) * len(idx)
                    per_view[i, j, idx] = -dl
        view_means = per_view.mean(dim=(0, 1))
        means.append(float(view_means.mean()))
        errors.append(float(view_means.std() / math.sqrt(len(angles))))
        by_progress.append([round(float(v), 5) for v in per_view.mean(dim=(1, 2))])
    return {"force": [round(v, 5) for v in means], "force_se": [round(v, 5) for v in errors],
            "force_by_progress": by_progress, "equilibrium": equilibrium(ks, means)}


def sample_sizes(prior: DiffusionPrior, prompts: list[str], samples: int, steps: int, seed: int,
                 settings: dict) -> dict:
    """Foreground share of the prior's DDIM samples vs the world's renders from world-SD's training cameras."""
    from backend.priors import sampling
    from backend.worldsd.data import CameraBand
    from backend.worldsd.judge import foreground

    gen = torch.Generator().manual_seed(seed)
    views, angles = sample_orbit_views(64, CameraConfig.from_settings(CameraBand().settings()), gen)
    geometry = world.render_shapes(views, prior.image_size)
    out = {}
    for prompt in prompts:
        meaning = world.parse_prompt(prompt)
        comp = world.Component(meaning.shapes[0], meaning.colours[0])
        renders = world.compose(geometry, (comp,))[:, 0]
        render_fg = [float(foreground(img).mean()) for img in renders]
        sample_fg = []
        for s in range(samples):
            az, el = angles[s]
            g = torch.Generator().manual_seed(seed + 1000 + s)
            with torch.no_grad():
                img = sampling.ddim_sample(prior, prompt_set(prompt + view_suffix(az, el), settings), g, steps=steps)
            sample_fg.append(float(foreground(img).mean()))
        out[prompt] = {"render_fg_mean": round(statistics.mean(render_fg), 4),
                       "render_fg_se": round(statistics.stdev(render_fg) / math.sqrt(len(render_fg)), 4),
                       "sample_fg_mean": round(statistics.mean(sample_fg), 4),
                       "sample_fg_se": round(statistics.stdev(sample_fg) / math.sqrt(len(sample_fg)), 4),
                       "sample_fg": [round(v, 4) for v in sample_fg]}
        # Linear size ratio: the foreground share scales with the square of the apparent size.
        out[prompt]["linear_size_ratio"] = round(math.sqrt(out[prompt]["sample_fg_mean"]
                                                           / out[prompt]["render_fg_mean"]), 3)
        print(json.dumps({"sample_size": prompt, **{k: v for k, v in out[prompt].items() if k != "sample_fg"}}),
              flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="world-sd,procedural")
    parser.add_argument("--prompts", default="a red cube;a blue torus;a white sphere;a green cone")
    parser.add_argument("--methods", default="tbsd,sds")
    parser.add_argument("--quality", default="draft")
    parser.add_argument("--representation", default="nerf")
    parser.add_argument("--scales", default="0.7,0.8,0.9,1.0,1.1,1.2,1.3")
    parser.add_argument("--delta", type=float, default=0.05, help="Half-step of the central difference along k.")
    parser.add_argument("--views", type=int, default=48)
    parser.add_argument("--draws", type=int, default=2, help="Noise and timestep draws per view and progress.")
    parser.add_argument("--progress", default="0.2,0.5,0.8")
    parser.add_argument("--variants", default="default,relative,fixed_fov", help=f"Camera variants: {VARIANTS}.")
    parser.add_argument("--variant-models", default="world-sd", help="Models probed with the non-default variants.")
    parser.add_argument("--variant-methods", default="tbsd", help="Methods probed with the non-default variants.")
    parser.add_argument("--sample-size", type=int, default=0, help="DDIM samples per prompt for the 2D size check.")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", default="{}", help="JSON object of settings over the preset (e.g. tbsd_anchor)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    ks = [float(v) for v in args.scales.split(",")]
    progresses = [float(v) for v in args.progress.split(",")]
    prompts = [p.strip() for p in args.prompts.split(";") if p.strip()]
    methods = args.methods.split(",")
    variants = args.variants.split(",")
    base = validate({**json.loads(args.settings), "quality": args.quality, "representation": args.representation})
    points = sorted({round(v, 6) for k in ks for v in (k - args.delta, k, k + args.delta)})
    result = {"command": " ".join(sys.argv), "scales": ks, "delta": args.delta, "views": args.views,
              "draws": args.draws, "progress": progresses, "quality": args.quality,
              "settings": json.loads(args.settings), "rows": []}
    start = time.time()
    for model in args.models.split(","):
        prior = load_prior(model, "cpu", procedural_resolution=base["procedural_resolution"])
        res = render_resolution(progresses[0], base, prior.image_size)
        if any(render_resolution(p, base, prior.image_size) != res for p in progresses):
            raise SystemExit("the render resolution changes over these progresses; probe them separately")
        for variant in variants if model in args.variant_models.split(",") else ["default"]:
            views, angles, distance, fovy = probe_views(args.views, base, variant,
                                                        torch.Generator().manual_seed(args.seed))
            # Geometry of every shape at every k (colour-free), shared by the prompts.
            geometry = {k: world.render_shapes(scaled(views, angles, distance, fovy, k), res) for k in points}
            for prompt in prompts:
                meaning = world.parse_prompt(prompt)
                comp = world.Component(meaning.shapes[0], meaning.colours[0])
                with torch.no_grad():
                    latents = {k: prior.encode(world.compose(g, (comp,))[:, 0]) for k, g in geometry.items()}
                for method in methods if variant == "default" else args.variant_methods.split(","):
                    settings = validate({**base, "method": method})
                    row = {"model": model, "variant": variant, "prompt": prompt, "method": method,
                           **force_curve(prior, latents, ks, args.delta, views, angles, prompt, settings, progresses,
                                         args.draws, args.seed)}
                    k1 = ks.index(1.0) if 1.0 in ks else None
                    if k1 is not None:
                        row["force_at_1"], row["force_at_1_se"] = row["force"][k1], row["force_se"][k1]
                    row["seconds"] = round(time.time() - start, 1)
                    print(json.dumps({k: v for k, v in row.items() if k != "force_by_progress"}), flush=True)
                    result["rows"].append(row)
                    if args.out:  # written as it goes, so a run cut short still leaves its rows
                        args.out.parent.mkdir(parents=True, exist_ok=True)
                        args.out.write_text(json.dumps(result, indent=1))
        if args.sample_size > 0 and not prior.camera_aware:
            result.setdefault("sample_size", {})[model] = sample_sizes(prior, prompts, args.sample_size,
                                                                       args.sample_steps, args.seed, base)
    result["pooled"] = pooled(result["rows"], ks)
    result["apparent_size"] = {
        "world_sd_training": apparent_size((1.5, 2.3), (30.0, 55.0)),
        "product": apparent_size((base["camera_distance_min"], base["camera_distance_max"]),
                                 (base["camera_fovy_min"], base["camera_fovy_max"]))}
    for row in result["pooled"]:
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does a method keep the right answer through the VAE? Pixels optimised from the TRUE render, as a 3D run's pixels are.

The 2D experiment (`python -m backend image`) optimises a latent, so it never sees the gradient a 3D run gets: the
method's direction pulled back through the VAE encoder onto pixels. This probe starts a pixel image at the true
render of PROMPT from a few training cameras, takes ``--steps`` steps of a method on it through ``prior.encode``
(each step one camera, its view words, the run's timestep schedule), and reports what happened to the image: its
distance to the truth, its mean colour, and its high-frequency energy (mean squared Laplacian) beside the truth's.
A method that holds the answer leaves the image near the truth; speckle grows the high-frequency energy.

``--target decoder`` tries the other pull-back: the latent gradient v sent to the pixels as the decoder's image of
it, J_dec v (a central difference), at the encoder pull-back's length. It also reports, over the truth's latents,
how well the encoder inverts the decoder along the method's directions: cos(J_enc J_dec v, v) (1 would make the
decoder pull-back a descent direction as good as the encoder's).

    python bench/pixel_drift_probe.py --model world-sd --methods tbsd,sds --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.distill.step import DistillConfig, distillation_loss, prompt_set  # noqa: E402
from backend.priors import load_prior  # noqa: E402
from backend.priors.procedural import world  # noqa: E402
from backend.scene.cameras import orbit_views, view_suffix  # noqa: E402
from backend.distill.timesteps import timestep_weight  # noqa: E402
from shared.settings import validate  # noqa: E402

LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def decoder_image(prior, z: torch.Tensor, v: torch.Tensor, relative_step: float = 0.02) -> torch.Tensor:
    """J_dec(z) v per item, by a central difference of the decoder on raw (unscaled) latents."""
    b = z.shape[0]
    step = relative_step * z.flatten(1).norm(dim=1) / v.flatten(1).norm(dim=1).clamp_min(1e-20)
    dz = v * step.view(-1, 1, 1, 1)
    out = prior.vae.decode(torch.cat([z + dz, z - dz]).to(prior.dtype)).sample.float()
    return (out[:b] - out[b:]) / (2 * step.view(-1, 1, 1, 1))


def encode_via_decoder(prior, image: torch.Tensor, cosines: list[float]) -> torch.Tensor:
    """``prior.encode(image)`` whose backward carries J_dec v (at the length of J_enc^T v) instead of J_enc^T v."""
    x = (image * 2 - 1).to(prior.dtype)
    raw = prior.vae.encode(x).latent_dist.mean
    z, held = raw.detach().float(), {}
    raw.register_hook(lambda v: held.update(v=v.float()))

    def replace(g_enc: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            d = decoder_image(prior, z, held["v"])
            round_trip = prior.vae.encode((x.float() + 1e-2 * d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).to(
                prior.dtype)).latent_dist.mean.float() - z
            cosines.append(float(torch.nn.functional.cosine_similarity(round_trip.flatten(1), held["v"].flatten(1)).mean()))
            length = g_enc.float().flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1).clamp_min(1e-20)
            return (d * length.view(-1, 1, 1, 1)).to(g_enc.dtype)

    x.register_hook(replace)
    return ((raw - prior.shift_factor) * prior.scaling_factor).float()


def high_frequency(images: torch.Tensor) -> float:
    """Mean squared Laplacian per pixel and channel (speckle raises it, smooth shading does not)."""
    k = LAPLACE.to(images)[None, None].expand(3, 1, 3, 3)
    return float(torch.nn.functional.conv2d(images, k, groups=3).pow(2).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="world-sd")
    parser.add_argument("--prompt", default="a red cube")
    parser.add_argument("--methods", default="tbsd,sds")
    parser.add_argument("--settings", default="{}", help="JSON settings over the defaults (every method).")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.01, help="Adam's step on pixel values.")
    parser.add_argument("--progress", type=float, default=0.6, help="The run fraction the timestep schedule sees.")
    parser.add_argument("--target", default="latent", choices=("latent", "decoder", "image"),
                        help="latent: the method's gradient pulled back through the encoder (what 3D runs do); decoder: "
                             "the decoder's image of it at the same length; image: "
                             "the method's one-step estimate of the clean latent, z - sqrt((1 - abar) / abar) g, "
                             "decoded, and the pixels pulled towards it (an image-space target, as HiFA does)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    prior = load_prior(args.model, args.device)
    azimuths, elevations = [0.0, 90.0, 180.0, -90.0], [15.0, 30.0, 15.0, 45.0]
    views = orbit_views(azimuths, elevations, [1.9] * 4, [42.5] * 4)
    truth, _ = world.ground_truth(args.prompt, views, prior.image_size)
    truth = truth.clamp(0, 1).to(prior.device)
    views = views.to(prior.device)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = {"model": args.model, "prompt": args.prompt, "steps": args.steps, "lr": args.lr,
            "truth": {"high_frequency": high_frequency(truth), "mean_rgb": truth.mean(dim=(0, 2, 3)).tolist()}}
    strips = [truth]
    for method in args.methods.split(","):
        settings = validate({"method": method, **json.loads(args.settings)})
        generator = torch.Generator().manual_seed(0)
        distill = DistillConfig.from_settings(settings)
        image = torch.nn.Parameter(truth.clone())
        cosines: list[float] = []
        optimiser = torch.optim.Adam([image], lr=args.lr)
        for step in range(args.steps):
            v = step % len(azimuths)
            prompts = prompt_set(args.prompt + view_suffix(azimuths[v], elevations[v]), settings)
            optimiser.zero_grad(set_to_none=True)
            if args.target in ("latent", "decoder"):
                x = (prior.encode(image[v : v + 1].clamp(0, 1)) if args.target == "latent"
                     else encode_via_decoder(prior, image[v : v + 1].clamp(0, 1), cosines))
                result = distillation_loss(prior, x, prompts, distill, args.progress, generator,
                                           views.select([v]) if prior.camera_aware else None)
                result.loss.backward()
            else:
                with torch.no_grad():
                    z = prior.encode(image[v : v + 1].clamp(0, 1)).float()
                z.requires_grad_(True)
                result = distillation_loss(prior, z, prompts, distill, args.progress, generator,
                                           views.select([v]) if prior.camera_aware else None)
                result.loss.backward()  # z.grad = w(t) g
                with torch.no_grad():
                    abar = prior.alphas_cumprod[result.t].float().view(-1, 1, 1, 1)
                    g = z.grad / timestep_weight(distill.weighting, abar)
                    clean = prior.decode(z - ((1 - abar) / abar).sqrt() * g).float()
                (0.5 * (image[v : v + 1] - clean).pow(2).sum()).backward()
            optimiser.step()
        final = image.detach().clamp(0, 1)
        rows[method] = {"settings": json.loads(args.settings), "target": args.target, "high_frequency": high_frequency(final),
                        "rmse_to_truth": float((final - truth).pow(2).mean().sqrt()),
                        "mean_rgb": final.mean(dim=(0, 2, 3)).tolist()}
        if cosines:
            rows[method]["round_trip_cosine_median"] = float(torch.tensor(cosines).median())
        print(json.dumps({"method": method, **rows[method]}), flush=True)
        strips.append(final)
    (args.out / "pixel_drift.json").write_text(json.dumps(rows, indent=1))
    from PIL import Image

    grid = torch.cat([torch.cat(list(s), dim=-1) for s in strips], dim=-2).cpu()  # rows: truth, then each method
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(args.out / "pixel_drift.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

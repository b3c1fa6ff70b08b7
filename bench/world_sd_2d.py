"""world-SD's own quality in 2D: DDIM samples of every catalogue prompt, judged by the procedural world.

    python bench/world_sd_2d.py [--model world-sd] [--seeds 2] [--steps 50] [--cfg 7.5] --out FILE.json

Every shape x colour prompt ("a red cube") is sampled with ``--words-per-prompt`` view words (", front view", ...,
or none; cycled over the catalogue so each word gets an equal share) and ``--seeds`` seeds, through the product's
own prior (``StableDiffusionPrior.predict_noise``: the target and null branches in one UNet call, classifier-free
guidance at ``--cfg``) and diffusers' DDIM scheduler over the model's own training schedule. Each sample is judged by
``backend/worldsd/judge.py`` (named colour; shape by best silhouette IoU against every shape over cameras with the
same view words). The same judge is run on the world's own renders (one per sample, a random camera with the
sample's view words) so its own error rate stands beside the model's. JSON out, and a contact sheet PNG.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.priors import load_prior, resolve_device  # noqa: E402
from backend.priors.base import PromptSet  # noqa: E402
from backend.priors.procedural import world  # noqa: E402
from backend.scene.cameras import orbit_views, view_suffix  # noqa: E402
from backend.worldsd.judge import ShapeBank, judge  # noqa: E402

VIEW_WORDS = ("front", "side", "back", "overhead", "")


def catalogue_prompts() -> list[tuple[str, str, str]]:
    out = []
    for shape in world.SHAPES:
        for colour in world.COLOURS:
            article = "an" if colour[0] in "aeiou" else "a"
            out.append((f"{article} {colour} {shape}", shape, colour))
    return out


@torch.no_grad()
def ddim_samples(prior, caption: str, seeds: list[int], steps: int, cfg: float) -> torch.Tensor:
    """Images in [0, 1] of ``caption``, one per seed (CFG over the target and null branches)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=len(prior.alphas_cumprod), beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1, prediction_type="epsilon")
    scheduler.alphas_cumprod = prior.alphas_cumprod.detach().cpu().clone()
    scheduler.set_timesteps(steps)
    x = torch.cat([torch.randn(1, *prior.sample_shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    x = x.to(prior.device)
    prompts = PromptSet(target=caption)
    for t in scheduler.timesteps:
        eps = prior.predict_noise(x, t.view(1).to(prior.device), prompts, ("target", "null"))
        guided = eps["null"] + cfg * (eps["target"] - eps["null"])
        x = scheduler.step(guided.cpu(), t, x.cpu()).prev_sample.to(prior.device)
    return prior.decode(x).float().cpu()


def truth_render(shape: str, colour: str, word: str, rng: random.Random, size: int) -> torch.Tensor:
    """The world's own render of the object from a random camera whose view words are ``word``."""
    while True:
        az, el = rng.uniform(-180, 180), rng.uniform(-30, 85)
        if not word or view_suffix(az, el) == f", {word} view":
            break
    light = torch.nn.functional.normalize(torch.randn(1, 3, generator=torch.Generator().manual_seed(
        rng.randrange(2**31))), dim=-1)
    views = orbit_views([az], [el], [rng.uniform(1.6, 2.2)], [rng.uniform(35, 50)], light_dir=light)
    geometry = world.render_shapes(views, size)
    return world.compose(geometry, (world.Component(shape, colour),))[0, 0]


def summarise(rows: list[dict], key: str) -> dict:
    def share(rs: list[dict], field: str) -> float:
        return sum(r[key][field] for r in rs) / max(1, len(rs))

    out = {"n": len(rows), "named": share(rows, "named"), "colour": share(rows, "colour_ok"),
           "shape": share(rows, "shape_ok")}
    out["by_shape"] = {s: share([r for r in rows if r["shape"] == s], "named") for s in world.SHAPES}
    out["by_colour"] = {c: share([r for r in rows if r["colour"] == c], "named") for c in world.COLOURS}
    out["by_view_word"] = {w or "none": share([r for r in rows if r["view_word"] == w], "named") for w in VIEW_WORDS}
    return out


def contact_sheet(images: list[torch.Tensor], labels: list[bool], path: Path, columns: int = 16,
                  thumb: int = 64) -> None:
    from PIL import Image, ImageDraw

    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * thumb, rows * thumb), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, ok) in enumerate(zip(images, labels)):
        small = torch.nn.functional.interpolate(img[None], size=(thumb, thumb), mode="area")[0]
        arr = (small.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype("uint8")
        x, y = (i % columns) * thumb, (i // columns) * thumb
        sheet.paste(Image.fromarray(arr), (x, y))
        if not ok:  # a red frame marks a sample the judge says is not the named object
            draw.rectangle([x, y, x + thumb - 1, y + thumb - 1], outline=(255, 0, 0), width=2)
    sheet.save(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="world-sd")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--words-per-prompt", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--limit", type=int, default=0, help="only the first N prompts (0: all 60)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    prior = load_prior(args.model, resolve_device(args.device))
    bank = ShapeBank()
    rng = random.Random(0)
    prompts = catalogue_prompts()[: args.limit or None]
    rows, images, oks = [], [], []
    t0 = time.time()
    for i, (prompt, shape, colour) in enumerate(prompts):
        for j in range(args.words_per_prompt):
            word = VIEW_WORDS[(i + j) % len(VIEW_WORDS)]
            caption = prompt + (f", {word} view" if word else "")
            seeds = list(range(args.seeds))
            samples = ddim_samples(prior, caption, seeds, args.steps, args.cfg)
            for seed, image in zip(seeds, samples):
                v = judge(image, bank, word)
                truth = judge(truth_render(shape, colour, word, rng, image.shape[-1]), bank, word)
                row = {"prompt": prompt, "caption": caption, "shape": shape, "colour": colour, "view_word": word,
                       "seed": seed}
                for key, verdict in (("sample", v), ("truth", truth)):
                    row[key] = {"colour": verdict.colour, "colour_share": round(verdict.colour_share, 3),
                                "shape": verdict.shape, "named_shape_iou": round(verdict.shape_iou[shape], 3),
                                "foreground": round(verdict.foreground, 3), "colour_ok": verdict.colour == colour,
                                "shape_ok": verdict.shape == shape, "named": verdict.names(shape, colour)}
                rows.append(row)
                images.append(image)
                oks.append(v.names(shape, colour))
        print(f"{i + 1}/{len(prompts)} {prompt}: {sum(oks)}/{len(oks)} named so far, {time.time() - t0:.0f} s",
              flush=True)
    result = {"model": args.model, "steps": args.steps, "cfg": args.cfg, "seeds": args.seeds,
              "words_per_prompt": args.words_per_prompt, "device": str(prior.device),
              "seconds": round(time.time() - t0, 1), "sample": summarise(rows, "sample"),
              "truth": summarise(rows, "truth"), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    contact_sheet(images, oks, args.out.with_suffix(".png"))
    s, t = result["sample"], result["truth"]
    print(f"named object: samples {s['named']:.3f} (colour {s['colour']:.3f}, shape {s['shape']:.3f}); "
          f"the judge on the world's own renders {t['named']:.3f} (colour {t['colour']:.3f}, shape {t['shape']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

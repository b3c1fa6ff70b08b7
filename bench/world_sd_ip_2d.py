"""Does world-SD's IP-Adapter make the reference's object? DDIM samples with and without a reference, judged.

    python bench/world_sd_ip_2d.py [--model world-sd] [--ip-adapter world-sd-ip] [--seeds 2] [--steps 50]
                                   [--cfg 7.5] [--ip-scale 0.5] --out FILE.json

The reference is the world's own render of one object from a random camera (``world_sd_2d.truth_render``); the
prompt leaves open what the reference decides: "a cube" (the colour: does the sample take the reference's?) and
"a red object" (the shape). Each prompt x reference x seed is sampled twice from the same noise: through the IP prior
(guidance between ``image_target`` and ``image_null``, the IP-Adapter pipelines' CFG, at ``--ip-scale``) and through
the plain prior (``target`` and ``null``: the text alone, whose hit rate on the reference's attribute is the baseline
a reference must beat). The world's judge (``backend/worldsd/judge.py``) reads colour and shape. JSON out, and a
contact sheet PNG (rows: reference, with it, without it).
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
from backend.priors.base import ImagePrompt, PromptSet  # noqa: E402
from backend.priors.procedural import world  # noqa: E402
from backend.priors.sampling import ddim_sample  # noqa: E402
from backend.worldsd.judge import ShapeBank, judge  # noqa: E402
from world_sd_2d import contact_sheet, truth_render  # noqa: E402


def cases(rng: random.Random, per_kind: int) -> list[dict]:
    """(prompt, reference object, what the reference decides) rows: colour for "a {shape}", shape for "a {colour}
    object"."""
    out = []
    for _ in range(per_kind):
        shape, colour = rng.choice(list(world.SHAPES)), rng.choice(list(world.COLOURS))
        out.append({"prompt": f"a {shape}", "shape": shape, "colour": colour, "decides": "colour"})
    for _ in range(per_kind):
        shape, colour = rng.choice(list(world.SHAPES)), rng.choice(list(world.COLOURS))
        out.append({"prompt": f"a {colour} object", "shape": shape, "colour": colour, "decides": "shape"})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="world-sd")
    parser.add_argument("--ip-adapter", default="world-sd-ip")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cases", type=int, default=12, help="references per kind (colour-deciding, shape-deciding)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--ip-scale", type=float, default=0.5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    prior = load_prior(args.model, resolve_device(args.device), ip_adapter=args.ip_adapter)
    bank = ShapeBank()
    rng = random.Random(0)
    rows, sheet, oks = [], [], []
    t0 = time.time()
    for i, case in enumerate(cases(rng, args.cases)):
        reference = truth_render(case["shape"], case["colour"], "", rng, prior.image_size)
        prompts = PromptSet(case["prompt"], reference=ImagePrompt(reference, args.ip_scale, 1e-3))
        for seed in range(args.seeds):
            row = {**case, "seed": seed}
            images = [reference]
            for key, branches in (("with_reference", ("image_target", "image_null")), ("text_only", ("target", "null"))):
                image = ddim_sample(prior, prompts, torch.Generator().manual_seed(seed), args.steps, args.cfg,
                                    branches)
                v = judge(image, bank)
                row[key] = {"colour": v.colour, "shape": v.shape,
                            "hit": (v.colour if case["decides"] == "colour" else v.shape) == case[case["decides"]]}
                images.append(image)
            rows.append(row)
            sheet += images
            oks += [True, row["with_reference"]["hit"], row["text_only"]["hit"]]
        print(f"{i + 1} {case['prompt']} <- {case['colour']} {case['shape']}: "
              f"{sum(r['with_reference']['hit'] for r in rows)}/{len(rows)} with, "
              f"{sum(r['text_only']['hit'] for r in rows)}/{len(rows)} without, {time.time() - t0:.0f} s", flush=True)

    def share(kind: str, key: str) -> float:
        rs = [r for r in rows if kind in ("all", r["decides"])]
        return sum(r[key]["hit"] for r in rs) / max(1, len(rs))

    summary = {kind: {"with_reference": share(kind, "with_reference"), "text_only": share(kind, "text_only")}
               for kind in ("colour", "shape", "all")}
    summary["chance"] = {"colour": 1 / len(world.COLOURS), "shape": 1 / len(world.SHAPES)}
    result = {"model": args.model, "ip_adapter": args.ip_adapter, "ip_scale": args.ip_scale, "steps": args.steps,
              "cfg": args.cfg, "seeds": args.seeds, "device": str(prior.device), "seconds": round(time.time() - t0, 1),
              "summary": summary, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    contact_sheet(sheet, oks, args.out.with_suffix(".png"), columns=3 * min(4, args.seeds * 2))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

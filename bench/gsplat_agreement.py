"""gsplat against the dense torch splatting renderer, on CUDA (run through the device tool).

Builds a random GaussianScene (2000 Gaussians by default: random anisotropic scales, rotations,
opacities and colours), renders the same views with gsplat and with ``rasterize_dense`` (both on CUDA),
compares images and the gradients of one loss, prints a JSON summary and writes it to ``--out``.
Exit code 1 when the mean absolute rgb or alpha difference exceeds ``MEAN_ABS_TOLERANCE``.

    python bench/gsplat_agreement.py --out $OUT/gsplat_agreement.json

Needs gsplat 1.5.3 (and ``packaging``, which it imports without declaring); its first call compiles its
kernels (about 70 s on 16 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from backend.scene.cameras import orbit_views
from backend.scene.gaussians import GaussianConfig, GaussianScene
from backend.scene.splatting import rasterize, views_to_opencv

# Both renderers implement the same definition (same projection, eps2d 0.3, alpha clamp 0.999, 1/255 skip,
# transmittance stop at 1e-4, depth order). gsplat only adds a tile-based cull: a Gaussian is assigned to the
# 16x16 tiles its opacity-aware box (<= 3.33 sigma, where alpha reaches 1/255) overlaps, which covers every
# pixel where the dense renderer would not skip it anyway. What remains is float32 arithmetic (fast-math
# exp, a different summation order, our float64 quadratic form) and pairs sitting exactly at the 1/255 or
# 1e-4 thresholds, each worth at most a few 1/255 at one pixel. A mean over all pixels of 1e-3 (a quarter of
# one 8-bit level) leaves room for those and still catches any convention error (a flipped axis, a wrong
# focal length, a missing eps2d or background), which moves the mean by 1e-2 or more.
MEAN_ABS_TOLERANCE = 1e-3


def random_scene(num_points: int, seed: int, device: str) -> GaussianScene:
    """A scene like a mid-training one: anisotropic, rotated, mixed opacities, saturated colours."""
    scene = GaussianScene(GaussianConfig(num_points=num_points), seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        scene.log_scales.add_(torch.randn(scene.log_scales.shape, generator=gen) * 0.5)
        scene.quats.copy_(torch.randn(scene.quats.shape, generator=gen))
        scene.opacity_logits.copy_(torch.randn(scene.opacity_logits.shape, generator=gen) * 2.0)
        scene.albedo_logits.copy_(torch.randn(scene.albedo_logits.shape, generator=gen) * 2.0)
    return scene.to(device)


def _render(scene: GaussianScene, views, size: int, backend: str, antialiased: bool = False):
    viewmats, Ks = views_to_opencv(views, size, size)
    return rasterize(
        scene.means, scene.unit_quats(), scene.scales(), scene.opacities(), scene.albedos(), viewmats, Ks,
        size, size, backgrounds=scene.background.expand(len(views), 3), backend=backend, antialiased=antialiased,
    )


def compare(num_points: int = 2000, size: int = 64, views: int = 4, seed: int = 0, antialiased: bool = False) -> dict:
    """Render with both backends on CUDA (gsplat's "classic" or "antialiased" mode); differences of images and of
    parameter gradients."""
    device = "cuda"
    scene = random_scene(num_points, seed, device)
    cams = orbit_views(
        torch.linspace(0, 360, views + 1)[:-1], torch.linspace(-10, 45, views), [1.8] * views, [45.0] * views
    ).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    weights = torch.rand(views, size, size, 3, generator=gen, device=device)
    result: dict = {"num_points": num_points, "size": size, "views": views, "antialiased": antialiased,
                    "tolerance_mean_abs": MEAN_ABS_TOLERANCE}
    outs, grads = {}, {}
    for backend in ("gsplat", "dense"):
        for p in scene.parameters():
            p.grad = None
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = _render(scene, cams, size, backend, antialiased)
        # A loss that touches rgb, alpha and depth, for the gradient comparison.
        loss = (out.rgb * weights).sum() + out.alpha.sum() + 0.1 * out.depth.sum()
        loss.backward()
        torch.cuda.synchronize()
        result[f"{backend}_ms_forward_backward"] = (time.perf_counter() - start) * 1000
        outs[backend] = out
        grads[backend] = {name: p.grad.detach().clone() for name, p in scene.named_parameters()}
    g, d = outs["gsplat"], outs["dense"]
    for key, a, b in (("rgb", g.rgb, d.rgb), ("alpha", g.alpha, d.alpha)):
        diff = (a.detach() - b.detach()).abs()
        result[f"{key}_max_abs"] = float(diff.max())
        result[f"{key}_mean_abs"] = float(diff.mean())
    # Expected depth divides by alpha, so it is only compared where both renders are mostly opaque.
    solid = (g.alpha > 0.5) & (d.alpha > 0.5)
    depth_diff = (g.depth - d.depth).detach().abs()[solid]
    result["depth_max_abs_where_alpha_gt_half"] = float(depth_diff.max()) if depth_diff.numel() else 0.0
    result["depth_mean_abs_where_alpha_gt_half"] = float(depth_diff.mean()) if depth_diff.numel() else 0.0
    result["visible_agree"] = float((g.visible == d.visible).float().mean())
    # Gradients: cosine similarity per parameter (reported, not asserted: atomics and thresholds make
    # per-element gradients noisier than images).
    cosine = torch.nn.functional.cosine_similarity
    result["grad_cosine"] = {
        name: float(cosine(grads["gsplat"][name].flatten(), grads["dense"][name].flatten(), dim=0))
        for name in grads["gsplat"]
    }
    result["ok"] = result["rgb_mean_abs"] <= MEAN_ABS_TOLERANCE and result["alpha_mean_abs"] <= MEAN_ABS_TOLERANCE
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num-points", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return 2
    # The first gsplat call compiles its kernels: warm up so the timings mean something.
    start = time.perf_counter()
    compare(num_points=64, size=16, views=1, seed=args.seed)
    warmup_s = time.perf_counter() - start
    result = compare(args.num_points, args.size, args.views, args.seed)
    result["warmup_s"] = warmup_s
    result["device"] = torch.cuda.get_device_name()
    text = json.dumps(result, indent=1)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if not result["ok"]:
        print(f"FAIL: mean abs difference above {MEAN_ABS_TOLERANCE}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Hash-grid encoding speed and memory on CUDA: the Triton path against the PyTorch path.

For N in (2^18, 2^21, 2^23) points (levels 16, log2 table 19, F=2 by default), per path: median ms of
the forward (grad mode on, table requires grad, as in training) and of forward + backward, and the peak
CUDA memory each allocates above what was allocated before it. Paths:
  triton          HashGrid with backend="triton" (table gradient by atomics)
  torch           HashGrid with backend="torch" (the PyTorch path, as the CPU path runs)
  torch_xgrad     the PyTorch path with points requiring grad (the analytic-normal mode; Triton cannot)
  torch_original  the formula the PyTorch path was before it was slimmed (compare with "torch")
  torch_original_xgrad  the same with points requiring grad (compare with "torch_xgrad")
A path that runs out of memory is recorded as "oom". With --sweep, Triton block sizes and warp counts
(and the general-F kernels against the F == 2 ones) are timed at the middle N. Also checks, on 2^18
points, that the two paths agree.

    python bench/hashgrid_speed.py --out bench/results/hashgrid_speed_h100.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.scene import hashgrid_triton  # noqa: E402
from backend.scene.hashgrid import _PRIMES, HashGrid  # noqa: E402


def original_forward(grid: HashGrid, x: torch.Tensor) -> torch.Tensor:
    """HashGrid.forward as first written: all 8 corners x 3 axes materialised in int64."""
    n = x.shape[0]
    res = grid.resolutions.view(1, -1, 1)
    pos = x.clamp(0.0, 1.0)[:, None, :] * res
    base = pos.floor().long().minimum(res - 1)
    frac = pos - base
    idx = base[:, :, None, :] + grid.corners[None, None]
    r1 = (res + 1)[..., None]
    dense_index = (idx[..., 0] * r1[..., 0] + idx[..., 1]) * r1[..., 0] + idx[..., 2]
    hashed = (idx[..., 0] * _PRIMES[0]) ^ (idx[..., 1] * _PRIMES[1]) ^ (idx[..., 2] * _PRIMES[2])
    flat = torch.where(grid.dense.view(1, -1, 1), dense_index, hashed % grid.sizes.view(1, -1, 1))
    feats = grid.table[flat + grid.offsets.view(1, -1, 1)]
    c = grid.corners.bool()[None, None]
    w = torch.where(c, frac[:, :, None, :], 1 - frac[:, :, None, :]).prod(-1)
    return (feats * w[..., None]).sum(2).reshape(n, -1)


def median_ms(fn: Callable[[], Any], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_mib(fn: Callable[[], Any]) -> float:
    """Peak CUDA memory allocated while ``fn`` runs, above what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def path_fns(path: str, grid: HashGrid, x: torch.Tensor, g: torch.Tensor) -> tuple[Callable, Callable]:
    grid.backend = "triton" if path == "triton" else "torch"
    encode = (lambda p: original_forward(grid, p)) if path.startswith("torch_original") else grid
    xgrad = path.endswith("xgrad")

    def points() -> torch.Tensor:
        return x.detach().requires_grad_(True) if xgrad else x

    def fwd() -> None:
        encode(points())

    def fwd_bwd() -> None:
        grid.table.grad = None  # the gradient's allocation is part of the cost
        encode(points()).backward(g)

    return fwd, fwd_bwd


def run_path(path: str, grid: HashGrid, x: torch.Tensor, g: torch.Tensor, warmup: int, repeats: int) -> dict:
    fwd, fwd_bwd = path_fns(path, grid, x, g)
    row: dict[str, Any] = {"n": x.shape[0], "path": path}
    try:
        row["fwd_ms"] = round(median_ms(fwd, warmup, repeats), 4)
        row["fwd_peak_mib"] = round(peak_mib(fwd), 1)
        row["fwd_bwd_ms"] = round(median_ms(fwd_bwd, warmup, repeats), 4)
        row["fwd_bwd_peak_mib"] = round(peak_mib(fwd_bwd), 1)
    except torch.cuda.OutOfMemoryError as e:
        row["error"] = "oom"
        row["detail"] = str(e).split("\n")[0][:200]
    finally:
        grid.table.grad = None
        torch.cuda.empty_cache()
    return row


def agreement(grid: HashGrid, n: int) -> dict:
    x = torch.rand(n, 3, device="cuda") * 1.2 - 0.1
    g = torch.randn(n, grid.output_dim, device="cuda")
    outs, grads = [], []
    for backend in ("torch", "triton"):
        grid.backend = backend
        grid.table.grad = None
        out = grid(x)
        out.backward(g)
        outs.append(out.detach())
        grads.append(grid.table.grad.clone())
    grid.table.grad = None
    scale = grads[0].abs().max().item()
    return {"n": n, "fwd_max_abs": (outs[0] - outs[1]).abs().max().item(),
            "grad_max_abs": (grads[0] - grads[1]).abs().max().item(), "grad_max": scale}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2**18, 2**21, 2**23])
    ap.add_argument("--levels", type=int, default=16)
    ap.add_argument("--log2-table", type=int, default=19)
    ap.add_argument("--features", type=int, default=2)
    ap.add_argument("--paths", nargs="+", default=["triton", "torch", "torch_original", "torch_xgrad",
                                                             "torch_original_xgrad"])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--sweep", action="store_true", help="time Triton block/warp choices at the middle N")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs CUDA")
    if not hashgrid_triton.available():
        sys.exit("needs Triton")
    import triton

    torch.manual_seed(0)
    grid = HashGrid(args.levels, args.features, args.log2_table).cuda()
    with torch.no_grad():
        grid.table.uniform_(-1.0, 1.0)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "config": {"levels": args.levels, "log2_table": args.log2_table, "features": args.features,
                   "table_rows": grid.table.shape[0], "dense_levels": int(grid.dense.sum()),
                   "block": hashgrid_triton.DEFAULT_BLOCK, "num_warps": hashgrid_triton.DEFAULT_WARPS},
        "agreement": agreement(grid, 2**18),
        "results": [],
    }
    print(json.dumps(report["agreement"]), flush=True)
    for n in args.sizes:
        x = torch.rand(n, 3, device="cuda")
        g = torch.randn(n, grid.output_dim, device="cuda")
        for path in args.paths:
            row = run_path(path, grid, x, g, args.warmup, args.repeats)
            print(json.dumps(row), flush=True)
            report["results"].append(row)
        del x, g
        torch.cuda.empty_cache()
    if args.sweep:
        n = args.sizes[len(args.sizes) // 2]
        x = torch.rand(n, 3, device="cuda")
        g = torch.randn(n, grid.output_dim, device="cuda")
        sweep = []
        for packed in (True, False):  # the F == 2 kernels, and the general-F ones
            for block in (64, 128, 256, 512, 1024):
                for warps in (2, 4, 8):
                    if block < 32 * warps:
                        continue
                    kw = dict(block=block, num_warps=warps, packed=packed)

                    def fwd() -> None:
                        hashgrid_triton.hash_encode(x, grid.table, grid.resolutions, grid.offsets, grid.table_size,
                                                    **kw)

                    def fwd_bwd() -> None:
                        grid.table.grad = None
                        hashgrid_triton.hash_encode(x, grid.table, grid.resolutions, grid.offsets, grid.table_size,
                                                    **kw).backward(g)

                    row = {"n": n, **kw, "fwd_ms": round(median_ms(fwd, args.warmup, args.repeats), 4),
                           "fwd_bwd_ms": round(median_ms(fwd_bwd, args.warmup, args.repeats), 4)}
                    print(json.dumps(row), flush=True)
                    sweep.append(row)
        report["sweep"] = sweep
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

"""`python -m backend bench`: where a training step's time and memory go on the GPU, and how long an asset takes.

Three parts, each optional:
- **steps**: for each prior, method and representation at the paper's resolutions (NeRF renders at 256, Gaussians
  at 512, SD's encoder always at 512), milliseconds per step (wall clock over many steps, one sync at each end)
  split into render, encode, prior+method, backward and optimiser (CUDA events, no syncs in between), peak GPU
  memory, and the step's matrix/convolution FLOPs (counted once on the eager path) as achieved TFLOP/s.
- **assets**: seconds from prompt to an exported mesh for the default presets, split by phase.
- **server**: seconds from `submit` to the first progress message and the first preview through a real server.

Every figure comes with the acceleration it was measured under (`backend/priors/acceleration.py`, the hash
grid's backend), so one JSON holds the eager baseline and each optimisation. BENCHMARKS.md summarises it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from backend.priors.acceleration import Acceleration
from backend.priors.base import DiffusionPrior
from backend.train import PHASES, Trainer
from shared.settings import validate

# Dense fp16/bf16 tensor-core peak (TFLOP/s) of the GPUs this was measured on, from NVIDIA's data sheets (SXM).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
# The paper's training resolutions: TBSD renders the NeRF at 64 then 256, Gaussians render at 512 (DreamGaussian).
RESOLUTION = {"nerf": 256, "gaussians": 512}
PRIORS = ("procedural", "sd21-random", "sd15-ip-random")


def device_peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def build_prior(name: str, device: torch.device, acceleration: Acceleration) -> DiffusionPrior:
    if name == "procedural":
        from backend.priors.procedural.prior import ProceduralPrior

        return ProceduralPrior(device=device)
    if name == "sd21-random":
        from backend.priors.stable_diffusion import build_random_sd21_base

        return build_random_sd21_base(device=device, acceleration=acceleration)
    if name == "sd15-ip-random":  # SD 1.5 + h94's SD 1.5 IP-Adapter (ViT-H image encoder), random: ISD's cost
        from backend.priors.stable_diffusion import build_random_sd15_ip

        return build_random_sd15_ip(device=device, acceleration=acceleration)
    raise ValueError(f"unknown prior '{name}'; allowed: {', '.join(PRIORS)}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(step: Callable[[], Any]) -> float:
    """FLOPs of one call as counted by torch's FlopCounterMode (matmuls, convolutions, attention; not gsplat)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def step_settings(representation: str, method: str, resolution: int, extra: Mapping[str, Any] | None = None) -> dict:
    return validate({"representation": representation, "method": method, "render_res_start": resolution,
                     "render_res_end": resolution, "steps": 100000, "preview_every": 0, **(extra or {})})


def profile_steps(prior: DiffusionPrior, representation: str, method: str, device: torch.device, *,
                  steps: int, warmup: int, resolution: int | None = None, flops: float | None = None,
                  hashgrid: str | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Time ``steps`` training steps after ``warmup`` (which also lets Gaussians densify and graphs capture).

    ``hashgrid`` picks the NeRF hash grid's implementation ("torch" or "triton"; default: its own choice)."""
    from backend.distill.methods import METHODS

    res = resolution or RESOLUTION[representation]
    reference = None
    if METHODS[method].image_prompt:  # a fixed reference image (its content does not change the cost)
        import numpy as np

        from backend.reference import Reference

        pixels = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
        reference = Reference(pixels, "image")
        extra = {"reference_source": "image", **(extra or {})}
    trainer = Trainer(prior, "a red cube", step_settings(representation, method, res, extra), device=device,
                      reference=reference)
    if hashgrid is not None and representation == "nerf":
        trainer.scene.encoding.backend = hashgrid
    for _ in range(warmup):
        trainer.train_step()
    if flops is None and not getattr(getattr(prior, "acceleration", None), "cuda_graphs", False):
        flops = count_flops(trainer.train_step)  # graph replays are invisible to the counter: count eager only
    _sync(device)
    before = trainer.timings
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    _sync(device)
    seconds = time.perf_counter() - start
    after = trainer.timings
    ms = seconds / steps * 1000
    out: dict[str, Any] = {
        "prior": prior.name, "representation": representation, "method": method, "resolution": res,
        "steps": steps, "warmup": warmup, "ms_per_step": ms,
        "phases_ms": {k: (after[k] - before[k]) / steps * 1000 for k in PHASES},
        "flops_per_step": flops,
    }
    if flops:
        out["achieved_tflops"] = flops / (ms / 1000) / 1e12
    if device.type == "cuda":
        out["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        peak = device_peak_tflops(torch.cuda.get_device_name(device))
        if peak and flops:
            out["fraction_of_peak"] = out["achieved_tflops"] / peak
    if representation == "gaussians":
        out["gaussians"] = int(trainer.scene.num_points)
    return out


def asset_seconds(prior: DiffusionPrior, representation: str, device: torch.device,
                  settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One `generate` job with the default preset: seconds per phase to a written GLB/OBJ/PLY."""
    from backend.jobs.runner import JobPlan, fixed_prior, run_job

    full = validate({"representation": representation, **(settings or {})})
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        record = run_job(JobPlan("a red cube", full, Path(tmp), checkpoint=False), device, fixed_prior(prior)).record
        total = time.perf_counter() - start
    out = {"prior": prior.name, "representation": representation, "steps": full["steps"],
           "seconds_total": total, "seconds": record["seconds"], "steps_per_second": record["steps_per_second"],
           "mesh": {k: record["mesh"].get(k) for k in ("vertices", "faces", "faces_raw", "resolution")},
           "extract_seconds": record.get("extract_seconds"), "export_seconds": record["export"].get("seconds"),
           "peak_gpu_memory_gb": record.get("peak_gpu_memory_gb")}
    if record.get("figures"):
        out["figures"] = record["figures"]
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_first_preview(model: str, device: str, settings: Mapping[str, Any], timeout: float = 300.0) -> dict:
    """Start `python -m backend serve`, submit one job, and time the first progress and preview messages."""
    from shared.client import Client

    port = _free_port()
    with tempfile.TemporaryDirectory() as results:
        started = time.perf_counter()
        server = subprocess.Popen([sys.executable, "-m", "backend", "serve", "--bind", f"tcp://127.0.0.1:{port}",
                                   "--results", results, "--device", device, "--model", model],
                                  env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        out: dict[str, Any] = {"model": model, "settings": dict(settings)}
        try:
            with Client(f"tcp://127.0.0.1:{port}") as client:
                client.send_hello("bench")
                deadline = time.perf_counter() + timeout
                while not any(m.type == "welcome" for m in client.poll_messages(200)):
                    if time.perf_counter() > deadline or server.poll() is not None:
                        raise RuntimeError("server did not answer hello")
                out["server_ready_s"] = time.perf_counter() - started
                submitted = time.perf_counter()
                client.send_submit("a red cube", settings, {"progress_every": 1, "preview_size": 128})
                while "first_preview_s" not in out:
                    for m in client.poll_messages(100):
                        key = {"accepted": "accepted_s", "progress": "first_progress_s",
                               "preview": "first_preview_s"}.get(m.type)
                        if key and key not in out:
                            out[key] = time.perf_counter() - submitted
                            if m.type == "progress":
                                out["first_progress_step"] = m.header.get("step")
                        if m.type in ("failed", "error"):
                            raise RuntimeError(f"server: {m.header}")
                    if time.perf_counter() > deadline:
                        raise RuntimeError("no preview before the timeout")
                client.send_shutdown()
        finally:
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    return out


_PRINTED = ("prior", "representation", "method", "acceleration", "hashgrid", "ms_per_step", "phases_ms",
            "peak_gpu_memory_gb", "achieved_tflops", "error")


def _step_row(prior: DiffusionPrior, representation: str, method: str, device: torch.device, args: Any,
              flops: float | None, hashgrid: str | None) -> dict[str, Any]:
    """profile_steps, with running out of GPU memory recorded as the row's result rather than ending the bench."""
    try:
        return profile_steps(prior, representation, method, device, steps=args.steps, warmup=args.warmup,
                             flops=flops, hashgrid=hashgrid, resolution=args.resolution)
    except torch.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        return {"prior": prior.name, "representation": representation, "method": method,
                "error": f"out of memory: {str(exc).splitlines()[0]}"}


def run(args: Any) -> dict[str, Any]:
    device = torch.device(args.device)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "command": " ".join(sys.argv), "steps": [],
                              "assets": [], "server": []}
    methods = args.methods.split(",")
    representations = args.representations.split(",")
    levels = args.acceleration.split(";")
    asset_settings = json.loads(args.asset_settings) if args.asset_settings else {}

    def record(kind: str, row: dict[str, Any], printed: tuple[str, ...] | None = None) -> None:
        result[kind].append(row)
        print(json.dumps({k: row.get(k) for k in printed} if printed else row), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))

    flops: dict[tuple, float] = {}  # counted on the eager level, reused by the accelerated ones
    for prior_name in args.priors.split(","):
        for level in levels:
            prior = build_prior(prior_name, device, Acceleration.parse(level))
            for representation in representations if args.steps > 0 else []:
                # The hash grid's backends only differ for a NeRF.
                for hashgrid in args.hashgrid.split(",") if representation == "nerf" else [None]:
                    for method in methods:
                        key = (prior_name, representation, method)
                        row = _step_row(prior, representation, method, device, args, flops.get(key), hashgrid)
                        if row.get("flops_per_step"):
                            flops[key] = row["flops_per_step"]
                        record("steps", {**row, "acceleration": level, "hashgrid": hashgrid}, _PRINTED)
            if args.assets and level == levels[-1]:
                for representation in representations:
                    record("assets", {**asset_seconds(prior, representation, device, asset_settings),
                                      "acceleration": level})
            del prior
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.server:
        record("server", server_first_preview(args.server_model, args.device, json.loads(args.server_settings or "{}")))
    return result


__all__ = ["profile_steps", "asset_seconds", "server_first_preview", "count_flops", "run", "device_peak_tflops"]

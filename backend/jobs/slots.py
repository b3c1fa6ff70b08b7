"""How many jobs run at once on one device: ``--jobs-per-gpu N|auto`` of ``serve`` and ``batch`` (the local
executor runs that many worker processes side by side, backend/batch.py ``make_executor``).

``choose`` is the decision alone (a number asked for, or ``auto`` from the device, its free memory and whether
CUDA MPS runs); ``resolve`` gathers those facts without initialising CUDA in the calling process: free memory
comes from a short-lived probe process, MPS from its control pipe. The product never starts the MPS daemon
(a machine-wide service that its administrator runs: docs/SCALE.md).

The figures behind ``auto`` (BENCHMARKS.md):
- a job's process holds 4-8 GB of an H200 at the standard preset with its CUDA context and caches (session 9: 15
  runs at once held 110-132 GB); Stable Diffusion's NeRF at 256 px peaks at 7.8 GB in torch's allocator alone, its
  Gaussians at 4.6 GB. ``JOB_PEAK_BYTES`` is the 8 GB with a quarter of headroom.
- under MPS the processes' kernels run side by side: six NeRF runs at once each still trained in about the time
  of one alone, twelve Gaussian runs in ~115 s each. MPS serves at most 48 client processes a GPU (session 14
  started 90 and 14 failed "CUDA-capable device is busy or unavailable").
- without MPS the processes time-slice the GPU: twelve Gaussian runs at once took as long as twelve in a row
  (session 5). Two still pay: one job's CPU-only stretches (prior load, mesh extraction, UV unwrap, bake, writing
  files: about 8 of a default Gaussian asset's 56 s) overlap the other's training.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

GIB = 1024 ** 3
JOB_PEAK_BYTES = 10 * GIB
# MPS's 48 clients a GPU, less one: the server becomes a client when `hello` reads the GPU's free memory.
MPS_MAX_JOBS = 47
NO_MPS_MAX_JOBS = 2
MPS_PIPE_DIRECTORY = "/tmp/nvidia-mps"  # nvidia-cuda-mps-control's default when CUDA_MPS_PIPE_DIRECTORY is unset
PROBE_TIMEOUT_S = 120.0

Setting = int | Literal["auto"]


@dataclass(frozen=True)
class Slots:
    """How many jobs run at once, and why (logged by serve and batch)."""

    jobs: int
    why: str


def parse_setting(text: str) -> Setting:
    """``--jobs-per-gpu``'s value: a whole number of at least 1, or ``auto``."""
    if text == "auto":
        return "auto"
    try:
        jobs = int(text)
    except ValueError:
        raise ValueError(f"expected a whole number of jobs or 'auto', got {text!r}") from None
    if jobs < 1:
        raise ValueError(f"at least 1 job runs at a time, got {jobs}")
    return jobs


def choose(setting: Setting, device_type: str, free_bytes: int | None, mps: bool) -> Slots:
    """Jobs to run at once on one device of ``device_type`` ('cpu' or 'cuda') with ``free_bytes`` of free memory
    (None: unknown) and MPS running or not."""
    if setting != "auto":
        return Slots(setting, f"--jobs-per-gpu {setting}")
    if device_type != "cuda":
        return Slots(1, "auto on the CPU: one job uses every core")
    if free_bytes is None:
        return Slots(1, "auto: the GPU's free memory could not be read, so one job at a time")
    by_memory = max(1, free_bytes // JOB_PEAK_BYTES)
    cap, sharing = (MPS_MAX_JOBS, "MPS runs") if mps else (NO_MPS_MAX_JOBS, "no MPS: the jobs time-slice the GPU")
    jobs = min(by_memory, cap)
    return Slots(jobs, f"auto: {free_bytes / GIB:.1f} GiB free / {JOB_PEAK_BYTES / GIB:g} GiB a job = {by_memory}, "
                       f"at most {cap} ({sharing})")


def mps_running(env: Mapping[str, str] = os.environ) -> bool:
    """Whether an MPS control daemon serves this user's CUDA clients: its control pipe is in the pipe directory
    (a stopped daemon removes it). A daemon another user started may refuse this user's clients; CUDA then
    fails the jobs' start, which the job's record says."""
    return (Path(env.get("CUDA_MPS_PIPE_DIRECTORY") or MPS_PIPE_DIRECTORY) / "control").exists()


def free_gpu_bytes(device: str) -> int | None:
    """The free memory of CUDA device ``device`` ('cuda', 'cuda:1'), read in a probe process so that the caller
    holds no CUDA context (nor an MPS client slot); None when the probe fails."""
    probe = "import sys, torch; print(torch.cuda.mem_get_info(sys.argv[1])[0])"
    try:
        done = subprocess.run([sys.executable, "-c", probe, device], capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
        return int(done.stdout.strip()) if done.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError, OSError):
        return None


def resolve(setting: Setting, device: str) -> Slots:
    """``choose`` on this machine's facts for ``device`` (already resolved: 'cpu', 'cuda', 'cuda:N'); the probe
    process runs only for ``auto`` on CUDA."""
    device_type = device.split(":")[0]
    if setting != "auto" or device_type != "cuda":
        return choose(setting, device_type, None, False)
    return choose(setting, device_type, free_gpu_bytes(device), mps_running())


__all__ = ["Slots", "Setting", "choose", "resolve", "parse_setting", "mps_running", "free_gpu_bytes", "GIB",
           "JOB_PEAK_BYTES", "MPS_MAX_JOBS", "NO_MPS_MAX_JOBS"]

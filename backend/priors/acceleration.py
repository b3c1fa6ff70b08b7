"""Running a frozen Stable Diffusion UNet and VAE encoder fast on CUDA: channels-last and CUDA graphs.

Measured on the lent H100/H200 (BENCHMARKS.md): the UNet at SD's 64x64 latent is bound by kernel launches
(the time hardly grows from batch 1 to 4), so replaying it as a CUDA graph is the big win; the VAE encoder's
forward and backward at 512x512 is bound by its convolutions and norms, where channels-last layout is what
helps. Both wrappers are drop-in callables with the same inputs and outputs as the eager calls, so the prior
keeps one code path and `Acceleration.none()` is the eager baseline.

torch.compile was left out on purpose: with max-autotune the UNet had not finished compiling after eight
minutes, and an artist would pay that on every backend start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Acceleration:
    """Which speed-ups a prior uses on CUDA (all ignored on the CPU)."""

    # Measured on the H100 (BENCHMARKS.md): channels-last made the TBSD Gaussian step slower (57 vs 53 ms with
    # graphs), so it is off by default and kept for the comparison.
    channels_last: bool = False
    cuda_graphs: bool = True
    # cuDNN times its convolution algorithms on the first call of each shape and keeps the fastest; a training
    # run calls the encoder with one shape thousands of times. Process-wide by nature (a cuDNN flag).
    cudnn_benchmark: bool = True
    # torch.compile of the encoder (fuses its GroupNorm + SiLU); costs a compile at the first step.
    compile_encoder: bool = False

    @classmethod
    def none(cls) -> "Acceleration":
        return cls(channels_last=False, cuda_graphs=False, cudnn_benchmark=False, compile_encoder=False)

    @classmethod
    def parse(cls, text: str) -> "Acceleration":
        """'none', 'default', or a comma list of field names (the benchmark's --acceleration)."""
        if text == "none":
            return cls.none()
        if text in ("default", "all"):
            return cls()
        names = {n.strip() for n in text.split(",") if n.strip()}
        known = {"channels_last", "cuda_graphs", "cudnn_benchmark", "compile_encoder"}
        if not names <= known:
            raise ValueError(f"unknown acceleration {sorted(names - known)}; allowed: none, all, or any of {sorted(known)}")
        return cls(**{k: k in names for k in known})


class GraphedInference:
    """A no-grad callable replayed from CUDA graphs, one graph per input signature (shapes and dtypes).

    Inputs are copied into static buffers and the output buffer is cloned, so callers see ordinary tensors.
    A new signature (another batch size) is captured on first use after a few warm-up runs on a side
    stream, as CUDA graph capture requires.
    """

    def __init__(self, fn: Callable[..., Tensor], warmup: int = 2) -> None:
        self.fn = fn
        self.warmup = warmup
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, tuple[Tensor, ...], Tensor]] = {}
        self._pool = None

    @staticmethod
    def _signature(args: tuple[Tensor, ...]) -> tuple:
        return tuple((tuple(a.shape), a.dtype, a.device) for a in args)

    def _capture(self, args: tuple[Tensor, ...]) -> tuple[torch.cuda.CUDAGraph, tuple[Tensor, ...], Tensor]:
        static_in = tuple(a.detach().clone() for a in args)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(self.warmup):
                self.fn(*static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool), torch.no_grad():
            static_out = self.fn(*static_in)
        return graph, static_in, static_out

    def __call__(self, *args: Tensor) -> Tensor:
        key = self._signature(args)
        if key not in self._graphs:
            self._graphs[key] = self._capture(args)
        graph, static_in, static_out = self._graphs[key]
        for buf, a in zip(static_in, args):
            buf.copy_(a)
        graph.replay()
        return static_out.clone()


class GraphedDifferentiable:
    """A callable whose forward and backward (w.r.t. its single tensor input) replay from CUDA graphs.

    Built on torch.cuda.make_graphed_callables, one per input shape. The wrapped function's parameters must be
    frozen: only the input's gradient is captured, which is all score distillation needs from the VAE encoder.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], warmup: int = 3) -> None:
        self.fn = fn
        self.warmup = warmup
        self._graphed: dict[tuple, Callable[[Tensor], Tensor]] = {}

    def __call__(self, x: Tensor) -> Tensor:
        if not x.requires_grad or not torch.is_grad_enabled():
            return self.fn(x)  # previews and evaluation: nothing to differentiate, no graph needed
        key = (tuple(x.shape), x.dtype, x.device)
        if key not in self._graphed:
            sample = torch.randn_like(x).requires_grad_(True)
            self._graphed[key] = torch.cuda.make_graphed_callables(self.fn, (sample,), num_warmup_iters=self.warmup)
        return self._graphed[key](x)


def prepare_modules(modules: tuple[nn.Module, ...], acceleration: Acceleration, device: torch.device) -> None:
    """Lay out frozen modules' weights for the chosen acceleration (channels-last convolutions)."""
    if device.type != "cuda":
        return
    if acceleration.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if acceleration.channels_last:
        for module in modules:
            module.to(memory_format=torch.channels_last)


def to_layout(x: Tensor, acceleration: Acceleration) -> Tensor:
    """Activations in the layout the weights were prepared for."""
    if x.is_cuda and acceleration.channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


__all__ = ["Acceleration", "GraphedInference", "GraphedDifferentiable", "prepare_modules", "to_layout"]

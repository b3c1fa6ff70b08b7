"""Running a frozen Stable Diffusion UNet and VAE encoder fast on CUDA.

What the eager profile on the H100 showed (bench/profile_sd.py, BENCHMARKS.md) and what answers it: the UNet at
SD's 64x64 latent is bound by kernel launches (CUDA graphs) and by NCHW<->NHWC transposes around cuDNN
(channels-last weights); the encoder's forward and backward at 512x512 lost most of its time in two places
that are not convolutions: GroupNorm statistics computed by too few blocks (`SplitGroupNorm`) and the
memory-efficient attention backward at head size 512 (plain matmul attention). Every wrapper is a drop-in with
the eager call's inputs and outputs, so the prior keeps one code path and `Acceleration.none()` is the eager
baseline the benchmark compares against.

torch.compile is not the default: with max-autotune the UNet had not finished compiling after eight minutes, and
the encoder compiled in default mode ran no faster than eager (measured); an artist would pay the compile on
every backend start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Acceleration:
    """Which speed-ups a prior uses on CUDA (all ignored on the CPU). BENCHMARKS.md has what each gained."""

    # Replays the UNet, and the encoder's forward and backward, from CUDA graphs (the UNet is launch-bound).
    cuda_graphs: bool = True
    # The UNet's convolutions in channels-last layout: cuDNN otherwise transposes every activation to NHWC and
    # back (3.2 of the UNet's 14.4 ms at batch 3 in the eager profile).
    unet_channels_last: bool = True
    # The same for the VAE: measured slower (PyTorch's GroupNorm copies channels-last input back), so off.
    vae_channels_last: bool = False
    # The encoder's single-head attention (4,096 tokens, head size 512) as plain matmuls: SDPA picks its
    # memory-efficient kernel there, whose backward took 6.1 ms of the encoder's 24 ms.
    vae_matmul_attention: bool = True
    # The encoder's GroupNorms with statistics from a split reduction (`SplitGroupNorm`): PyTorch's kernel runs
    # one block per group, 32 blocks on a 132-SM GPU, 8.5 ms of the encoder's 24 ms forward and backward.
    split_group_norm: bool = True
    # cuDNN times its convolution algorithms on the first call of each shape and keeps the fastest.
    # Process-wide by nature (a cuDNN flag). Measured neutral; kept on since shapes never change in a run.
    cudnn_benchmark: bool = True
    # torch.compile of the encoder instead of its graphs: measured no faster, and costs a compile per start.
    compile_encoder: bool = False

    @classmethod
    def none(cls) -> "Acceleration":
        return cls(**{name: False for name in cls.__dataclass_fields__})

    @classmethod
    def parse(cls, text: str) -> "Acceleration":
        """'none', 'default', or a comma list of the fields to turn on (the benchmark's --acceleration)."""
        if text in ("default", "all"):
            return cls()
        if text == "none":
            return cls.none()
        names = {n.strip() for n in text.split(",") if n.strip()}
        known = set(cls.__dataclass_fields__)
        if not names <= known:
            raise ValueError(f"unknown acceleration {sorted(names - known)}; allowed: none, default, or any of "
                             f"{sorted(known)}")
        return cls(**{k: k in names for k in known})


class _SplitGroupNormFunction(torch.autograd.Function):
    """Forward statistics from torch.var_mean (a reduction split over many blocks); backward by PyTorch's own
    GroupNorm backward kernel, which is fast (an autograd graph of the elementwise forward was not: measured)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int, eps: float) -> Tensor:  # type: ignore[override]
        n, c = x.shape[:2]
        grouped = x.reshape(n, groups, -1)
        var, mean = torch.var_mean(grouped.float(), dim=-1, correction=0)
        rstd = torch.rsqrt(var + eps)
        mean, rstd = mean.to(x.dtype), rstd.to(x.dtype)  # the dtype PyTorch's kernels keep them in
        y = ((grouped - mean[..., None]) * rstd[..., None]).reshape(x.shape)
        if weight is not None:
            shape = (1, c) + (1,) * (x.dim() - 2)
            y = y * weight.view(shape) + bias.view(shape)
        ctx.save_for_backward(x, mean, rstd, weight)
        ctx.groups = groups
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, mean, rstd, weight = ctx.saved_tensors
        n, c = x.shape[:2]
        grad_x, _, _ = torch.ops.aten.native_group_norm_backward(
            grad.contiguous(), x.contiguous(), mean, rstd, weight, n, c, x.numel() // (n * c), ctx.groups,
            [True, False, False])  # frozen weights: only the input's gradient
        return grad_x, None, None, None, None


class SplitGroupNorm(nn.Module):
    """GroupNorm for frozen weights whose forward statistics come from torch.var_mean.

    Same result as nn.GroupNorm; on CUDA the statistics' reduction is split across many blocks, where PyTorch's
    GroupNorm kernel gives each (sample, group) a single block. Takes over a GroupNorm's parameters, which get
    no gradient (the prior's weights are frozen).
    """

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.num_groups = norm.num_groups
        self.eps = norm.eps
        self.weight = norm.weight
        self.bias = norm.bias

    def forward(self, x: Tensor) -> Tensor:
        return _SplitGroupNormFunction.apply(x, self.weight, self.bias, self.num_groups, self.eps)


def _replace_group_norms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.GroupNorm):
            setattr(module, name, SplitGroupNorm(child))
        else:
            _replace_group_norms(child)


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


def prepare_modules(unet: nn.Module, vae: nn.Module, acceleration: Acceleration, device: torch.device) -> None:
    """Lay out and patch a frozen UNet and VAE for the chosen acceleration (nothing on the CPU)."""
    if device.type != "cuda":
        return
    if acceleration.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if acceleration.unet_channels_last:
        unet.to(memory_format=torch.channels_last)
    if acceleration.vae_channels_last:
        vae.to(memory_format=torch.channels_last)
    if acceleration.vae_matmul_attention:
        from diffusers.models.attention_processor import AttnProcessor

        vae.set_attn_processor(AttnProcessor())
    if acceleration.split_group_norm:
        _replace_group_norms(vae.encoder)


def to_layout(x: Tensor, channels_last: bool) -> Tensor:
    """Activations in the layout the weights were prepared for."""
    if x.is_cuda and channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


__all__ = ["Acceleration", "GraphedInference", "GraphedDifferentiable", "SplitGroupNorm", "prepare_modules", "to_layout"]

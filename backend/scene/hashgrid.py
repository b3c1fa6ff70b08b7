"""Multiresolution hash-grid encoding (Instant-NGP) in plain PyTorch, with an optional Triton path.

Runs on CPU and CUDA with nothing compiled to install. Coarse levels whose grids fit the table
are indexed densely (no collisions); finer levels use the spatial hash of Teschner et al.
(primes 1, 2654435761, 805459861), as in Instant-NGP.

On CUDA, when Triton imports and the points need no gradient, ``forward`` runs fused Triton kernels
(``backend.scene.hashgrid_triton``): same indices and weights, no [N, L, 8] intermediates. The
PyTorch code below stays as the CPU path, the path that gives gradients w.r.t. the points (analytic
normals), and the reference the Triton kernels are tested against.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from backend.scene import hashgrid_triton

_PRIMES = (1, 2654435761, 805459861)

Backend = Literal["auto", "torch", "triton"]


class HashGrid(nn.Module):
    def __init__(self, levels: int = 16, features: int = 2, log2_table: int = 19, base_resolution: int = 16,
                 per_level_scale: float = 1.447, backend: Backend = "auto") -> None:
        super().__init__()
        self.levels = levels
        self.features = features
        self.table_size = 2**log2_table
        # "auto": Triton on CUDA when it imports, else PyTorch. "torch": always PyTorch (the reference the
        # tests compare against). "triton": Triton on any device (CPU tensors only run under
        # TRITON_INTERPRET=1; raises if Triton is missing). In every mode, points that need a gradient go to
        # PyTorch: the Triton backward gives the table gradient only (analytic normals need d/dx).
        if backend not in ("auto", "torch", "triton"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
        self.backend: Backend = backend
        resolutions = [int(math.floor(base_resolution * per_level_scale**i)) for i in range(levels)]
        sizes = [min((r + 1) ** 3, self.table_size) for r in resolutions]
        offsets = [0]
        for size in sizes[:-1]:
            offsets.append(offsets[-1] + size)
        # Per-level constants as buffers so all levels are looked up in one gather.
        self.register_buffer("resolutions", torch.tensor(resolutions, dtype=torch.long), persistent=False)
        self.register_buffer("sizes", torch.tensor(sizes, dtype=torch.long), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long), persistent=False)
        self.register_buffer("dense", torch.tensor([(r + 1) ** 3 <= self.table_size for r in resolutions]),
                             persistent=False)
        self.register_buffer("corners", torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)]),
                             persistent=False)
        # Row indices are int32 (PyTorch path and Triton kernels).
        if sum(sizes) >= 2**31:
            raise ValueError("hash grid table too large: more than 2^31 rows")
        # Instant-NGP initialises features uniformly in +-1e-4 so the MLP starts from its bias.
        self.table = nn.Parameter(torch.empty(sum(sizes), features).uniform_(-1e-4, 1e-4))

    @property
    def output_dim(self) -> int:
        return self.levels * self.features

    def use_triton(self, x: Tensor) -> bool:
        """Whether ``forward(x)`` takes the Triton path (see ``backend``)."""
        if self.backend == "torch" or (x.requires_grad and torch.is_grad_enabled()):
            return False
        if self.backend == "triton":
            return True
        return (x.is_cuda and hashgrid_triton.available() and x.dtype == torch.float32
                and self.table.dtype == torch.float32)

    def forward(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, "N F"]:
        """Encode points in [0, 1]^3 (clamped) into ``levels * features`` values."""
        if self.use_triton(x):
            return hashgrid_triton.hash_encode(x, self.table, self.resolutions, self.offsets, self.table_size)
        return self.forward_torch(x)

    def forward_torch(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, "N F"]:
        """The PyTorch encoding: CPU path, gradient w.r.t. points, and reference for the Triton kernels."""
        n, levels = x.shape[0], self.levels
        res = self.resolutions.view(1, -1, 1)  # 1 L 1
        pos = x.clamp(0.0, 1.0)[:, None, :] * res  # N L 3
        with torch.no_grad():
            base = pos.floor().long().minimum(res - 1)  # N L 3
            flat = self._corner_indices(base)  # N L 8
        frac = pos - base
        # Trilinear weights as an outer product of per-axis (1 - f, f) pairs: the same products in the same
        # order as where(corner, frac, 1 - frac).prod(-1), without an [N, L, 8, 3] tensor for autograd.
        wa = torch.stack((1 - frac, frac), -1)  # N L 3 2
        w = (wa[:, :, 0, :, None, None] * wa[:, :, 1, None, :, None] * wa[:, :, 2, None, None, :]).reshape(n, levels, 8)
        # index_select with int32 rows: autograd keeps 4 bytes per corner instead of 8 for the backward.
        feats = self.table.index_select(0, flat.reshape(-1)).view(n, levels, 8, self.features)  # N L 8 F
        return (feats * w[..., None]).sum(2).reshape(n, -1)

    def _corner_indices(self, base: Tensor) -> Tensor:
        """Table rows (int32) of the 8 corners of each point's cell, [N, L, 8], in the order of ``self.corners``.

        The same indices as the all-corners formula (int64 hash, ``%`` level size), built per axis and
        broadcast (corner c = 4 cx + 2 cy + cz) so that only int32 [N, L, 8] tensors exist: hashed levels have
        size == table_size, a power of two, so (hx ^ hy ^ hz) % size == (hx % size) ^ (hy % size) ^ (hz % size)
        and each axis's int64 product is reduced on [N, L, 2] before the int32 XOR.
        """
        n, levels = base.shape[:2]
        a = base[..., None] + torch.arange(2, device=base.device)  # N L 3 2: i, i + 1 per axis
        size = self.sizes.view(1, -1, 1)
        hx, hy, hz = ((a[:, :, d] * _PRIMES[d] % size).int() for d in range(3))  # N L 2 each
        hashed = (hx[..., :, None] ^ hy[..., None, :])[..., None] ^ hz[:, :, None, None, :]  # N L 2 2 2
        # Dense: (i (r+1) + j) (r+1) + k == i (r+1)^2 + j (r+1) + k. On hashed levels these terms can pass 2^31
        # and wrap in int32, but those levels take the hash below.
        r1 = (self.resolutions + 1).view(1, -1, 1)
        dx, dy, dz = (a[:, :, 0] * r1 * r1).int(), (a[:, :, 1] * r1).int(), a[:, :, 2].int()
        dense = (dx[..., :, None] + dy[..., None, :])[..., None] + dz[:, :, None, None, :]
        flat = torch.where(self.dense.view(1, -1, 1, 1, 1), dense, hashed)
        flat += self.offsets.view(1, -1, 1, 1, 1).int()
        return flat.reshape(n, levels, 8)

"""Multiresolution hash-grid encoding (Instant-NGP) in plain PyTorch.

Runs on CPU and CUDA with nothing compiled to install. Coarse levels whose grids fit the table
are indexed densely (no collisions); finer levels use the spatial hash of Teschner et al.
(primes 1, 2654435761, 805459861), as in Instant-NGP.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn

_PRIMES = (1, 2654435761, 805459861)


class HashGrid(nn.Module):
    def __init__(self, levels: int = 16, features: int = 2, log2_table: int = 19, base_resolution: int = 16,
                 per_level_scale: float = 1.447) -> None:
        super().__init__()
        self.levels = levels
        self.features = features
        self.table_size = 2**log2_table
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
        # Instant-NGP initialises features uniformly in +-1e-4 so the MLP starts from its bias.
        self.table = nn.Parameter(torch.empty(sum(sizes), features).uniform_(-1e-4, 1e-4))

    @property
    def output_dim(self) -> int:
        return self.levels * self.features

    def forward(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, "N F"]:
        """Encode points in [0, 1]^3 (clamped) into ``levels * features`` values."""
        n = x.shape[0]
        res = self.resolutions.view(1, -1, 1)  # 1 L 1
        pos = x.clamp(0.0, 1.0)[:, None, :] * res  # N L 3
        base = pos.floor().long().minimum(res - 1)
        frac = pos - base
        idx = base[:, :, None, :] + self.corners[None, None]  # N L 8 3
        r1 = (res + 1)[..., None]  # 1 L 1 1
        dense_index = (idx[..., 0] * r1[..., 0] + idx[..., 1]) * r1[..., 0] + idx[..., 2]
        hashed = (idx[..., 0] * _PRIMES[0]) ^ (idx[..., 1] * _PRIMES[1]) ^ (idx[..., 2] * _PRIMES[2])
        flat = torch.where(self.dense.view(1, -1, 1), dense_index, hashed % self.sizes.view(1, -1, 1))
        feats = self.table[flat + self.offsets.view(1, -1, 1)]  # N L 8 F
        c = self.corners.bool()[None, None]  # 1 1 8 3
        w = torch.where(c, frac[:, :, None, :], 1 - frac[:, :, None, :]).prod(-1)  # N L 8
        return (feats * w[..., None]).sum(2).reshape(n, -1)

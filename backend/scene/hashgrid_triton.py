"""Triton kernels for the hash-grid encoding of ``backend.scene.hashgrid.HashGrid``.

Forward: for each (block of points, level) program, the 8 corners of each point's cell are indexed
(dense or hashed exactly as ``HashGrid.forward_torch``) and their features blended trilinearly,
straight into the [N, L*F] output: no [N, L, 8] index or weight tensors exist. Backward: the gradient
w.r.t. the table only, scattered with fp32 atomics into a zeroed table (so its sums are reordered
against PyTorch's: equal to ~1e-6 relative, not bitwise). There is no gradient w.r.t. the points;
``HashGrid`` keeps points that need one on the PyTorch path.

Triton is optional: without it this module still imports, ``available()`` is False and nothing
else here may be called.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU machines and CI have no Triton
    triton = None
    tl = None

# Programs per launch: BLOCK points of one level each. The level is the slow grid axis, so programs run
# level after level and the table rows of one level (<= 2^19 x F floats = 4 MiB) stay in L2 while its
# random gathers/atomics run, as in tiny-cuda-nn.
DEFAULT_BLOCK = 256
DEFAULT_WARPS = 4


def available() -> bool:
    """True when Triton imported (the kernels then run on CUDA, or on CPU under TRITON_INTERPRET=1)."""
    return triton is not None


if triton is not None:

    @triton.jit
    def _corner(bx, by, bz, fx, fy, fz, r1, hash_mask, offset, dense, CX: tl.constexpr, CY: tl.constexpr,
                CZ: tl.constexpr):
        """Table row and trilinear weight of corner (CX, CY, CZ) of each point's cell."""
        ix = bx + CX
        iy = by + CY
        iz = bz + CZ
        # Weight: the same factors multiplied in the same order (x, y, z) as the PyTorch path.
        wx = fx if CX else 1.0 - fx
        wy = fy if CY else 1.0 - fy
        wz = fz if CZ else 1.0 - fz
        w = wx * wy * wz
        # Dense index fits int32 on dense levels (< (r+1)^3 <= table size); elsewhere it may wrap, unused.
        dense_idx = (ix * r1 + iy) * r1 + iz
        # The hash in int64 as in PyTorch (products < 2^44, no overflow, non-negative). Hashed levels have
        # size == table size, a power of two (checked by the wrapper), so `% size` is `& (size - 1)`.
        h = ix.to(tl.int64) ^ (iy.to(tl.int64) * 2654435761) ^ (iz.to(tl.int64) * 805459861)
        hashed = (h & hash_mask).to(tl.int32)
        row = tl.where(dense, dense_idx, hashed) + offset
        return row, w

    @triton.jit
    def _cell(x_ptr, rows, rmask, res_ptr, off_ptr, lvl, table_size):
        """Per-level constants, cell corner (base) and in-cell fraction of each point, as in PyTorch."""
        res = tl.load(res_ptr + lvl).to(tl.int32)
        offset = tl.load(off_ptr + lvl).to(tl.int32)
        r1 = res + 1
        r1_64 = r1.to(tl.int64)
        dense = r1_64 * r1_64 * r1_64 <= table_size  # the rule of HashGrid.dense; others hash into table_size
        resf = res.to(tl.float32)
        rows64 = rows.to(tl.int64)
        x0 = tl.load(x_ptr + rows64 * 3 + 0, mask=rmask, other=0.0)
        x1 = tl.load(x_ptr + rows64 * 3 + 1, mask=rmask, other=0.0)
        x2 = tl.load(x_ptr + rows64 * 3 + 2, mask=rmask, other=0.0)
        # clamp(0, 1) then * res, rounded to fp32 before floor and before the subtraction (the launch
        # turns FMA contraction off: a fused x*res - base would give a different frac than PyTorch).
        px = tl.minimum(tl.maximum(x0, 0.0), 1.0) * resf
        py = tl.minimum(tl.maximum(x1, 0.0), 1.0) * resf
        pz = tl.minimum(tl.maximum(x2, 0.0), 1.0) * resf
        bx = tl.minimum(tl.floor(px).to(tl.int32), res - 1)
        by = tl.minimum(tl.floor(py).to(tl.int32), res - 1)
        bz = tl.minimum(tl.floor(pz).to(tl.int32), res - 1)
        fx = px - bx.to(tl.float32)
        fy = py - by.to(tl.float32)
        fz = pz - bz.to(tl.float32)
        return bx, by, bz, fx, fy, fz, r1, offset, dense

    @triton.jit
    def _hash_encode_fwd(x_ptr, table_ptr, out_ptr, res_ptr, off_ptr, n_points, out_stride, table_size,
                         F: tl.constexpr, F_PAD: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        lvl = tl.program_id(1)
        rows = pid * BLOCK + tl.arange(0, BLOCK)
        rmask = rows < n_points
        cols = tl.arange(0, F_PAD)
        mask2 = rmask[:, None] & (cols < F)[None, :]
        bx, by, bz, fx, fy, fz, r1, offset, dense = _cell(x_ptr, rows, rmask, res_ptr, off_ptr, lvl, table_size)
        acc = tl.zeros([BLOCK, F_PAD], dtype=tl.float32)
        # Corners in HashGrid.corners order (c = 4 cx + 2 cy + cz), summed in that order from zero.
        for c in tl.static_range(8):
            row, w = _corner(bx, by, bz, fx, fy, fz, r1, table_size - 1, offset, dense, (c >> 2) & 1, (c >> 1) & 1,
                             c & 1)
            feat = tl.load(table_ptr + row[:, None] * F + cols[None, :], mask=mask2, other=0.0)
            acc += feat * w[:, None]
        out_offs = rows.to(tl.int64)[:, None] * out_stride + lvl * F + cols[None, :]
        tl.store(out_ptr + out_offs, acc, mask=mask2)

    @triton.jit
    def _hash_encode_bwd(x_ptr, grad_out_ptr, grad_table_ptr, res_ptr, off_ptr, n_points, out_stride, table_size,
                         F: tl.constexpr, F_PAD: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        lvl = tl.program_id(1)
        rows = pid * BLOCK + tl.arange(0, BLOCK)
        rmask = rows < n_points
        cols = tl.arange(0, F_PAD)
        mask2 = rmask[:, None] & (cols < F)[None, :]
        bx, by, bz, fx, fy, fz, r1, offset, dense = _cell(x_ptr, rows, rmask, res_ptr, off_ptr, lvl, table_size)
        g_offs = rows.to(tl.int64)[:, None] * out_stride + lvl * F + cols[None, :]
        g = tl.load(grad_out_ptr + g_offs, mask=mask2, other=0.0)
        for c in tl.static_range(8):
            row, w = _corner(bx, by, bz, fx, fy, fz, r1, table_size - 1, offset, dense, (c >> 2) & 1, (c >> 1) & 1,
                             c & 1)
            # Relaxed: only the sums matter, no ordering with other memory.
            tl.atomic_add(grad_table_ptr + row[:, None] * F + cols[None, :], g * w[:, None], mask=mask2,
                          sem="relaxed")


    # F == 2 (the NeRF's case): one 64-bit load per corner holds both features, and every tensor stays 1-D, so
    # the general kernels' [BLOCK, F] tiles (two 32-bit loads per corner, shared-memory layout conversions
    # between the 1-D weights and the 2-D tiles) are avoided. The table, output and output gradient are passed
    # as int64 views of their float32 pairs (little-endian: feature 0 in the low word).

    @triton.jit
    def _unpack2(v):
        lo = v.to(tl.int32).to(tl.float32, bitcast=True)  # int64 -> int32 truncates to the low word
        hi = (v >> 32).to(tl.int32).to(tl.float32, bitcast=True)
        return lo, hi

    @triton.jit
    def _hash_encode_fwd_f2(x_ptr, table2_ptr, out2_ptr, res_ptr, off_ptr, n_points, levels, table_size,
                            BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        lvl = tl.program_id(1)
        rows = pid * BLOCK + tl.arange(0, BLOCK)
        rmask = rows < n_points
        bx, by, bz, fx, fy, fz, r1, offset, dense = _cell(x_ptr, rows, rmask, res_ptr, off_ptr, lvl, table_size)
        acc0 = tl.zeros([BLOCK], dtype=tl.float32)
        acc1 = tl.zeros([BLOCK], dtype=tl.float32)
        for c in tl.static_range(8):
            row, w = _corner(bx, by, bz, fx, fy, fz, r1, table_size - 1, offset, dense, (c >> 2) & 1, (c >> 1) & 1,
                             c & 1)
            f0, f1 = _unpack2(tl.load(table2_ptr + row, mask=rmask, other=0))
            acc0 += f0 * w
            acc1 += f1 * w
        packed = (acc0.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF) \
            | (acc1.to(tl.int32, bitcast=True).to(tl.int64) << 32)
        tl.store(out2_ptr + rows.to(tl.int64) * levels + lvl, packed, mask=rmask)

    @triton.jit
    def _hash_encode_bwd_f2(x_ptr, grad_out2_ptr, grad_table_ptr, res_ptr, off_ptr, n_points, levels, table_size,
                            BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        lvl = tl.program_id(1)
        rows = pid * BLOCK + tl.arange(0, BLOCK)
        rmask = rows < n_points
        bx, by, bz, fx, fy, fz, r1, offset, dense = _cell(x_ptr, rows, rmask, res_ptr, off_ptr, lvl, table_size)
        g0, g1 = _unpack2(tl.load(grad_out2_ptr + rows.to(tl.int64) * levels + lvl, mask=rmask, other=0))
        for c in tl.static_range(8):
            row, w = _corner(bx, by, bz, fx, fy, fz, r1, table_size - 1, offset, dense, (c >> 2) & 1, (c >> 1) & 1,
                             c & 1)
            tl.atomic_add(grad_table_ptr + row * 2, g0 * w, mask=rmask, sem="relaxed")
            tl.atomic_add(grad_table_ptr + row * 2 + 1, g1 * w, mask=rmask, sem="relaxed")


def _check(x: Tensor, table: Tensor, resolutions: Tensor, offsets: Tensor, table_size: int) -> None:
    # Python-side checks only: nothing here may synchronise with the GPU.
    if triton is None:
        raise RuntimeError("hash_encode needs Triton, which did not import")
    if x.dim() != 2 or x.shape[1] != 3 or x.dtype != torch.float32:
        raise ValueError(f"points must be float32 [N, 3], got {x.dtype} {tuple(x.shape)}")
    if table.dtype != torch.float32 or table.dim() != 2:
        raise ValueError(f"table must be float32 [T, F], got {table.dtype} {tuple(table.shape)}")
    if resolutions.dtype != torch.int64 or offsets.dtype != torch.int64 or resolutions.shape != offsets.shape:
        raise ValueError("resolutions and offsets must be int64 [L]")
    # The kernels take `hash % size` as `hash & (size - 1)`: exact for powers of two (HashGrid's 2**log2_table).
    if table_size < 1 or table_size & (table_size - 1) or table_size >= 2**31:
        raise ValueError(f"table_size must be a power of two below 2^31, got {table_size}")
    if table.numel() >= 2**31:
        raise ValueError("table too large for int32 element offsets")


class _HashEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, resolutions: Tensor, offsets: Tensor, table_size: int,
                block: int, num_warps: int, packed: bool) -> Tensor:
        n, levels, f = x.shape[0], resolutions.shape[0], table.shape[1]
        out = torch.empty(n, levels * f, device=x.device, dtype=torch.float32)
        # The int64 views need 8-byte aligned pairs (a table sliced from a larger tensor may not have them).
        packed = packed and f == 2 and table.data_ptr() % 8 == 0
        if n > 0:
            grid = (triton.cdiv(n, block), levels)
            # enable_fp_fusion=False: PyTorch rounds x*res before subtracting floor(x*res); an FMA would not.
            if packed:
                _hash_encode_fwd_f2[grid](x, table.view(torch.int64), out.view(torch.int64), resolutions, offsets, n,
                                          levels, table_size, BLOCK=block, num_warps=num_warps, enable_fp_fusion=False)
            else:
                _hash_encode_fwd[grid](x, table, out, resolutions, offsets, n, levels * f, table_size, F=f,
                                       F_PAD=triton.next_power_of_2(f), BLOCK=block, num_warps=num_warps,
                                       enable_fp_fusion=False)
        ctx.save_for_backward(x, resolutions, offsets)
        ctx.table_shape = table.shape
        ctx.table_size, ctx.block, ctx.num_warps, ctx.packed = table_size, block, num_warps, packed
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, resolutions, offsets = ctx.saved_tensors
        if ctx.needs_input_grad[0]:
            raise RuntimeError("the Triton hash-grid path has no gradient w.r.t. the points; use backend='torch'")
        grad_table = None
        if ctx.needs_input_grad[1]:
            n, levels = x.shape[0], resolutions.shape[0]
            t, f = ctx.table_shape
            grad_out = grad_out.float().contiguous()
            if ctx.packed and grad_out.data_ptr() % 8:
                grad_out = grad_out.clone()  # a fresh allocation is aligned for the int64 view
            grad_table = torch.zeros(t, f, device=x.device, dtype=torch.float32)
            if n > 0:
                grid = (triton.cdiv(n, ctx.block), levels)
                if ctx.packed:
                    _hash_encode_bwd_f2[grid](x, grad_out.view(torch.int64), grad_table, resolutions, offsets, n,
                                              levels, ctx.table_size, BLOCK=ctx.block, num_warps=ctx.num_warps,
                                              enable_fp_fusion=False)
                else:
                    _hash_encode_bwd[grid](x, grad_out, grad_table, resolutions, offsets, n, levels * f,
                                           ctx.table_size, F=f, F_PAD=triton.next_power_of_2(f), BLOCK=ctx.block,
                                           num_warps=ctx.num_warps, enable_fp_fusion=False)
        return None, grad_table, None, None, None, None, None, None


def hash_encode(x: Tensor, table: Tensor, resolutions: Tensor, offsets: Tensor, table_size: int,
                block: int = DEFAULT_BLOCK, num_warps: int = DEFAULT_WARPS, packed: bool = True) -> Tensor:
    """Hash-grid encoding of points ``x`` [N, 3] with ``table`` [T, F]: [N, L*F], differentiable w.r.t. the table.

    ``resolutions`` and ``offsets`` are HashGrid's per-level int64 buffers (on x's device); a level is dense
    when (r+1)^3 <= ``table_size`` and otherwise hashes into ``table_size`` rows (a power of two). Level l's
    features land in columns l*F .. l*F+F-1. Points are clamped to [0, 1]. Points needing a gradient are
    refused: there is no d/dx. ``block``, ``num_warps`` and ``packed`` (the F == 2 kernels, else the general
    ones) only change speed.
    """
    _check(x, table, resolutions, offsets, table_size)
    if x.requires_grad and torch.is_grad_enabled():
        raise ValueError("the Triton hash-grid path has no gradient w.r.t. the points; use backend='torch'")
    return _HashEncode.apply(x.contiguous(), table.contiguous(), resolutions.contiguous(), offsets.contiguous(),
                             table_size, block, num_warps, packed)

"""The Triton hash-grid path against the PyTorch one, and the PyTorch path against the original formula.

The Triton tests need CUDA and Triton; they are skipped otherwise (CPU CI has neither). For a local check
without a GPU they also run on CPU tensors under the Triton interpreter: ``TRITON_INTERPRET=1 pytest ...``
(slow: sizes are cut down there). The PyTorch-path and dispatch tests run everywhere.
"""

from __future__ import annotations

import os

import pytest
import torch

from backend.scene import hashgrid_triton
from backend.scene.hashgrid import HashGrid

CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1" and not CUDA
DEVICE = "cuda" if CUDA else "cpu"
needs_triton = pytest.mark.skipif(not hashgrid_triton.available() or not (CUDA or INTERPRET),
                                  reason="needs Triton and CUDA (or TRITON_INTERPRET=1)")
N_POINTS = 2000 if INTERPRET else 1 << 16

# Dense-only (every level's grid fits the table), the NeRF's default (coarse dense, fine hashed), and a small
# table that hashes almost every level.
CONFIGS = {
    "dense": dict(levels=4, log2_table=19),
    "hashed-19": dict(levels=16, log2_table=19),
    "hashed-12": dict(levels=16, log2_table=12),
}
if INTERPRET:  # the interpreter runs a kernel per level in numpy: keep it to minutes
    CONFIGS["hashed-19"] = dict(levels=12, log2_table=19)
    CONFIGS["hashed-12"] = dict(levels=8, log2_table=12)


def _reference(grid: HashGrid, x: torch.Tensor) -> torch.Tensor:
    """The original all-corners-at-once formula the PyTorch path was written from (kept as the spec, in the
    benchmark that also times it)."""
    from bench.hashgrid_speed import original_forward

    return original_forward(grid, x)


def _grid(config: dict, device: str, seed: int = 0) -> HashGrid:
    torch.manual_seed(seed)
    grid = HashGrid(**config).to(device)
    with torch.no_grad():  # trained-size features, so that errors are not hidden by the +-1e-4 init
        grid.table.uniform_(-1.0, 1.0)
    return grid


def _points(n: int, device: str, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g) * 1.4 - 0.2  # ~1/3 of the points have a coordinate outside [0, 1]
    k = n // 8
    # On cell borders of every level whose resolution divides 2^12 exactly, plus 0 and 1 themselves.
    x[:k] = torch.randint(0, 4097, (k, 3), generator=g) / 4096.0
    x[k : 2 * k] = torch.randint(0, 2, (k, 3), generator=g).float()
    # Cell borders of the first level (resolution 16), a few cells outside the box.
    x[2 * k : 3 * k] = torch.randint(-3, 20, (k, 3), generator=g) / 16.0
    return x.to(device)


# --- PyTorch path (runs everywhere) -----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_torch_path_matches_the_original_formula(name: str) -> None:
    grid = _grid(CONFIGS[name], "cpu")
    grid.backend = "torch"
    x = _points(4000, "cpu")
    assert torch.equal(grid(x), _reference(grid, x))  # same gathers, weights and sums: bitwise
    # Gradients (table and points) agree to rounding: autograd's backward formulas differ.
    g = torch.randn(x.shape[0], grid.output_dim, generator=torch.Generator().manual_seed(2))
    grads = []
    for fn in (grid, lambda p: _reference(grid, p)):
        p = x.clone().requires_grad_(True)
        grid.table.grad = None
        (fn(p) * g).sum().backward()
        grads.append((grid.table.grad.clone(), p.grad.clone()))
    for a, b in zip(*grads):
        assert (a - b).abs().max() <= 1e-6 * b.abs().max()


def test_auto_dispatch_keeps_cpu_and_point_gradients_on_torch() -> None:
    grid = HashGrid(levels=2)
    x = torch.rand(8, 3)
    assert not grid.use_triton(x)  # CPU tensors
    if CUDA:
        grid = grid.cuda()
        xc = x.cuda()
        assert grid.use_triton(xc) == hashgrid_triton.available()
        assert not grid.use_triton(xc.requires_grad_(True))  # analytic normals need d/dx
        grid.backend = "torch"
        assert not grid.use_triton(xc.detach())


# --- Triton path -------------------------------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("name", list(CONFIGS))
def test_triton_forward_and_table_gradient_match_torch(name: str) -> None:
    grid = _grid(CONFIGS[name], DEVICE)
    x = _points(N_POINTS, DEVICE)
    if CUDA:
        assert grid.use_triton(x)  # "auto" picks Triton here
    grid.backend = "torch"
    ref = grid(x)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    (ref * g).sum().backward()
    grad_ref = grid.table.grad.clone()
    grid.table.grad = None

    grid.backend = "triton"
    out = grid(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    # Same products; only the 8-corner sum may be ordered differently (features are O(1) here).
    assert (out - ref).abs().max().item() < 1e-5
    out.mul(g).sum().backward()
    grad = grid.table.grad
    # fp32 atomics sum each row's contributions in another order: equal to rounding, relative to the row's size.
    scale = grad_ref.abs().max()
    assert (grad - grad_ref).abs().max().item() <= 1e-5 * scale.item()
    torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-6 * scale.item())
    # Rows no point touched stay exactly zero, as in PyTorch.
    assert torch.equal(grad == 0, grad_ref == 0)

    # The general-F kernels (used when F != 2) do the same arithmetic as the F == 2 ones the grid used.
    grid.table.grad = None
    general = hashgrid_triton.hash_encode(x, grid.table, grid.resolutions, grid.offsets, grid.table_size,
                                          packed=False)
    assert torch.equal(general, out)
    general.mul(g).sum().backward()
    torch.testing.assert_close(grid.table.grad, grad_ref, rtol=1e-4, atol=1e-6 * scale.item())


@needs_triton
def test_triton_general_feature_count_and_empty_input() -> None:
    grid = _grid(dict(levels=3, features=3, log2_table=10), DEVICE)
    x = _points(512, DEVICE)
    grid.backend = "torch"
    ref = grid(x)
    grid.backend = "triton"
    assert (grid(x) - ref).abs().max().item() < 1e-5
    assert grid(x[:0]).shape == (0, grid.output_dim)


@needs_triton
def test_triton_refuses_point_gradients_and_forced_backend_falls_back() -> None:
    grid = _grid(CONFIGS["dense"], DEVICE)
    x = _points(64, DEVICE).requires_grad_(True)
    with pytest.raises(ValueError, match="points"):
        hashgrid_triton.hash_encode(x, grid.table, grid.resolutions, grid.offsets, grid.table_size)
    with torch.no_grad():  # no gradient wanted: fine
        hashgrid_triton.hash_encode(x, grid.table, grid.resolutions, grid.offsets, grid.table_size)
    grid.backend = "triton"
    assert not grid.use_triton(x)  # even when forced, d/dx needs the PyTorch path
    grid(x).sum().backward()
    assert x.grad is not None


@needs_triton
@pytest.mark.parametrize("normal_eps", [0.01, 0.0])
def test_nerf_render_same_with_triton_and_torch(normal_eps: float) -> None:
    """A NeRF render and its table gradient agree across the two paths.

    normal_eps > 0: finite-difference normals, every encoding call goes to Triton. normal_eps == 0: analytic
    normals differentiate w.r.t. the points, so those calls stay on PyTorch and the rest use Triton.
    """
    from backend.scene.cameras import orbit_views
    from backend.scene.nerf import NeRFScene

    small = INTERPRET
    torch.manual_seed(0)
    scene = NeRFScene(grid_levels=8 if small else 16, grid_log2_table=14 if small else 19,
                      samples_per_ray=24 if small else 64, normal_eps=normal_eps).to(DEVICE)
    with torch.no_grad():  # visible structure on top of the blob
        scene.encoding.table.uniform_(-1.0, 1.0)
    scene.eval()  # fixed sample positions, so both renders see the same points
    views = orbit_views([0.0, 120.0], [20.0, 10.0], [2.0, 2.2], [40.0, 40.0]).to(DEVICE)
    size = 12 if small else 64
    results = []
    for backend in ("torch", "triton" if INTERPRET else "auto"):
        scene.encoding.backend = backend
        scene.zero_grad(set_to_none=True)
        out = scene.render(views, size, size)
        (out.rgb.square().mean() + out.losses["orientation"]).backward()
        results.append((out.rgb.detach(), out.opacity.detach(), scene.encoding.table.grad.clone()))
    (rgb_t, op_t, grad_t), (rgb, op, grad) = results
    # Encodings differ by float rounding; the MLP, exp and the finite-difference normals amplify it a little.
    # A sample whose weight sits on normal_min_weight may switch shading, moving its pixel by < 1e-4.
    assert (rgb - rgb_t).abs().max().item() < 1e-3
    assert (rgb - rgb_t).abs().mean().item() < 1e-5
    assert (op - op_t).abs().max().item() < 1e-4
    assert (grad - grad_t).abs().max().item() <= 1e-3 * grad_t.abs().max().item()

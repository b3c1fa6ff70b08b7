"""The colour a mesh is baked with is the colour the renders show at its surface (Representation.surface_albedo).

The mesh is a level set of the density; the renders accumulate colour where the density has built up opacity. When
the two differ, the field's colour at the mesh is a colour no camera ever saw. These tests build fields where they
differ on purpose and check that the baked colour is the seen one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from backend.scene.nerf import NeRFScene


class ShellField(NeRFScene):
    """A NeRF whose field is written down: opaque red between radius 0.26 and 0.30, grey inside, and in front of the
    surface (radius > 0.30, density 0.05: far too thin to be seen) a green the albedo head made up."""

    def _raw(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = points.norm(dim=-1)
        sigma = torch.where(r <= 0.30, torch.full_like(r, 400.0), torch.full_like(r, 0.05))
        red, grey, green = (torch.tensor(c, dtype=points.dtype) for c in ([0.9, 0.1, 0.1], [0.5] * 3, [0.1, 0.9, 0.1]))
        colour = torch.where((r > 0.30)[:, None], green, torch.where((r > 0.26)[:, None], red, grey))
        return sigma, colour


def test_a_nerf_mesh_in_front_of_the_visible_layer_is_baked_with_the_seen_colour():
    field = ShellField(grid_levels=2, grid_log2_table=8, samples_per_ray=8)
    normals = F.normalize(torch.randn(400, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    points = normals * 0.32  # a level set a little in front of the opaque shell
    red = torch.tensor([0.9, 0.1, 0.1])
    assert (field.albedo(points) - red).norm(dim=-1).min() > 0.5  # the field there is the made-up green
    assert (field.surface_albedo(points, normals) - red).norm(dim=-1).max() < 0.02
    # The side matters: looking from inside (normals flipped) a point inside the shell sees the grey core.
    inner = normals * 0.2
    assert (field.surface_albedo(inner, normals) - 0.5).abs().max() < 0.02


def test_a_point_no_ray_sees_keeps_the_field_colour():
    field = ShellField(grid_levels=2, grid_log2_table=8, samples_per_ray=8)
    normals = F.normalize(torch.randn(50, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    far = normals * 0.45  # 0.15 outside the shell: the short ray crosses only the thin green
    torch.testing.assert_close(field.surface_albedo(far, normals), field.albedo(far))

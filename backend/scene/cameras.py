"""Cameras and lights shared by the renderers and the camera-aware prior.

Axis convention (written once, used everywhere in the backend):
- World: right-handed, +Z up, as in Blender. An object sits at the origin inside the unit box.
- Azimuth 0 puts the camera on -Y looking toward +Y (Blender's "front" view); azimuth grows
  counter-clockwise seen from above (toward +X at 90 deg). Elevation is above the XY plane.
- Camera frames are OpenGL-style: the camera looks down its -Z axis with +Y up, +X right.
  ``c2w`` maps camera coordinates to world coordinates.
glTF export turns +Z up into glTF's +Y up (backend/export, issue 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from backend.config import SettingsView
from backend.transfer import host_to_device


@dataclass(frozen=True)
class Views:
    """A batch of pinhole cameras, each with a directional light for diffuse shading."""

    c2w: Float[Tensor, "B 4 4"]
    fovy: Float[Tensor, "B"]  # vertical field of view, radians
    light_dir: Float[Tensor, "B 3"]  # unit vector from the surface toward the light, world frame
    ambient: float = 0.35

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def origins(self) -> Float[Tensor, "B 3"]:
        return self.c2w[:, :3, 3]

    def to(self, device: torch.device | str) -> "Views":
        return Views(host_to_device(self.c2w, device), host_to_device(self.fovy, device),
                     host_to_device(self.light_dir, device), self.ambient)

    def select(self, indices: list[int]) -> "Views":
        """The views at ``indices`` (repeats allowed), with the same ambient term."""
        return Views(self.c2w[indices], self.fovy[indices], self.light_dir[indices], self.ambient)

    def key(self, i: int) -> bytes:
        """A hashable identity of view ``i`` (for render caches)."""
        parts = (self.c2w[i], self.fovy[i : i + 1], self.light_dir[i])
        return b"".join(p.detach().to("cpu", torch.float32).numpy().tobytes() for p in parts) + str(
            self.ambient
        ).encode()


def look_at(eye: Float[Tensor, "B 3"], target: Float[Tensor, "B 3"] | None = None) -> Float[Tensor, "B 4 4"]:
    """Camera-to-world matrices for cameras at ``eye`` looking at ``target`` with world +Z up."""
    if target is None:
        target = torch.zeros_like(eye)
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device).expand_as(forward)
    right = torch.cross(forward, up, dim=-1)
    # Looking straight up or down: any right vector orthogonal to forward will do.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    alt = torch.tensor([1.0, 0.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(right)
    right = torch.where(degenerate, alt, right)
    right = torch.nn.functional.normalize(right, dim=-1)
    cam_up = torch.cross(right, forward, dim=-1)
    c2w = torch.zeros(eye.shape[0], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = cam_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = eye
    c2w[:, 3, 3] = 1.0
    return c2w


def orbit_position(
    azimuth_deg: Float[Tensor, "B"], elevation_deg: Float[Tensor, "B"], distance: Float[Tensor, "B"]
) -> Float[Tensor, "B 3"]:
    az = torch.deg2rad(azimuth_deg)
    el = torch.deg2rad(elevation_deg)
    return torch.stack(
        [distance * torch.sin(az) * torch.cos(el), -distance * torch.cos(az) * torch.cos(el), distance * torch.sin(el)],
        dim=-1,
    )


def orbit_views(
    azimuth_deg: Float[Tensor, "B"] | list[float],
    elevation_deg: Float[Tensor, "B"] | list[float],
    distance: Float[Tensor, "B"] | list[float],
    fovy_deg: Float[Tensor, "B"] | list[float],
    light_dir: Float[Tensor, "B 3"] | None = None,
    ambient: float = 0.35,
) -> Views:
    """Cameras on an orbit around the origin. The default light is a head-light raised by 30 deg."""
    az, el, dist, fov = (torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in (azimuth_deg, elevation_deg, distance, fovy_deg))
    n = max(az.numel(), el.numel(), dist.numel(), fov.numel())
    az, el, dist, fov = (v.expand(n) if v.numel() == 1 else v for v in (az, el, dist, fov))
    eye = orbit_position(az, el, dist)
    if light_dir is None:
        light_dir = orbit_position(az - 30.0, (el + 30.0).clamp(max=89.0), torch.ones_like(dist))
    light_dir = torch.nn.functional.normalize(torch.as_tensor(light_dir, dtype=torch.float32).reshape(-1, 3), dim=-1)
    return Views(look_at(eye), torch.deg2rad(fov), light_dir.expand(n, 3).contiguous(), ambient)


def front_view(n: int = 1) -> Views:
    """The fixed camera of the 2D experiment: front, 20 deg above, distance 2, fovy 40 deg."""
    return orbit_views([0.0] * n, [20.0] * n, [2.0] * n, [40.0] * n)


def ray_bundle(views: Views, height: int, width: int,
               jitter: bool = False) -> tuple[Float[Tensor, "B H W 3"], Float[Tensor, "B H W 3"]]:
    """World-space ray origins and unit directions through pixel centres, or with ``jitter`` through a uniformly
    random point of each pixel (fresh per view and call), so that the expected render over training steps is the
    pixel's area, which is what a supersampled target shows."""
    device = views.c2w.device
    ys = torch.arange(height, device=device, dtype=torch.float32)[None, :, None]
    xs = torch.arange(width, device=device, dtype=torch.float32)[None, None, :]
    if jitter:
        offset = torch.rand(len(views), height, width, 2, device=device)
        yy, xx = (ys + offset[..., 0]) / height, (xs + offset[..., 1]) / width  # B H W
    else:
        yy, xx = ((ys + 0.5) / height).expand(1, height, width), ((xs + 0.5) / width).expand(1, height, width)
    tan_half = torch.tan(views.fovy / 2)[:, None, None]  # B 1 1
    aspect = width / height
    cx = (2 * xx - 1) * tan_half * aspect
    cy = (1 - 2 * yy) * tan_half
    dirs_cam = torch.stack([cx, cy, -torch.ones_like(cx)], dim=-1)  # B H W 3
    rot = views.c2w[:, None, None, :3, :3]
    dirs = torch.nn.functional.normalize((rot @ dirs_cam[..., None])[..., 0], dim=-1)
    origins = views.c2w[:, None, None, :3, 3].expand_as(dirs)
    return origins, dirs


__all__ = ["Views", "look_at", "orbit_views", "orbit_position", "front_view", "ray_bundle", "CameraConfig",
           "sample_orbit_views", "eval_views", "view_suffix"]


@dataclass(frozen=True)
class CameraConfig(SettingsView):
    """The training cameras' and their lights' ranges: the settings of these names (shared/settings.py has their
    meaning, defaults and ranges). Degrees and world units."""

    camera_elevation_min: float
    camera_elevation_max: float
    camera_distance_min: float
    camera_distance_max: float
    camera_fovy_min: float
    camera_fovy_max: float
    light_azimuth_spread: float
    light_elevation_offset_min: float
    light_elevation_offset_max: float


def sample_orbit_views(n: int, cameras: CameraConfig,
                       generator: torch.Generator) -> tuple[Views, list[tuple[float, float]]]:
    """Random training cameras around the object, azimuths stratified over the batch.

    Each view carries a random light within ``light_azimuth_spread`` deg (azimuth) of its camera, raised
    ``light_elevation_offset_min``..``_max`` deg above the camera's elevation (by default from any side), so
    diffuse shading reveals shape. Returns the views and (azimuth, elevation) per view for view-dependent prompts.
    """
    def uniform(lo: float, hi: float, count: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(count, generator=generator)

    strata = (torch.arange(n) + torch.rand(n, generator=generator)) / n
    azimuth = (strata * 360.0 + float(torch.rand(1, generator=generator)) * 360.0) % 360.0 - 180.0
    elevation = uniform(cameras.camera_elevation_min, cameras.camera_elevation_max, n)
    distance = uniform(cameras.camera_distance_min, cameras.camera_distance_max, n)
    fovy = uniform(cameras.camera_fovy_min, cameras.camera_fovy_max, n)
    spread = cameras.light_azimuth_spread
    light_az = azimuth + uniform(-spread, spread, n)
    light_el = elevation + uniform(cameras.light_elevation_offset_min, cameras.light_elevation_offset_max, n)
    light_el = light_el.clamp(-89.0, 89.0)
    light = orbit_position(light_az, light_el, torch.ones(n))
    views = orbit_views(azimuth, elevation, distance, fovy, light_dir=light)
    return views, list(zip(azimuth.tolist(), elevation.tolist()))


def eval_views(n: int = 8, elevation: float = 20.0, distance: float = 2.0, fovy: float = 40.0) -> Views:
    """The fixed turntable used for previews, mesh-level selection and figures."""
    azimuth = [i * 360.0 / n for i in range(n)]
    return orbit_views(azimuth, [elevation] * n, [distance] * n, [fovy] * n)


def view_suffix(azimuth_deg: float, elevation_deg: float) -> str:
    """DreamFusion's view-dependent prompt suffix for a camera (azimuth 0 = front)."""
    if elevation_deg > 60.0:
        return ", overhead view"
    a = abs((azimuth_deg + 180.0) % 360.0 - 180.0)
    if a < 45.0:
        return ", front view"
    if a > 135.0:
        return ", back view"
    return ", side view"

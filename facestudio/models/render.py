"""Differentiable volume rendering of a voxel radiance field (3DVADER sec. 3.1; NeRF quadrature).

Rays come from pixel intrinsics and camera-to-head poses (camera in OpenGL axes). Each ray is
clipped to the head box, sampled at stratified depths, and the raw (geometry, RGB) grid is read
by trilinear interpolation (``grid_sample``) *before* the activations, which lets a coarse grid
represent surfaces sharper than a voxel. The geometry (:mod:`facestudio.models.geometry`) turns
the first channel into opacities alpha - per sample for a density (1 - exp(-sigma * delta)), per
interval between samples for a distance field; transmittance T_i = prod_{j<i} (1 - alpha_j),
weights w_i = T_i alpha_i; colour, depth and opacity are w-weighted sums. Ray directions have
camera-frame z = -1, so the ray parameter t *is* the optical-axis depth that the depth maps store.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from facestudio.models.autodecoder import rgb_from_raw
from facestudio.models.geometry import DensityGeometry


@dataclass(frozen=True)
class Box:
    """The axis-aligned cube (canonical head frame, metres) the grid spans, corners = grid corners."""

    center: tuple[float, float, float]
    size: float

    def voxel_size(self, resolution: int) -> float:
        return self.size / (resolution - 1)


def make_rays(K: torch.Tensor, cam_to_head: torch.Tensor, height: int, width: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-view rays in the head frame: origins and directions, each (V, H*W, 3).

    ``K`` (V, 3, 3) uses the OpenCV pixel convention (v down, pixel centres at integers);
    the camera looks down -Z with y up, hence the sign flips.
    """
    dtype, device = cam_to_head.dtype, cam_to_head.device
    v, u = torch.meshgrid(torch.arange(height, dtype=dtype, device=device),
                          torch.arange(width, dtype=dtype, device=device), indexing="ij")
    u, v = u.reshape(1, -1), v.reshape(1, -1)
    fx, fy, cx, cy = (K[:, 0, 0, None], K[:, 1, 1, None], K[:, 0, 2, None], K[:, 1, 2, None])
    dirs_cam = torch.stack([(u - cx) / fx, -(v - cy) / fy, -torch.ones_like(u - cx)], dim=-1)
    dirs = dirs_cam @ cam_to_head[:, :3, :3].transpose(1, 2)
    origins = cam_to_head[:, None, :3, 3].expand_as(dirs)
    return origins, dirs


def intersect_box(origins: torch.Tensor, dirs: torch.Tensor, box: Box) -> tuple[torch.Tensor, torch.Tensor]:
    """Slab test: (near, far) ray parameters; far <= near where the ray misses. Near >= 0."""
    center = torch.tensor(box.center, dtype=origins.dtype, device=origins.device)
    half = box.size / 2
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (center - half - origins) / safe
    t1 = (center + half - origins) / safe
    near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    return near, far


def render_rays(grid: torch.Tensor, origins: torch.Tensor, dirs: torch.Tensor, box: Box,
                samples: int, stratified: bool, background: torch.Tensor | None = None,
                geometry: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Render rays through per-object raw grids.

    grid: (B, 4, D, H, W) raw (geometry, RGB) with D = z, H = y, W = x; origins/dirs: (B, R, 3).
    ``geometry`` gives the first channel its meaning (default: the paper's density).
    Returns rgb (B, R, 3) composited over ``background``, depth (B, R) (expected t where the
    ray is opaque, normalised by opacity), opacity (B, R).
    """
    b, r, _ = origins.shape
    geometry = geometry if geometry is not None else DensityGeometry()
    near, far = intersect_box(origins, dirs, box)
    hit = far > near
    far = torch.where(hit, far, near)
    steps = torch.arange(samples, dtype=origins.dtype, device=origins.device)
    offsets = torch.rand(b, r, samples, dtype=origins.dtype, device=origins.device) if stratified \
        else torch.full((1, 1, samples), 0.5, dtype=origins.dtype, device=origins.device)
    span = (far - near)[..., None]
    t = near[..., None] + (steps + offsets) / samples * span                    # (B, R, S)
    points = origins[:, :, None, :] + t[..., None] * dirs[:, :, None, :]         # (B, R, S, 3)
    center = torch.tensor(box.center, dtype=origins.dtype, device=origins.device)
    normed = ((points - center) / (box.size / 2)).to(grid.dtype)
    values = F.grid_sample(grid, normed[:, None], mode="bilinear", padding_mode="border",
                           align_corners=True)[:, :, 0]                          # (B, 4, R, S)
    rgb = rgb_from_raw(values[:, 1:4]).permute(0, 2, 3, 1)                       # (B, R, S, 3)
    delta = (span / samples * dirs.norm(dim=-1, keepdim=True)).to(values.dtype)  # metres
    alpha = geometry.alpha(values[:, 0], delta, box.voxel_size(grid.shape[-1]))
    if geometry.intervals:   # alphas of the S - 1 intervals: their colour and depth at the middle
        rgb = 0.5 * (rgb[..., :-1, :] + rgb[..., 1:, :])
        t = 0.5 * (t[..., :-1] + t[..., 1:])
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1.0 - alpha[..., :-1] + 1e-10], -1), -1)
    weights = alpha * trans * hit[..., None]
    opacity = weights.sum(-1)
    color = (weights[..., None] * rgb).sum(-2)
    if background is not None:
        color = color + (1.0 - opacity[..., None]) * background.to(color)
    depth = (weights * t.to(weights.dtype)).sum(-1) / opacity.clamp_min(1e-6)
    return {"rgb": color, "depth": depth, "opacity": opacity}


def orbit_cameras(box: Box, views: int, size: int, distance: float = 0.46, max_yaw_deg: float = 40.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """K (V, 3, 3) and cam_to_head (V, 4, 4) on a yaw arc around the box, framing all of it.

    The same distance and yaw range as the virtual device's script, so previews look like captures.
    """
    center = torch.tensor(box.center, dtype=torch.float64)
    yaws = torch.deg2rad(torch.linspace(-max_yaw_deg, max_yaw_deg, views, dtype=torch.float64)) if views > 1 \
        else torch.zeros(1, dtype=torch.float64)
    half = box.size / 2
    f = (size / 2) * (distance - half) / (half * 1.05)
    K = torch.tensor([[f, 0, (size - 1) / 2], [0, f, (size - 1) / 2], [0, 0, 1]], dtype=torch.float64)
    poses = []
    for yaw in yaws:
        back = torch.stack([torch.sin(yaw), torch.zeros(()), torch.cos(yaw)])   # camera +Z, away from the face
        right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), back)
        right = right / right.norm()
        pose = torch.eye(4, dtype=torch.float64)
        pose[:3, 0], pose[:3, 1], pose[:3, 2] = right, torch.linalg.cross(back, right), back
        pose[:3, 3] = center + distance * back
        poses.append(pose)
    return K.expand(views, 3, 3).float(), torch.stack(poses).float()

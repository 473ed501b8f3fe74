"""What the first channel of a decoded grid means: how it turns into opacity along a ray, and
where its surface is for marching cubes.

- ``density`` (3DVADER, sec. 3.1): the channel is a raw density, sigma = softplus(raw) / voxel;
  NeRF quadrature alpha = 1 - exp(-sigma * delta).
- ``sdf``: the channel is a signed distance to the surface in voxel units (negative inside),
  rendered with NeuS's unbiased discrete opacity (Wang et al. 2021, eq. 13): with
  Phi(d) = sigmoid(s d), the interval between consecutive samples gets
  alpha = max((Phi(d_i) - Phi(d_i+1)) / Phi(d_i), 0). The sharpness s is learned; an eikonal
  term (:func:`eikonal_loss`) keeps |grad d| = 1.

Why the choice exists: measured on 8 synthetic ICT faces (BENCHMARKS.md), a 32^3 density grid
learns an almost binary field (raw +-15 around the surface), and the trilinear zero crossings of
a binary field sit mid-voxel whatever the true surface does - a staircase of 8 mm voxels on the
nose and lips. A distance field is linear across the surface, which trilinear interpolation
reproduces exactly, so the same grid places the surface to a fraction of a voxel; NeuS's opacity
puts the rendered depth at the zero crossing even with samples a voxel apart.

Both expose the same threshold semantics for meshes: an "occupancy" level in (0, 1), 0.5 by
default - the opacity of one voxel for density, sigmoid(-s d) for the distance field (0.5 = the
zero crossing).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

GEOMETRIES = ("density", "sdf")


class DensityGeometry(nn.Module):
    """The paper's density grid. Holds no parameters, so density checkpoints stay as they were."""

    intervals = False           # one alpha per sample

    def sigma(self, raw: torch.Tensor, voxel_size: float) -> torch.Tensor:
        """sigma (1/m): softplus keeps it >= 0; dividing by the voxel size makes raw ~ 1 mean "one
        voxel absorbs ~63%" at any grid resolution or box size."""
        return F.softplus(raw) / voxel_size

    def alpha(self, raw: torch.Tensor, delta: torch.Tensor, voxel_size: float) -> torch.Tensor:
        """Opacity of each sample (..., S) of a ray, ``delta`` metres apart."""
        return 1.0 - torch.exp(-self.sigma(raw, voxel_size) * delta)

    def surface(self, raw: torch.Tensor, threshold: float) -> tuple[torch.Tensor, float]:
        """(a field that grows inward, its level) for marching cubes: voxel opacity = threshold.

        1 - exp(-softplus(raw)) = threshold  <=>  raw = softplus^-1(-ln(1 - threshold)).
        """
        optical = -math.log1p(-threshold)
        return raw, math.log(math.expm1(optical))

    def metrics(self) -> dict[str, float]:
        """What to log beside the losses."""
        return {}


class SdfGeometry(nn.Module):
    """A signed-distance grid (voxel units, negative inside) with NeuS opacity and a learned sharpness."""

    intervals = True            # one alpha per interval between consecutive samples

    LOG_SCALE = 10.0            # s = exp(10 v), as NeuS: Adam moves v by ~lr a step, s by ~10 lr

    def __init__(self, sharpness: float = 1.0) -> None:
        super().__init__()
        self.log_sharpness = nn.Parameter(torch.tensor(math.log(sharpness) / self.LOG_SCALE))

    @property
    def sharpness(self) -> torch.Tensor:
        """s (1/voxel): Phi(d) = sigmoid(s d) goes from 0.12 to 0.88 over 4/s voxels. It must grow
        from a blurry start to a sharp surface within a few thousand steps of a CPU run, hence
        the scaled log (without it, 700 steps at lr 1e-3 took s only from 1 to 1.75)."""
        return (self.log_sharpness * self.LOG_SCALE).exp()

    def alpha(self, raw: torch.Tensor, delta: torch.Tensor, voxel_size: float) -> torch.Tensor:
        """Opacity of the S - 1 intervals between the samples (..., S) of a ray (NeuS eq. 13).

        ``delta`` is not needed: the distances at both ends of an interval fix its opacity.
        """
        outside = torch.sigmoid(raw * self.sharpness.to(raw.dtype))
        prev, nxt = outside[..., :-1], outside[..., 1:]
        return ((prev - nxt + 1e-5) / (prev + 1e-5)).clamp(0.0, 1.0)

    def surface(self, raw: torch.Tensor, threshold: float) -> tuple[torch.Tensor, float]:
        """(-d, level): occupancy sigmoid(-s d) = threshold  <=>  -d = logit(threshold) / s."""
        return -raw, math.log(threshold / (1.0 - threshold)) / float(self.sharpness.detach())

    def metrics(self) -> dict[str, float]:
        return {"sharpness": float(self.sharpness.detach())}


def make_geometry(kind: str) -> DensityGeometry | SdfGeometry:
    if kind == "density":
        return DensityGeometry()
    if kind == "sdf":
        return SdfGeometry()
    raise ValueError(f"unknown geometry {kind!r} (one of {', '.join(GEOMETRIES)})")


def sphere_prior(resolution: int, radius: float = 0.7) -> torch.Tensor:
    """(R, R, R) signed distance (voxel units) to a sphere of ``radius`` half-box sizes at the
    centre: a distance grid's starting shape (as NeuS/IDR start from a sphere), so the first
    renders already have one surface in front of the cameras and the eikonal term starts satisfied."""
    half = (resolution - 1) / 2
    lin = torch.linspace(-half, half, resolution)
    z, y, x = torch.meshgrid(lin, lin, lin, indexing="ij")
    return torch.sqrt(x * x + y * y + z * z) - radius * half


def eikonal_loss(grids: torch.Tensor) -> torch.Tensor:
    """Mean (|grad d| - 1)^2 over the voxels of distance grids (B, C, D, H, W), channel 0, with
    forward differences in voxel units."""
    d = grids[:, 0]
    gz = d[:, 1:, :-1, :-1] - d[:, :-1, :-1, :-1]
    gy = d[:, :-1, 1:, :-1] - d[:, :-1, :-1, :-1]
    gx = d[:, :-1, :-1, 1:] - d[:, :-1, :-1, :-1]
    norm = torch.sqrt(gx * gx + gy * gy + gz * gz + 1e-8)
    return ((norm - 1.0) ** 2).mean()

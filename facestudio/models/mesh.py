"""Colored meshes from the decoded grid: marching cubes (3DVADER sec. 4: meshes by marching cubes
on the 64^3 density grid), vertices in the canonical head frame (metres).

The threshold is an occupancy level in (0, 1) that the grid's geometry translates to a level of
its raw first channel (:mod:`facestudio.models.geometry`): the opacity of one voxel for a
density grid, sigmoid(-s d) for a distance grid (0.5 = its zero crossing), so one threshold means
the same thing at every grid resolution and box size. The raw grid is first upsampled
trilinearly - exactly the field the renderer sees, since it interpolates raw values before the
activation - so the surface is not limited to the grid's voxel size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from skimage.measure import marching_cubes
from torch import nn
from torch.nn import functional as F

from facestudio.models.autodecoder import rgb_from_raw
from facestudio.models.geometry import DensityGeometry
from facestudio.models.render import Box

DEFAULT_THRESHOLD = 0.5


def grid_to_mesh(raw: torch.Tensor, box: Box, threshold: float = DEFAULT_THRESHOLD, upsample: int = 2,
                 geometry: nn.Module | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices (N, 3) float32 metres, triangles (M, 3) int32, colors (N, 3) uint8) of a raw
    (4, D, H, W) grid (D = z, H = y, W = x) whose first channel ``geometry`` interprets (default:
    density). Raises ValueError when nothing crosses the level."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"mesh threshold must be in (0, 1) (an occupancy level), got {threshold}")
    raw = raw.detach().float().cpu()
    r = raw.shape[-1]
    fine = (r - 1) * upsample + 1
    first = raw[None, :1]
    if upsample > 1:
        first = F.interpolate(first, size=(fine, fine, fine), mode="trilinear", align_corners=True)
    # The level is in raw units, which are per voxel of the grid: it does not depend on ``upsample``.
    inward, level = (geometry if geometry is not None else DensityGeometry()).surface(first[0, 0], threshold)
    field = inward.numpy()
    if not (field.min() < level < field.max()):
        raise ValueError(f"the grid has no surface at occupancy {threshold} (its field spans "
                         f"{field.min():.3f}..{field.max():.3f}, the level is {level:.3f}); "
                         "try another --threshold")
    spacing = box.size / (fine - 1)
    verts_zyx, faces, _, _ = marching_cubes(field, level=level, spacing=(spacing,) * 3)
    lo = np.asarray(box.center) - box.size / 2
    verts = (verts_zyx[:, ::-1] + lo).astype(np.float32)
    # With the (z, y, x) -> (x, y, z) reordering, skimage's default winding faces outward
    # (checked on a sphere in tests/test_autodecoder.py).
    return verts, np.ascontiguousarray(faces, dtype=np.int32), sample_colors(raw, box, verts)


def sample_colors(raw: torch.Tensor, box: Box, points: np.ndarray) -> np.ndarray:
    """RGB (uint8) of the grid at head-frame points, trilinear like the renderer."""
    center = torch.tensor(box.center, dtype=torch.float32)
    normed = (torch.from_numpy(points) - center) / (box.size / 2)
    values = F.grid_sample(raw[None, 1:4], normed.view(1, 1, 1, -1, 3), mode="bilinear",
                           padding_mode="border", align_corners=True)[0, :, 0, 0]
    return (rgb_from_raw(values).T.numpy() * 255.0 + 0.5).astype(np.uint8)


def extract_mesh(run_dir: Path, segment_or_index: int | str | Path, threshold: float = DEFAULT_THRESHOLD,
                 upsample: int = 2, device: str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mesh of a trained run's object: an embedding index, a training segment (path or name), or
    any other segment folder, which is first encoded with the decoder frozen (:mod:`encode`)."""
    from facestudio.models.encode import grid_for_segment
    from facestudio.models.train_autodecoder import load_trained

    trained = load_trained(Path(run_dir), device)
    grid, box = grid_for_segment(trained, segment_or_index)
    return grid_to_mesh(grid, box, threshold, upsample, trained.model.geometry)

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
from typing import Any

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
    any other segment folder, which is first encoded with the decoder frozen (:mod:`encode`).
    A deformation run's training segment is its subject's neutral scan with the decoded field."""
    from facestudio.models.encode import grid_for_segment
    from facestudio.models.train_autodecoder import load_trained

    trained = load_trained(Path(run_dir), device)
    if trained.config.model.output == "deformation":
        from facestudio.models.deformation_targets import decoded_scan

        return decoded_scan(trained, training_index(trained, segment_or_index))
    grid, box = grid_for_segment(trained, segment_or_index)
    return grid_to_mesh(grid, box, threshold, upsample, trained.model.geometry)


def training_index(trained: Any, segment_or_index: int | str | Path) -> int:
    """The embedding index of a deformation run's training segment (index, name or path): such a
    run has no encoder, and none is needed - a new person is their fused neutral scan."""
    if isinstance(segment_or_index, int) or str(segment_or_index).isdigit():
        index: int | None = int(segment_or_index)
        if not 0 <= int(segment_or_index) < len(trained.segment_paths):
            raise ValueError(f"object index {segment_or_index} out of range (0..{len(trained.segment_paths) - 1})")
    else:
        index = trained.index_of(segment_or_index)
    if index is None:
        raise ValueError(f"{segment_or_index} is not a training segment of this deformation model (it decodes "
                         "the expressions it was trained on; a new person's expressions come from `generate`)")
    return index


def raycast_image(vertices: np.ndarray, triangles: np.ndarray, colors: np.ndarray, K: torch.Tensor,
                  cam_to_head: torch.Tensor, size: int, background: list[float] | None = None) -> np.ndarray:
    """RGB uint8 (size, size, 3) of a colored mesh from one camera (K (3, 3), OpenGL-axes pose):
    one ray per pixel, vertex colours interpolated at the hit, headlight Lambert shading. How
    previews show a deformation model's scans, which have no radiance grid to render."""
    import open3d as o3d

    from facestudio.models.render import make_rays

    origins, dirs = make_rays(K[None].float(), cam_to_head[None].float(), size, size)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(triangles.astype(np.uint32)))
    rays = torch.cat([origins[0], dirs[0]], dim=1).numpy().astype(np.float32)
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    t, prim = hit["t_hit"].numpy(), hit["primitive_ids"].numpy()
    uv, normal = hit["primitive_uvs"].numpy(), hit["primitive_normals"].numpy()
    ok = np.isfinite(t)
    image = np.tile(np.asarray(background or [0.0, 0.0, 0.0], np.float32), (len(t), 1))
    tri = triangles[prim[ok]]
    u, v = uv[ok, :1], uv[ok, 1:2]
    rgb = ((1 - u - v) * colors[tri[:, 0]] + u * colors[tri[:, 1]] + v * colors[tri[:, 2]]) / 255.0
    shade = np.abs(np.einsum("nc,nc->n", normal[ok], rays[ok, 3:]))[:, None]
    image[ok] = rgb * (0.25 + 0.75 * shade)
    return (np.clip(image, 0, 1).reshape(size, size, 3) * 255 + 0.5).astype(np.uint8)

"""Expressions as deformations of the person's fused neutral scan (issue 14).

A deformation field is a (3, R, R, R) grid of displacements over the head box (the same box and
(z, y, x) voxel order as the radiance grids of :mod:`facestudio.models.render`), read by
trilinear interpolation at the neutral scan's vertices (``v + field(v)``, the head frame) or at
their places on a face model's template (``v + R field(c)``, :mod:`facestudio.models.template_frame`,
the presets). The field is a forward field of the *neutral*, so applying it to a mesh is one grid
lookup per vertex - the generated avatar keeps every vertex, triangle and colour of the scan the
Library shows.

Why a grid over the head box rather than a field per vertex of a registered template: measured
on ICT faces (BENCHMARKS.md, "Deformation representation"), a 32^3 grid registered to the
expression's fused scan reproduces the expression to 0.21 mm (the neutral is 1.05 mm off, a
per-vertex field with exact correspondences 0.12 mm); 64^3 gained nothing. A grid needs no
template, so it works for any face a TrueDepth camera fuses, and it is what G2's 3D (transposed)
convolutions produce.

Stage 1 learns these fields from registered targets (:mod:`facestudio.models.deformation_targets`):
the face rig's motion for the segment's recorded weights, or :func:`register` - non-rigid ICP of
the subject's neutral scan onto the expression segment's fused scan, with the grid as the only
unknown - which needs no face model.
"""

from __future__ import annotations

import numpy as np
import open3d as o3d
import torch
from scipy.spatial import cKDTree
from torch.nn import functional as F

from facestudio.models.config import RegistrationConfig
from facestudio.models.render import Box
from facestudio.models.template_frame import TemplateFrame

FIELD_UNIT_M = 0.01          # G2 outputs displacements in centimetres: values of order 1


def _normalised(points: torch.Tensor, box: Box) -> torch.Tensor:
    center = torch.tensor(box.center, dtype=points.dtype, device=points.device)
    return (points - center) / (box.size / 2)


def sample_field(field: torch.Tensor, points: torch.Tensor, box: Box) -> torch.Tensor:
    """Displacements (..., N, 3) of field(s) (3, R, R, R) or (B, 3, R, R, R) at points (N, 3) or
    (B, N, 3) in the head frame; outside the box the border value holds."""
    batched = field.dim() == 5
    f = field if batched else field[None]
    p = points if points.dim() == 3 else points[None].expand(f.shape[0], -1, -1)
    grid = _normalised(p, box).to(f.dtype)[:, :, None, None, :]
    out = F.grid_sample(f, grid, mode="bilinear", padding_mode="border", align_corners=True)[:, :, :, 0, 0]
    out = out.transpose(1, 2)
    return out if batched else out[0]


def deform(vertices: np.ndarray, field: torch.Tensor, box: Box, frame: TemplateFrame | None = None) -> np.ndarray:
    """The vertices (N, 3) float32 moved by a field (3, R, R, R) in metres, read at the vertices
    themselves (head frame) or at their places in a template ``frame`` (its axes turned into the
    scan's)."""
    v = torch.from_numpy(np.ascontiguousarray(vertices, dtype=np.float32))
    with torch.no_grad():
        moved = v + displacements(field.float().cpu(), v, box, frame)
    return moved.numpy()


def displacements(field: torch.Tensor, points: torch.Tensor, box: Box, frame: TemplateFrame | None = None
                  ) -> torch.Tensor:
    """(N, 3) scan-frame displacements of a field (3, R, R, R) for scan points (N, 3): at the
    points, or at their template coordinates (then rotated by the frame)."""
    if frame is None:
        return sample_field(field, points, box)
    coords = torch.from_numpy(frame.coords).to(field.device)
    return sample_field(field, coords, box) @ torch.from_numpy(frame.rotation).to(field).T


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices.astype(np.float64)),
                                     o3d.utility.Vector3iVector(triangles.astype(np.int32)))
    mesh.compute_vertex_normals()
    return np.asarray(mesh.vertex_normals, dtype=np.float32)


def fit_field(vertices: np.ndarray, displacements: np.ndarray, box: Box, resolution: int = 32,
              steps: int = 100, points: int = 8000, smoothness: float = 1.0, seed: int = 0,
              weights: np.ndarray | None = None) -> torch.Tensor:
    """The smooth field (3, R, R, R), metres, whose lookup at ``vertices`` (N, 3) best gives their
    ``displacements`` (N, 3): (``weights``-weighted) least squares plus the same smoothness term
    as :func:`register`, by Adam on random subsets (0.3 s for 30k vertices at 32^3)."""
    rng = np.random.default_rng(seed)
    src = torch.from_numpy(np.ascontiguousarray(vertices, dtype=np.float32))
    target = torch.from_numpy(np.ascontiguousarray(displacements, dtype=np.float32))
    weight = torch.ones(len(src)) if weights is None else torch.as_tensor(np.asarray(weights, np.float32))
    field = torch.zeros(3, resolution, resolution, resolution, requires_grad=True)
    opt = torch.optim.Adam([field], lr=2e-3)
    for _ in range(steps):
        i = torch.from_numpy(rng.choice(len(src), min(len(src), points), replace=False))
        error = ((sample_field(field, src[i], box) - target[i]) ** 2).sum(-1)
        fit = (weight[i] * error).sum() / weight[i].sum()
        smooth = sum((field.diff(dim=k) ** 2).mean() for k in (1, 2, 3))
        opt.zero_grad()
        ((fit + smoothness * smooth) / 1e-6).backward()
        opt.step()
    return field.detach()


def register(neutral: np.ndarray, target: np.ndarray, target_normals: np.ndarray, box: Box,
             resolution: int = 32, config: RegistrationConfig | None = None,
             initial: torch.Tensor | None = None, frame: TemplateFrame | None = None) -> torch.Tensor:
    """The forward field (3, R, R, R) in metres that moves ``neutral`` points (N, 3) onto the
    surface sampled by ``target`` points (M, 3) with unit normals.

    Loss per step: point-to-plane (+ a tenth point-to-point) from moved neutral points to their
    nearest target points, point-to-point from target points to their nearest moved neutral
    points (without it a chin could stay where the opened jaw's lip now passes), and smoothness.
    From no motion it runs coarse to fine; from an ``initial`` field (a face rig's motion,
    :mod:`facestudio.models.deformation_targets`) it only refines: ``refine_steps`` at
    ``refine_lr``, smoothness on the change from the initial field. Nearest-point ICP alone
    finds small motions but not an opened jaw (BENCHMARKS.md: 10 mm off on 12.7 mm of motion).
    With a template ``frame`` the field is read at the neutral's template coordinates.
    """
    cfg = config or RegistrationConfig()
    if initial is not None:
        return _icp(neutral, target, target_normals, box, cfg, initial.float(),
                    [(resolution, cfg.refine_steps, cfg.gate_m)], cfg.refine_lr, anchored=True, frame=frame)
    return _icp(neutral, target, target_normals, box, cfg, torch.zeros(3, 16, 16, 16),
                [(16, cfg.coarse_steps, cfg.coarse_gate_m), (resolution, cfg.fine_steps, cfg.gate_m)], cfg.lr,
                frame=frame)


def _icp(neutral: np.ndarray, target: np.ndarray, target_normals: np.ndarray, box: Box, cfg: RegistrationConfig,
         start: torch.Tensor, levels: list[tuple[int, int, float]], lr: float, anchored: bool = False,
         frame: TemplateFrame | None = None) -> torch.Tensor:
    """Adam on the field over ``levels`` (resolution, steps, gate); ``anchored``: smoothness on the
    change from ``start`` rather than on the field."""
    rng = np.random.default_rng(cfg.seed)
    src = torch.from_numpy(np.ascontiguousarray(neutral, dtype=np.float32))
    coords = src if frame is None else torch.from_numpy(frame.coords)
    rot = torch.eye(3) if frame is None else torch.from_numpy(frame.rotation)
    dst = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))
    dst_n = torch.from_numpy(np.ascontiguousarray(target_normals, dtype=np.float32))
    tree = cKDTree(target)
    # The reverse term needs the moved neutral's own tree every step: a fixed subset keeps it cheap.
    subset = torch.from_numpy(rng.choice(len(src), min(len(src), 4 * cfg.points), replace=False))
    field = start
    for size, steps, gate in levels:
        if field.shape[-1] != size:
            field = F.interpolate(field[None], size=(size,) * 3, mode="trilinear", align_corners=True)[0]
        field = field.detach().requires_grad_(True)
        opt = torch.optim.Adam([field], lr=lr)
        for _ in range(steps):
            i = torch.from_numpy(rng.choice(len(src), min(len(src), cfg.points), replace=False))
            j = rng.choice(len(dst), min(len(dst), cfg.points), replace=False)
            p = src[i] + sample_field(field, coords[i], box) @ rot.T
            dist, nearest = tree.query(p.detach().numpy())
            w = torch.from_numpy((dist < gate).astype(np.float32))
            d = p - dst[nearest]
            forward = (w * ((d * dst_n[nearest]).sum(-1) ** 2 + 0.1 * (d * d).sum(-1))).sum() / w.sum().clamp_min(1)
            moved = src[subset] + sample_field(field, coords[subset], box) @ rot.T
            dist2, back = cKDTree(moved.detach().numpy()).query(target[j])
            w2 = torch.from_numpy((dist2 < gate).astype(np.float32))
            reverse = (w2 * ((moved[back] - dst[j]) ** 2).sum(-1)).sum() / w2.sum().clamp_min(1)
            change = field - start if anchored else field
            smooth = sum((change.diff(dim=k) ** 2).mean() for k in (1, 2, 3))
            loss = (forward + reverse + cfg.smoothness * smooth) / 1e-6   # mm^2: Adam is scale-free,
            opt.zero_grad()                                                # the logs read well
            loss.backward()
            opt.step()
    return field.detach()


def surface_weight(vertices: np.ndarray, box: Box, resolution: int, dilate: int = 1) -> torch.Tensor:
    """(R, R, R) weights: 1 at voxels whose trilinear cell holds scan vertices (dilated), else a
    small floor. Only these voxels move the scan; elsewhere a field is unobserved and only kept
    tame."""
    idx = np.floor((vertices - (np.asarray(box.center) - box.size / 2)) / box.voxel_size(resolution)).astype(int)
    idx = np.clip(idx, 0, resolution - 2)
    occupied = torch.zeros(resolution, resolution, resolution)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                occupied[idx[:, 2] + dz, idx[:, 1] + dy, idx[:, 0] + dx] = 1.0
    if dilate:
        occupied = F.max_pool3d(occupied[None, None], 2 * dilate + 1, stride=1, padding=dilate)[0, 0]
    return occupied.clamp_min(0.01)


def scan_volume(vertices: np.ndarray, triangles: np.ndarray, box: Box, resolution: int = 32,
                truncation_voxels: float = 3.0) -> torch.Tensor:
    """(1, R, R, R) truncated signed distance (voxel units, in [-1, 1] after truncation) to an open
    scan, signed by the nearest point's normal: the person's neutral geometry as the diffusion
    model's identity input. A fused scan is an open shell, so a winding-number sign would be
    meaningless; the nearest normal says which side of the face a voxel is on."""
    lin = np.linspace(-box.size / 2, box.size / 2, resolution, dtype=np.float32)
    z, y, x = np.meshgrid(lin + box.center[2], lin + box.center[1], lin + box.center[0], indexing="ij")
    query = np.stack([x, y, z], axis=-1).reshape(-1, 3)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(triangles.astype(np.uint32)))
    closest = scene.compute_closest_points(o3d.core.Tensor(query))
    points = closest["points"].numpy()
    normals = closest["primitive_normals"].numpy()
    offset = query - points
    distance = np.linalg.norm(offset, axis=1) * np.sign(np.sum(offset * normals, axis=1))
    voxel = box.voxel_size(resolution)
    tsdf = np.clip(distance / (truncation_voxels * voxel), -1.0, 1.0)
    return torch.from_numpy(tsdf.reshape(1, resolution, resolution, resolution).astype(np.float32))


def space_to_depth(volume: torch.Tensor, r: int) -> torch.Tensor:
    """(C, rD, rH, rW) -> (C r^3, D, H, W): a fine volume on a coarse grid's voxels, every fine
    value kept (the inverse of the decoder's voxel shuffle)."""
    c, d, h, w = volume.shape
    x = volume.view(c, d // r, r, h // r, r, w // r, r).permute(0, 2, 4, 6, 1, 3, 5)
    return x.reshape(c * r ** 3, d // r, h // r, w // r)


def identity_volume(vertices: np.ndarray, triangles: np.ndarray, box: Box, latent_resolution: int,
                    resolution: int = 32) -> torch.Tensor:
    """The person's neutral scan as stage 2's identity input, on the latent's grid:
    (resolution / latent_resolution)^3 channels of :func:`scan_volume` per latent voxel (64 x 8^3).

    With it, a convolution at a latent voxel sees where the person's lips, lids and brows are
    inside that voxel to 2 mm - what a field must follow to move *this* face - which a mean
    field (baseline d of the expression evaluation) cannot."""
    return space_to_depth(scan_volume(vertices, triangles, box, resolution), resolution // latent_resolution)

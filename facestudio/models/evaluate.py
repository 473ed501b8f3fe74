"""Quality of a trained autodecoder against ground truth.

- PSNR on held-out views (never trained on) of each training segment, rendered at the training
  resolution with midpoint samples: over the whole image (background included, as NeRF papers
  report) and over the foreground mask only (the harder, more honest number for faces).
- Mesh distance (mm) between the marching-cubes mesh and the exact synthetic mesh over the
  frontal face region: GT face vertices -> predicted surface (completeness), predicted vertices
  whose closest GT point is on the face -> GT surface (accuracy), and their mean. No alignment:
  both live in the canonical head frame, so any offset is a real error.
FID/KID are not computable offline (no Inception weights), hence geometry (REFERENCE.md sec. 5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import open3d as o3d
import torch

from facestudio.dataset.segment import Segment
from facestudio.models.mesh import DEFAULT_THRESHOLD, grid_to_mesh
from facestudio.models.render import Box
from facestudio.models.synthetic_segments import load_truth
from facestudio.models.train_autodecoder import TrainedAutodecoder, load_views, render_views


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    err = (pred - target) ** 2
    mse = err[mask].mean() if mask is not None else err.mean()
    return float(10.0 * torch.log10(1.0 / mse.clamp_min(1e-12)))


@torch.no_grad()
def heldout_psnr(trained: TrainedAutodecoder, index: int, heldout: Path) -> dict[str, float]:
    """PSNR (dB) of object ``index`` rendered at the views of segment folder ``heldout``."""
    cfg = trained.config
    views = load_views(heldout, cfg.render.image_size, cfg.render.background)
    grid = trained.model(torch.tensor([index]))
    out = render_views(grid, views.K[None], views.cam_to_head[None], cfg.render.image_size, views.box,
                       cfg.render.samples_per_ray, False, cfg.render.background, trained.model.geometry)
    rgb = out["rgb"].clamp(0, 1)
    return {"psnr": psnr(rgb, views.rgb), "psnr_mask": psnr(rgb, views.rgb, views.mask[..., None].expand_as(rgb))}


def mesh_distance_mm(vertices: np.ndarray, triangles: np.ndarray, truth: dict[str, np.ndarray]) -> dict[str, float]:
    """Surface distances (mm) between a predicted mesh and the ground truth over its face region."""
    gt_v = truth["vertices"].astype(np.float32)
    gt_t = truth["triangles"].astype(np.uint32)
    face = truth["face_vertex_mask"].astype(bool)
    pred = o3d.t.geometry.RaycastingScene()
    pred.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(triangles.astype(np.uint32)))
    completeness = pred.compute_distance(o3d.core.Tensor(gt_v[face])).numpy()
    gt = o3d.t.geometry.RaycastingScene()
    gt.add_triangles(o3d.core.Tensor(gt_v), o3d.core.Tensor(gt_t))
    closest = gt.compute_closest_points(o3d.core.Tensor(vertices.astype(np.float32)))
    on_face = face[gt_t[closest["primitive_ids"].numpy()]].all(axis=1)
    accuracy = np.linalg.norm(closest["points"].numpy() - vertices, axis=1)[on_face]
    comp_mm, acc_mm = float(completeness.mean() * 1000), float(accuracy.mean() * 1000) if accuracy.size else float("inf")
    return {"mesh_distance_mm": (comp_mm + acc_mm) / 2, "gt_to_pred_mm": comp_mm, "pred_to_gt_mm": acc_mm,
            "gt_to_pred_p90_mm": float(np.percentile(completeness, 90) * 1000)}


@torch.no_grad()
def evaluate_run(trained: TrainedAutodecoder, heldout_root: Path | None,
                 threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """Per-segment and mean metrics for every training segment with held-out views and/or truth."""
    rows = []
    for i, (path, name) in enumerate(zip(trained.segment_paths, trained.segment_names)):
        row: dict[str, Any] = {"segment": name}
        seg = Segment(path)
        if heldout_root is not None:
            held = Path(heldout_root) / seg.info.subject / seg.info.take / seg.info.segment_id
            if held.exists():
                row.update(heldout_psnr(trained, i, held))
        truth = load_truth(path)
        if truth is not None:
            grid = trained.model(torch.tensor([i]))[0]
            try:
                verts, tris, _ = grid_to_mesh(grid, Box(tuple(seg.info.box_center), seg.info.box_size), threshold,
                                              geometry=trained.model.geometry)
            except ValueError as exc:   # no surface at this level: a failure to report, not to crash on
                row["mesh_error"] = str(exc)
            else:
                row.update(mesh_distance_mm(verts, tris, truth))
                row["mesh_vertices"] = int(len(verts))
        rows.append(row)
    keys = [k for k in ("psnr", "psnr_mask", "mesh_distance_mm", "gt_to_pred_mm", "pred_to_gt_mm") if
            any(k in r for r in rows)]
    mean = {k: round(float(np.mean([r[k] for r in rows if k in r])), 3) for k in keys}
    mean["mesh_failures"] = sum("mesh_error" in r for r in rows)
    return {"mean": mean, "segments": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                                       for r in rows]}

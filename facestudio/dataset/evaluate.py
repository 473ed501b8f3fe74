"""Fusion accuracy against ground truth, on synthetic takes (``facestudio eval fusion``).

The virtual device stores the exact mesh of every held expression with the take, so a fused
segment can be compared with the surface it was fused from. Distances are taken over the
face region (the model's ``face_vertex_mask``) in both directions:

- GT -> fused over the whole face region, and over its *observed* part: GT points that at
  least one camera of the segment saw unoccluded at a usable angle (|cos| >= 0.3, below which
  the TrueDepth model drops depth). Surface nobody saw (under the chin, inside the nostrils
  and lips) measures coverage, not fusion accuracy, so both numbers are reported.
- fused -> GT for fused vertices whose nearest GT triangle is a face triangle.

Without the anchor pose the canonical frame is only defined up to a rigid transform (the
tracker chooses it from the first frame), so estimated poses are first aligned to the truth
by one rigid transform for the whole take; pose errors are what remains per frame.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import open3d as o3d

from facestudio.capture.frame import Frame
from facestudio.capture.take import TakeReader, TakeWriter
from facestudio.dataset.canonical import rotation_angle_deg
from facestudio.dataset.segment import HEAD_BOX_CENTER, Segment

if TYPE_CHECKING:
    from facestudio.capture.virtual_device import SyntheticFrameSource

GRAZING_COS = 0.3


#: Turns a virtual-device frame into another sensor's: (frame, its source, time) -> frame.
Restyle = Callable[[Frame, "SyntheticFrameSource", float], Frame]


def record_synthetic_take(path: str | os.PathLike[str], frames: int = 300, fps: float = 30.0,
                          face_model: str | os.PathLike[str] | None = None, seed: int = 0,
                          subject: str = "synthetic", take: str = "take",
                          restyle: Restyle | None = None,
                          manifest: dict[str, Any] | None = None) -> Path:
    """Render a virtual-device take with ground truth straight to disk (no network).

    ``restyle`` swaps the TrueDepth-like frames for another sensor's (e.g. LiDAR depth with
    confidence); ``manifest`` adds fields to the take's manifest."""
    from facestudio.capture.recorder import truth_arrays
    from facestudio.capture.virtual_device import SyntheticFrameSource

    source = SyntheticFrameSource(None if face_model is None else str(face_model), seed=seed)
    writer = TakeWriter(path, {"subject": subject, "take": take, "device": {"name": "virtual"},
                               **(manifest or {})})
    for i in range(frames):
        frame = replace(source.frame(i, i / fps), timestamp=i / fps)
        writer.append(frame if restyle is None else restyle(frame, source, i / fps))
    writer.add_attachment("ground_truth", truth_arrays(source.truth()))
    writer.close()
    return Path(path)


def _face_mesh(vertices: np.ndarray, triangles: np.ndarray, face_mask: np.ndarray) -> np.ndarray:
    return triangles[face_mask[triangles].all(axis=1)]


def _sample_triangles(vertices: np.ndarray, tris: np.ndarray, n: int, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Area-uniform points on ``tris`` and their unit normals."""
    a, b, c = (vertices[tris[:, i]] for i in range(3))
    cross = np.cross(b - a, c - a)
    area = np.linalg.norm(cross, axis=1)
    pick = rng.choice(len(tris), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    pts = (1 - s)[:, None] * a[pick] + (s * (1 - r2))[:, None] * b[pick] + (s * r2)[:, None] * c[pick]
    return pts, cross[pick] / np.maximum(area[pick], 1e-20)[:, None]


def _observed(points: np.ndarray, normals: np.ndarray, scene: o3d.t.geometry.RaycastingScene,
              cameras: np.ndarray) -> np.ndarray:
    seen = np.zeros(len(points), bool)
    for c in cameras:
        d = points - c
        dist = np.linalg.norm(d, axis=1)
        d /= dist[:, None]
        rays = np.concatenate([np.broadcast_to(c, d.shape), d], axis=1).astype(np.float32)
        hit = scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
        seen |= (hit > dist - 1e-3) & (np.abs((normals * d).sum(axis=1)) >= GRAZING_COS)
    return seen


def _stats(d_mm: np.ndarray) -> dict[str, float | None]:
    if len(d_mm) == 0:
        return {"mean_mm": None, "p95_mm": None}
    return {"mean_mm": float(d_mm.mean()), "p95_mm": float(np.percentile(d_mm, 95))}


def surface_distances(mesh: o3d.geometry.TriangleMesh, gt_vertices: np.ndarray, triangles: np.ndarray,
                      face_mask: np.ndarray, cameras: np.ndarray, samples: int = 20000,
                      seed: int = 0) -> dict[str, Any]:
    """Distances (mm) between a fused mesh and the GT mesh over the face; both in one frame.

    ``cameras``: (N, 3) camera centres of the segment in that frame (for the observed subset).
    """
    rng = np.random.default_rng(seed)
    face_tris = _face_mesh(gt_vertices, triangles, face_mask)
    pts, normals = _sample_triangles(gt_vertices, face_tris, samples, rng)
    gt_scene = o3d.t.geometry.RaycastingScene()
    gt_scene.add_triangles(o3d.core.Tensor(gt_vertices.astype(np.float32)),
                           o3d.core.Tensor(triangles.astype(np.uint32)))
    seen = _observed(pts, normals, gt_scene, cameras)
    if len(mesh.triangles) == 0:
        gt_to_fused = np.full(len(pts), np.inf)
        fused_to_gt = np.empty(0)
    else:
        fused_scene = o3d.t.geometry.RaycastingScene()
        fused_scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
        gt_to_fused = 1000 * fused_scene.compute_distance(o3d.core.Tensor(pts.astype(np.float32))).numpy()
        fv = np.asarray(mesh.vertices).astype(np.float32)
        closest = gt_scene.compute_closest_points(o3d.core.Tensor(fv))
        on_face = face_mask[triangles[closest["primitive_ids"].numpy()]].all(axis=1)
        fused_to_gt = 1000 * np.linalg.norm(closest["points"].numpy() - fv, axis=1)[on_face]
    return {
        "gt_to_fused": _stats(gt_to_fused),
        "gt_to_fused_observed": _stats(gt_to_fused[seen]),
        "fused_to_gt": _stats(fused_to_gt),
        "observed_fraction": float(seen.mean()),
        "completeness_3mm": float((gt_to_fused < 3.0).mean()),
        "_raw": (gt_to_fused, gt_to_fused[seen], fused_to_gt),
    }


def _mean_rigid(transforms: list[np.ndarray]) -> np.ndarray:
    u, _, vt = np.linalg.svd(sum(t[:3, :3] for t in transforms))
    rot = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = np.mean([t[:3, 3] for t in transforms], axis=0)
    return out


def pose_errors(estimated: list[np.ndarray], truth: list[np.ndarray]) -> tuple[np.ndarray, dict[str, float]]:
    """Align estimated cam_to_head poses to the truth by one rigid transform X (est = X @ gt)
    and return X plus rotation (deg) and translation (mm, at the head box centre) errors."""
    per = [e @ np.linalg.inv(g) for e, g in zip(estimated, truth)]
    x = _mean_rigid(per)
    x_inv = np.linalg.inv(x)
    c = np.array([*HEAD_BOX_CENTER, 1.0])
    rot = np.array([rotation_angle_deg(x_inv @ p) for p in per])
    trans = np.array([1000 * np.linalg.norm((x_inv @ p @ c)[:3] - c[:3]) for p in per])
    return x, {"rotation_mean_deg": float(rot.mean()), "rotation_max_deg": float(rot.max()),
               "translation_mean_mm": float(trans.mean()), "translation_max_mm": float(trans.max()),
               "frames": len(per)}


def evaluate_take(take_path: str | os.PathLike[str], segment_paths: list[Path],
                  samples: int = 20000) -> dict[str, Any]:
    """Accuracy of the fused segments of one synthetic take (needs its ground_truth attachment)."""
    reader = TakeReader(take_path)
    gt = reader.attachment("ground_truth")
    position = {idx: i for i, idx in enumerate(reader.indices)}
    anchors = reader.head_poses()
    segments = [Segment(p) for p in segment_paths]
    est, true = [], []
    for seg in segments:
        for v in seg.info.views:
            est.append(v.cam_to_head)
            true.append(np.linalg.inv(anchors[position[v.index]]))
    if not est:
        raise ValueError("the fused segments have no views to evaluate")
    registered = any(s.info.quality.get("pose_source") == "registration" for s in segments)
    align, pose = pose_errors(est, true) if registered else (np.eye(4), None)
    to_gt = np.linalg.inv(align)
    rows, pooled = [], ([], [], [])
    for seg in segments:
        if seg.info.truth is None:
            continue
        k = int(seg.info.truth["segment"])
        mesh = o3d.io.read_triangle_mesh(str(seg.mesh_path))
        mesh.transform(to_gt)
        cams = np.array([np.linalg.inv(anchors[position[i]])[:3, 3] for i in seg.info.frames
                         if i in position and np.isfinite(anchors[position[i]]).all()])
        cams = cams[np.linspace(0, len(cams) - 1, min(len(cams), 24)).astype(int)]
        d = surface_distances(mesh, gt["vertices"][k].astype(np.float64), gt["triangles"],
                              gt["face_vertex_mask"], cams, samples)
        for acc, raw in zip(pooled, d.pop("_raw")):
            acc.append(raw)
        rows.append({"segment": seg.info.segment_id, "label": seg.info.label,
                     "truth_label": str(gt["labels"][k]), "views": len(seg.info.views), **d})
    if not rows:
        raise ValueError("no fused segment maps to a ground-truth segment (not a synthetic take?)")
    summary = {name: _stats(np.concatenate(acc)) for name, acc in
               zip(("gt_to_fused", "gt_to_fused_observed", "fused_to_gt"), pooled)}
    return {"segments": rows, "summary": summary, "pose": pose}

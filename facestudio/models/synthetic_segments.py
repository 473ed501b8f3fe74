"""Segments rendered straight from the virtual device's ground truth, for tests and evaluation.

Fusion (``facestudio.dataset.fuse``) is the real source of segments; the autodecoder must be
testable without it, and its evaluation needs exact geometry anyway. Each segment holds one
expression of one synthetic identity, seen along the device's scripted head motion during
that expression's hold - the same views fusion would get. Views are cropped to the projected
head box and resized; the mask is "surface inside the head box" from the noise-free depth,
while the stored depth keeps the TrueDepth-like noise and holes. Held-out views of the same
segment go to a separate folder (``heldout_root``) so training never sees them. The exact
mesh is stored beside each segment as ``truth.npz`` for scoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facestudio.capture.frame import Intrinsics
from facestudio.capture.virtual.source import SyntheticFaceSource
from facestudio.dataset.segment import (HEAD_BOX_CENTER, HEAD_BOX_SIZE, MESH_FILE, SegmentInfo, SegmentView,
                                        SegmentWriter)
from facestudio.dataset.tsdf import TsdfVolume, save_mesh_ply

TRUTH_FILE = "truth.npz"


@dataclass(frozen=True)
class SyntheticSegment:
    train: Path
    heldout: Path | None


def box_corners(center: tuple[float, float, float] = HEAD_BOX_CENTER, size: float = HEAD_BOX_SIZE) -> np.ndarray:
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    return np.asarray(center) + signs * size / 2


def _project(k: Intrinsics, head_to_cam: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = pts @ head_to_cam[:3, :3].T + head_to_cam[:3, 3]
    z = -p[:, 2]
    return np.stack([k.fx * p[:, 0] / z + k.cx, -k.fy * p[:, 1] / z + k.cy], axis=1)


def _inside_box_mask(depth: np.ndarray, k: Intrinsics, head_to_cam: np.ndarray) -> np.ndarray:
    """Pixels whose (noise-free) surface point lies inside the head box."""
    v, u = np.nonzero(depth > 0)
    z = depth[v, u].astype(np.float64)
    p_cam = np.stack([(u - k.cx) / k.fx * z, -(v - k.cy) / k.fy * z, -z], axis=1)
    cam_to_head = np.linalg.inv(head_to_cam)
    p = p_cam @ cam_to_head[:3, :3].T + cam_to_head[:3, 3]
    inside = np.all(np.abs(p - np.asarray(HEAD_BOX_CENTER)) <= HEAD_BOX_SIZE / 2, axis=1)
    mask = np.zeros(depth.shape, dtype=bool)
    mask[v[inside], u[inside]] = True
    return mask


def _crop_resize(images: list[np.ndarray], interps: list[int], k: Intrinsics, corners_px: np.ndarray,
                 size: int) -> tuple[list[np.ndarray], Intrinsics]:
    """A square crop around the projected box (padded with zeros past the image edge), resized."""
    lo, hi = corners_px.min(axis=0), corners_px.max(axis=0)
    side = int(np.ceil(max(hi - lo))) + 4
    u0, v0 = int(np.floor((lo[0] + hi[0]) / 2 - side / 2)), int(np.floor((lo[1] + hi[1]) / 2 - side / 2))
    pad = max(0, -u0, -v0, u0 + side - k.width, v0 + side - k.height)
    out = []
    for img, interp in zip(images, interps):
        padded = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0) if pad else img
        crop = padded[v0 + pad: v0 + pad + side, u0 + pad: u0 + pad + side]
        out.append(cv2.resize(crop, (size, size), interpolation=interp))
    s = size / side
    return out, Intrinsics(k.fx * s, k.fy * s, (k.cx - u0 + 0.5) * s - 0.5, (k.cy - v0 + 0.5) * s - 0.5, size, size)


def write_synthetic_segment(source: SyntheticFaceSource, segment_index: int, train_root: Path,
                            heldout_root: Path | None, views: int = 24, heldout_views: int = 6,
                            image_size: int = 128, voxel_mm: float = 2.0) -> SyntheticSegment:
    """Render one held expression of ``source`` into a training segment (+ a held-out one)."""
    truth = source.truth()
    seg = truth["segments"][segment_index]
    total = views + (heldout_views if heldout_root is not None else 0)
    times = np.linspace(seg["start"] + 0.05, seg["end"] - 0.05, total)
    every = total / max(heldout_views, 1)
    held = {int(i * every + every / 2) for i in range(heldout_views)} if heldout_root is not None else set()
    subject, take = f"synth{source.seed:03d}", "virtual"
    segment_id = f"seg{segment_index:02d}-{seg['label']}"
    parts = {"train": (train_root, [i for i in range(total) if i not in held])}
    if heldout_root is not None:
        parts["heldout"] = (heldout_root, sorted(held))
    paths: dict[str, Path] = {}
    for part, (root, indices) in parts.items():
        path = Path(root) / subject / take / segment_id
        writer = SegmentWriter(path)
        seg_views = []
        volume = TsdfVolume(voxel_mm / 1000.0) if part == "train" else None
        for i in indices:
            view = source.view_at(float(times[i]))
            clean, _ = source.render_clean(float(times[i]))
            mask = _inside_box_mask(clean, view.intrinsics, view.head_pose)
            if volume is not None:
                volume.integrate(np.where(mask, view.depth_m, 0.0).astype(np.float32),
                                 cv2.cvtColor(view.color_bgr, cv2.COLOR_BGR2RGB), view.intrinsics,
                                 np.linalg.inv(view.head_pose))
            corners = _project(view.intrinsics, view.head_pose, box_corners())
            (color, m, depth), k = _crop_resize(
                [cv2.cvtColor(view.color_bgr, cv2.COLOR_BGR2RGB), mask.astype(np.uint8), view.depth_m],
                [cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_NEAREST], view.intrinsics, corners, image_size)
            sv = SegmentView(i, k, np.linalg.inv(view.head_pose))
            writer.add_view(sv, color, m > 0, depth)
            seg_views.append(sv)
        writer.finish(SegmentInfo(
            subject=subject, take=take, segment_id=segment_id, label=seg["label"],
            blendshapes=[float(x) for x in seg["blendshapes"]], frames=[int(i) for i in indices],
            views=seg_views, quality={"synthetic": True},
            truth={"segment": segment_index, "seed": source.seed, "source": truth["source"]}))
        if volume is not None:
            save_mesh_ply(volume.extract_mesh(), path / MESH_FILE)
        np.savez_compressed(path / TRUTH_FILE, vertices=seg["vertices"].astype(np.float32),
                            triangles=truth["triangles"], face_vertex_mask=truth["face_vertex_mask"])
        paths[part] = path
    return SyntheticSegment(paths["train"], paths.get("heldout"))


def make_synthetic_segments(train_root: Path, count: int, face_model: str | None = None,
                            heldout_root: Path | None = None, views: int = 24, heldout_views: int = 6,
                            image_size: int = 128) -> list[SyntheticSegment]:
    """``count`` segments: identities 0, 1, ... each giving its neutral and one other expression."""
    out: list[SyntheticSegment] = []
    source: SyntheticFaceSource | None = None
    for i in range(count):
        identity = i // 2
        if source is None or source.seed != identity:
            source = SyntheticFaceSource.create(face_model, seed=identity)
        n_expr = len(source.script.segments)
        expr = 0 if i % 2 == 0 else 1 + identity % (n_expr - 1)
        out.append(write_synthetic_segment(source, expr, train_root, heldout_root, views, heldout_views,
                                           image_size))
    return out


def load_truth(segment_path: Path) -> dict[str, np.ndarray] | None:
    """The exact mesh stored beside a synthetic segment, or None for a real one."""
    path = Path(segment_path) / TRUTH_FILE
    if not path.exists():
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}

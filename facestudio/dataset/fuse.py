"""The fusion pipeline: one take in, one folder per expression segment out.

``fuse_take`` streams the take in recording order (holding a take's decoded frames would
need gigabytes). Without anchor poses a first pass tracks the head through every frame
(registration needs small steps) and fixes the canonical frame, which must be known before
anything is fused. The fusing pass then, per frame, decodes color and depth (dropping depth
below the take's ``min_depth_confidence`` where an import carried ARKit confidence maps: the
LiDAR's unreliable edge and grazing pixels; ``use_confidence``), masks the head,
integrates the frame into its segment's TSDF and, for the chosen frames, writes a training
view. When a segment's last frame has passed, its mesh is extracted and its segment.json
written. Output goes to a staging folder outside the datasets tree first and replaces the
take's previous dataset folder by rename only when everything is written, so a crash or a
cancel never leaves a half-written segment where readers look; what a killed fusion left in
the staging folder is deleted by the next one. A full or read-only disk raises StorageError.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facestudio.capture.frame import HIGH_CONFIDENCE, Frame, Intrinsics
from facestudio.capture.take import TakeReader
from facestudio.dataset.canonical import FrameToModelTracker, canonicalize, organized_normals
from facestudio.dataset.masks import head_mask
from facestudio.dataset.quality import QualityThresholds, QualityTracker, sharpness
from facestudio.dataset.segment import (HEAD_BOX_CENTER, HEAD_BOX_SIZE, MESH_FILE, SegmentInfo,
                                        SegmentView, SegmentWriter)
from facestudio.dataset.segmenting import SegmentingConfig, Span, safe_label, segment_take
from facestudio.dataset.tsdf import TsdfVolume, save_mesh_ply
from facestudio.dataset.views import make_view, pick_views
from facestudio.paths import check_name
from facestudio.storage import staging_dir, staging_parent, writing

Progress = Callable[[dict[str, Any]], None]


class FusionCancelled(Exception):
    """Raised by :func:`fuse_take` when its cancel event was set; nothing was written."""


@dataclass
class FusionConfig:
    voxel_mm: float = 2.0            # TSDF voxel; 1.5 is finer and ~1.5x slower
    trunc_voxels: float = 4.0        # TSDF truncation in voxels (> 3 sigma of TrueDepth noise)
    weight_threshold: float = 3.0    # surface needs this many observations to be kept
    view_size: int = 128             # training view resolution (square)
    max_views: int = 64              # per segment, evenly spread over its frames (<= 0: all)
    use_anchor_pose: bool = True     # False: estimate poses by registration even if anchors exist
    use_confidence: bool = True      # drop depth below the take's min_depth_confidence (imports)
    min_confidence: int | None = None  # with use_confidence: this level instead of the take's
    color_refine: bool = True        # settle mask borders by color
    min_mask_pixels: int = 400       # fewer head pixels with depth = face lost on that frame
    segmenting: SegmentingConfig = field(default_factory=SegmentingConfig)
    quality: QualityThresholds = field(default_factory=QualityThresholds)


@dataclass
class _Open:
    """A segment being fused."""

    index: int
    span: Span
    folder: str
    writer: SegmentWriter
    volume: TsdfVolume
    views: set[int]
    quality: QualityTracker
    written: list[SegmentView] = field(default_factory=list)


def _names(reader: TakeReader) -> tuple[str, str]:
    subject = str(reader.manifest.get("subject") or reader.path.parent.name)
    take = str(reader.manifest.get("take") or reader.path.name)
    return check_name("subject", subject), check_name("take", take)


def _prompts(manifest: dict[str, Any]) -> list[str]:
    labels = manifest.get("labels")
    if isinstance(labels, list) and all(isinstance(x, str) for x in labels):
        return labels
    expression = manifest.get("expression")
    return [expression] if isinstance(expression, str) and expression else []


def _truth_per_frame(reader: TakeReader) -> tuple[list[str | None], list[int | None]]:
    labels: list[str | None] = []
    segments: list[int | None] = []
    for i in range(len(reader)):
        gt = reader.metadata(i).get("ground_truth")
        gt = gt if isinstance(gt, dict) else {}
        label, seg = gt.get("label"), gt.get("segment")
        labels.append(label if isinstance(label, str) else None)
        segments.append(seg if isinstance(seg, int) and not isinstance(seg, bool) else None)
    return labels, segments


def plan_segments(reader: TakeReader, config: FusionConfig) -> list[Span]:
    """The take's expression segments (cheap: reads frames.jsonl only)."""
    labels, truth = _truth_per_frame(reader)
    return segment_take(reader.blendshapes(), reader.timestamps(), labels, truth,
                        _prompts(reader.manifest), config.segmenting)


def min_confidence(reader: TakeReader, config: FusionConfig) -> int | None:
    """The lowest depth confidence fusion keeps: ``config.min_confidence``, else the take's
    ``min_depth_confidence`` (what the source app's own tools trust; ARKit's high level if a
    take with maps does not say), or None when ``config.use_confidence`` is off. Only frames
    with confidence maps are affected."""
    if not config.use_confidence:
        return None
    level, where = config.min_confidence, "FusionConfig.min_confidence"
    if level is None:
        level = reader.manifest.get("min_depth_confidence", HIGH_CONFIDENCE)
        where = f"{reader.path}: manifest min_depth_confidence"
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= HIGH_CONFIDENCE:
        raise ValueError(f"{where} must be an ARKit level 0-{HIGH_CONFIDENCE}, got {level!r:.40}")
    return level


def _depth_intrinsics(frame: Frame, depth_shape: tuple[int, int]) -> Intrinsics:
    h, w = depth_shape
    k = frame.depth_intrinsics or frame.color_intrinsics
    return k if (k.width, k.height) == (w, h) else k.scaled(w, h)


def fuse_take(take_path: str | os.PathLike[str], out_root: str | os.PathLike[str],
              config: FusionConfig | None = None, progress: Progress | None = None,
              cancel: threading.Event | None = None) -> list[Path]:
    """Fuse a take into ``out_root/SUBJECT/TAKE/segNN-LABEL/`` folders; returns their paths.

    ``out_root`` is the library's ``datasets`` folder. A previous fusion of the same take is
    replaced as a whole. Raises TakeError for unreadable takes, ValueError when the take has
    nothing to fuse, FusionCancelled when ``cancel`` is set, StorageError when the disk is full
    or read-only.
    """
    config = config or FusionConfig()
    reader = TakeReader(take_path)
    subject, take = _names(reader)
    if len(reader) == 0:
        raise ValueError(f"{reader.path}: the take has no readable frames")
    spans = plan_segments(reader, config)
    if not spans:
        raise ValueError(f"{reader.path}: no expression segment of at least "
                         f"{config.segmenting.min_frames} steady frames was found")
    anchors = reader.head_poses()
    use_anchor = config.use_anchor_pose and bool(np.isfinite(anchors).all(axis=(1, 2)).any())
    out_root = Path(out_root)
    final = out_root / subject / take
    # The staging folder is locked while we work in it, so the next fusion deletes what a
    # killed one left there (staging_dir) without touching a concurrent fusion's work.
    with writing(out_root), staging_dir(staging_parent(out_root)) as staged:
        _run(reader, spans, anchors if use_anchor else None, staged, subject, take, config,
             progress, cancel)
        final.parent.mkdir(parents=True, exist_ok=True)
        old = staged.with_name(staged.name + "-old")
        if final.exists():
            os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    return sorted(p.parent for p in final.glob("*/segment.json"))


def _run(reader: TakeReader, spans: list[Span], anchors: np.ndarray | None, out: Path,
         subject: str, take: str, config: FusionConfig, progress: Progress | None,
         cancel: threading.Event | None) -> None:
    owner = {int(p): k for k, s in enumerate(spans) for p in s.positions}
    ends = {int(s.positions[-1]): k for k, s in enumerate(spans)}
    residuals = np.full(len(reader), np.nan)
    level = min_confidence(reader, config)
    if anchors is None:
        anchors, residuals = _track(reader, spans, level, progress, cancel)
    positions = sorted(owner)
    opened: dict[int, _Open] = {}
    for done, pos in enumerate(positions):
        _check(cancel, reader)
        k = owner[pos]
        if k not in opened:
            opened[k] = _open_segment(k, spans[k], out, config)
        pose = anchors[pos]
        _process_frame(reader, pos, pose if np.isfinite(pose).all() else None, residuals[pos],
                       opened[k], config, level)
        if ends.get(pos) == k:
            _close_segment(opened.pop(k), reader.indices, subject, take, config,
                           registered=bool(np.isfinite(residuals).any()))
        if progress is not None:
            progress({"stage": "fusing", "frame": done + 1, "frames": len(positions),
                      "segment": spans[k].label, "fraction": (done + 1) / len(positions)})


def _check(cancel: threading.Event | None, reader: TakeReader) -> None:
    if cancel is not None and cancel.is_set():
        raise FusionCancelled(f"fusion of {reader.path} was cancelled")


def _track(reader: TakeReader, spans: list[Span], level: int | None, progress: Progress | None,
           cancel: threading.Event | None) -> tuple[np.ndarray, np.ndarray]:
    """Head poses by registration, (N, 4, 4) head->camera (NaN where lost) and ICP residuals.

    Every frame from the first segment to the last is tracked, transitions too: registration
    needs small steps between consecutive frames.
    """
    poses = np.full((len(reader), 4, 4), np.nan)
    residuals = np.full(len(reader), np.nan)
    tracker = FrameToModelTracker()
    first, last = int(spans[0].positions[0]), int(spans[-1].positions[-1])
    for pos in range(first, last + 1):
        _check(cancel, reader)
        frame = reader.frame(pos)
        depth = frame.depth_m(level)
        if depth is not None:
            dk = _depth_intrinsics(frame, depth.shape)
            _, measured = head_mask(depth, dk, None)
            pts, normals, flat = organized_normals(depth, dk, measured)
            color = frame.color()
            if color.shape[:2] != depth.shape:
                color = cv2.resize(color, depth.shape[::-1], interpolation=cv2.INTER_AREA)
            result = tracker.track(pts, normals, color.reshape(-1, 3)[flat, ::-1] / 255.0)
            if result.cam_to_head is not None:
                poses[pos] = np.linalg.inv(result.cam_to_head)
                residuals[pos] = result.rmse_m
        if progress is not None:
            progress({"stage": "tracking", "frame": pos - first + 1, "frames": last - first + 1,
                      "segment": None, "fraction": (pos - first + 1) / (last - first + 1)})
    return canonicalize(poses, tracker.model.points()), residuals


def _open_segment(k: int, span: Span, out: Path, config: FusionConfig) -> _Open:
    folder = f"seg{k:02d}-{safe_label(span.label)}"
    chosen = pick_views(len(span.positions), config.max_views)
    return _Open(k, span, folder, SegmentWriter(out / folder),
                 TsdfVolume(config.voxel_mm / 1000.0, config.trunc_voxels),
                 {int(span.positions[i]) for i in chosen}, QualityTracker(config.quality))


def _process_frame(reader: TakeReader, pos: int, head_to_cam: np.ndarray | None, residual: float,
                   seg: _Open, config: FusionConfig, level: int | None) -> None:
    frame = reader.frame(pos)
    depth = frame.depth_m(level)
    if depth is None or head_to_cam is None:
        seg.quality.add_frame(None)
        return
    dk = _depth_intrinsics(frame, depth.shape)
    color = frame.color()
    small = color if color.shape[:2] == depth.shape else cv2.resize(
        color, depth.shape[::-1], interpolation=cv2.INTER_AREA)
    full, measured = head_mask(depth, dk, head_to_cam, small if config.color_refine else None,
                               HEAD_BOX_CENTER, HEAD_BOX_SIZE)
    if measured.sum() < config.min_mask_pixels:
        seg.quality.add_frame(None)
        return
    cam_to_head = np.linalg.inv(head_to_cam)
    seg.volume.integrate(np.where(measured, depth, 0.0), cv2.cvtColor(small, cv2.COLOR_BGR2RGB), dk,
                         cam_to_head)
    seg.quality.add_frame(cam_to_head, sharpness(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), full),
                          residual if np.isfinite(residual) else None)
    if pos in seg.views:
        view = make_view(color, frame.color_intrinsics, full, depth, dk, head_to_cam, config.view_size)
        if view is not None:
            meta = SegmentView(frame.index, view.intrinsics, cam_to_head)
            seg.writer.add_view(meta, view.color_rgb, view.mask, view.depth_m)
            seg.written.append(meta)


def _close_segment(seg: _Open, indices: tuple[int, ...], subject: str, take: str, config: FusionConfig,
                   registered: bool) -> None:
    mesh = seg.volume.extract_mesh(config.weight_threshold)
    save_mesh_ply(mesh, seg.writer.path / MESH_FILE)
    quality = seg.quality.report(len(seg.written))
    quality.update(pose_source="registration" if registered else "anchor",
                   mesh_vertices=len(mesh.vertices), mesh_triangles=len(mesh.triangles),
                   config=asdict(config))
    if len(mesh.triangles) == 0:
        quality["warnings"].append("empty mesh: no surface was observed often enough")
    info = SegmentInfo(subject=subject, take=take, segment_id=seg.folder, label=seg.span.label,
                       blendshapes=[float(x) for x in seg.span.blendshapes],
                       frames=[indices[int(p)] for p in seg.span.positions], views=seg.written, quality=quality,
                       truth=None if seg.span.truth_segment is None else {"segment": seg.span.truth_segment})
    seg.writer.finish(info)

"""What dropping low-confidence depth does to fusion accuracy (``facestudio eval confidence``).

LiDAR apps store ARKit's per-pixel depth confidence beside each depth map (Record3D's
``rgbd/N.conf``, Stray's ``confidence/N.png``), and their readers keep only confident depth.
No real capture with ground truth exists here, so the effect is measured on a synthetic take:
the virtual device's face, whose depth and confidence are made the way ARKit LiDAR depth is
reported to behave (a model, not a measurement of the sensor):

- high (2): surface seen head-on (|cos(ray, normal)| >= 0.5), noise as the TrueDepth model
  (1 mm at 0.4 m, growing with z^2);
- medium (1): oblique surface (0.25 <= |cos| < 0.5), 3 mm more noise;
- low (0): silhouettes and depth jumps, grazing surface (|cos| < 0.25), and the one-pixel ring
  just outside the silhouette: "flying pixels", pulled 0-8 cm back toward the background.

The take is fused with every pixel, with levels >= 1 (Stray's rule) and with level 2 only
(Record3D's), each with the anchor pose and by registration, and scored against the exact
meshes by :func:`facestudio.dataset.evaluate.evaluate_take`.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from facestudio.capture.frame import HIGH_CONFIDENCE, EncodedDepth, Frame
from facestudio.capture.virtual.source import NOISE_AT_04_M
from facestudio.dataset.evaluate import evaluate_take, record_synthetic_take
from facestudio.dataset.fuse import FusionConfig, fuse_take

if TYPE_CHECKING:
    from facestudio.capture.virtual_device import SyntheticFrameSource

MEDIUM_COS, LOW_COS = 0.5, 0.25
MEDIUM_EXTRA_NOISE_M = 0.003
FLYING_MAX_M = 0.08
RULES = {"all depth": None, "confidence >= 1 (Stray)": 1,
         f"confidence >= {HIGH_CONFIDENCE} (Record3D)": HIGH_CONFIDENCE}


def lidar_like_depth(clean: np.ndarray, cos: np.ndarray, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(depth metres, uint8 ARKit confidence) from a noise-free render (module docstring)."""
    valid = clean > 0
    kernel = np.ones((3, 3), np.uint8)
    farthest = cv2.dilate(clean, kernel)
    edge = valid & (farthest - cv2.erode(clean, kernel) > 0.01)   # empty neighbours count as 0 m
    ring = ~valid & (farthest > 0)
    depth = clean + rng.standard_normal(clean.shape, dtype=np.float32) \
        * np.float32(NOISE_AT_04_M / 0.16) * clean * clean
    conf = np.zeros(clean.shape, np.uint8)
    conf[valid] = HIGH_CONFIDENCE
    medium = valid & (cos < MEDIUM_COS)
    conf[medium] = 1
    depth[medium] += rng.standard_normal(int(medium.sum()), dtype=np.float32) * MEDIUM_EXTRA_NOISE_M
    low = (valid & ((cos < LOW_COS) | edge)) | ring
    conf[low] = 0
    depth[ring] = farthest[ring]
    depth[low] += rng.uniform(0.0, FLYING_MAX_M, int(low.sum())).astype(np.float32)
    depth[~(valid | ring)] = 0.0
    return depth.astype(np.float32), conf


class _LidarRestyle:
    """Replaces each frame's depth with :func:`lidar_like_depth` and tallies its errors."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        levels = HIGH_CONFIDENCE + 1
        self.pixels = np.zeros(levels)            # depth pixels per level
        self.on_surface = np.zeros(levels)        # of those, pixels where the face is
        self.abs_error_m = np.zeros(levels)       # summed |depth - true depth| over on_surface

    def __call__(self, frame: Frame, source: SyntheticFrameSource, t: float) -> Frame:
        clean, cos = source.clean_depth(t)
        depth, conf = lidar_like_depth(clean, cos, np.random.default_rng([self.seed, frame.index]))
        for level in range(HIGH_CONFIDENCE + 1):
            at = (depth > 0) & (conf == level)
            surface = at & (clean > 0)
            self.pixels[level] += int(at.sum())
            self.on_surface[level] += int(surface.sum())
            self.abs_error_m[level] += float(np.abs(depth[surface] - clean[surface]).sum())
        return replace(frame, depth=EncodedDepth.encode(depth, "float32"), depth_confidence=conf)

    def report(self) -> dict[str, Any]:
        """Per level: share of the depth pixels, share of those off the face (the ring outside
        the silhouette) and mean depth error where the face is."""
        total = self.pixels.sum()
        return {str(level): {
            "fraction_of_depth_pixels": round(float(self.pixels[level] / total), 4),
            "fraction_off_the_face": round(float(1 - self.on_surface[level] / max(self.pixels[level], 1)), 4),
            "mean_abs_error_mm_on_face": round(
                1000 * float(self.abs_error_m[level] / max(self.on_surface[level], 1)), 2)}
            for level in range(HIGH_CONFIDENCE + 1)}


def evaluate_confidence(work_dir: str | os.PathLike[str], frames: int = 300,
                        face_model: str | os.PathLike[str] | None = None, seed: int = 3,
                        registration: bool = True) -> dict[str, Any]:
    """Record the LiDAR-like take under ``work_dir``, fuse it under each rule in RULES (with the
    anchor pose, and by registration unless ``registration`` is False) and score each fusion."""
    work = Path(work_dir)
    restyle = _LidarRestyle(seed)
    take = record_synthetic_take(work / "takes" / "synthetic" / "lidar", frames, face_model=face_model,
                                 seed=seed, take="lidar", restyle=restyle,
                                 manifest={"min_depth_confidence": HIGH_CONFIDENCE})
    runs: dict[str, Any] = {}
    poses = [("anchor", True)] + ([("registration", False)] if registration else [])
    for pose, anchor in poses:
        for rule, level in RULES.items():
            config = FusionConfig(use_anchor_pose=anchor, use_confidence=level is not None,
                                  min_confidence=level)
            t0 = time.perf_counter()
            segments = fuse_take(take, work / f"datasets-{len(runs)}", config)
            seconds = time.perf_counter() - t0
            result = evaluate_take(take, segments)
            runs[f"{pose}, {rule}"] = {"pose": pose, "rule": rule, "min_confidence": level,
                                       "fuse_seconds": round(seconds, 2), "summary": result["summary"],
                                       "pose_error": result["pose"]}
    return {"frames": frames, "seed": seed, "depth_by_confidence": restyle.report(), "runs": runs}

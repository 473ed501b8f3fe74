"""Per-segment quality report: is this segment a usable training object, and if not, why.

The report goes into segment.json so the library, the GUI and the CLI can flag a segment
without reopening the take. Thresholds are deliberately simple and named: a user who sees
"motion blur" should be able to look up what it means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np


@dataclass(frozen=True)
class QualityThresholds:
    min_views: int = 20                 # fewer views than this cannot constrain a 3D model
    min_yaw_range_deg: float = 20.0     # a face seen only head-on leaves its sides unknown
    blur_laplacian_var: float = 15.0    # head-crop Laplacian variance below this = blurred frame
    max_blurred_fraction: float = 0.25
    max_lost_fraction: float = 0.1      # frames without a usable face (no depth, no pose, tiny mask)


def yaw_pitch_deg(cam_to_head: np.ndarray) -> tuple[float, float]:
    """Where the camera sits as seen from the head, degrees: yaw > 0 toward the head's +X side
    (the face's left), pitch > 0 above; 0/0 = looking straight at the face."""
    c = cam_to_head[:3, 3]
    return (float(np.degrees(np.arctan2(c[0], c[2]))),
            float(np.degrees(np.arctan2(c[1], np.hypot(c[0], c[2])))))


def sharpness(gray: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Variance of the Laplacian (over the mask when given): low for blurred images."""
    lap = cv2.Laplacian(gray, cv2.CV_32F)
    values = lap[mask] if mask is not None and mask.any() else lap
    return float(values.var())


class QualityTracker:
    """Accumulates per-frame facts of one segment, then :meth:`report` summarises them."""

    def __init__(self, thresholds: QualityThresholds = QualityThresholds()) -> None:
        self.t = thresholds
        self.frames = 0
        self.lost = 0
        self.angles: list[tuple[float, float]] = []
        self.sharpness: list[float] = []
        self.residuals_m: list[float] = []

    def add_frame(self, cam_to_head: np.ndarray | None, sharp: float | None = None,
                  residual_m: float | None = None) -> None:
        """Record one frame; ``cam_to_head`` None means the face was lost on that frame."""
        self.frames += 1
        if cam_to_head is None:
            self.lost += 1
            return
        self.angles.append(yaw_pitch_deg(cam_to_head))
        if sharp is not None:
            self.sharpness.append(sharp)
        if residual_m is not None and np.isfinite(residual_m):
            self.residuals_m.append(residual_m)

    def report(self, views: int) -> dict[str, Any]:
        a = np.array(self.angles).reshape(-1, 2)
        s = np.array(self.sharpness)
        blurred = float((s < self.t.blur_laplacian_var).mean()) if len(s) else 0.0
        lost = self.lost / self.frames if self.frames else 1.0
        yaw = [float(a[:, 0].min()), float(a[:, 0].max())] if len(a) else None
        pitch = [float(a[:, 1].min()), float(a[:, 1].max())] if len(a) else None
        warnings = []
        if views < self.t.min_views:
            warnings.append(f"too few views: {views} < {self.t.min_views}")
        if yaw is not None and yaw[1] - yaw[0] < self.t.min_yaw_range_deg:
            warnings.append(f"narrow head turn: yaw range {yaw[1] - yaw[0]:.0f} deg < "
                            f"{self.t.min_yaw_range_deg:.0f} (turn the head more)")
        if blurred > self.t.max_blurred_fraction:
            warnings.append(f"motion blur: {100 * blurred:.0f}% of frames have Laplacian variance < "
                            f"{self.t.blur_laplacian_var:g}")
        if lost > self.t.max_lost_fraction:
            warnings.append(f"face lost in {100 * lost:.0f}% of frames (no depth, no pose or out of view)")
        return {
            "frames": self.frames, "frames_used": self.frames - self.lost, "views": views,
            "yaw_range_deg": yaw, "pitch_range_deg": pitch,
            "registration_rmse_mm": 1000 * float(np.mean(self.residuals_m)) if self.residuals_m else None,
            "sharpness_median": float(np.median(s)) if len(s) else None,
            "blurred_fraction": blurred, "lost_fraction": lost, "warnings": warnings,
        }

"""Per-frame head masks: which pixels belong to the head, for fusion and training views.

Depth does most of the work: with a head pose, a pixel belongs to the head when its
back-projected point lies inside the canonical head box (the same box fusion crops to and the
autodecoder's grid spans), which also cuts away the neck and shoulders consistently. Without
a pose (before registration) the head is the nearest depth blob. TrueDepth leaves holes at
silhouettes and grazing angles, so the depth mask is closed and hole-filled, then the thin
band along its border is settled by color: a pixel there joins the head when its color is
closer to the head's border colors than to the background's. That only helps where the two
differ, so the refinement is skipped when they do not.
"""

from __future__ import annotations

import cv2
import numpy as np

from facestudio.capture.frame import Intrinsics
from facestudio.dataset.canonical import backproject, transform
from facestudio.dataset.segment import HEAD_BOX_CENTER, HEAD_BOX_SIZE

_KERNEL5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))


def in_box(points: np.ndarray, center: tuple[float, float, float] = HEAD_BOX_CENTER,
           size: float = HEAD_BOX_SIZE) -> np.ndarray:
    inside = np.ones(len(points), bool)
    for axis in range(3):
        inside &= np.abs(points[:, axis] - np.float32(center[axis])) <= size / 2.0
    return inside


def depth_mask(depth_m: np.ndarray, intrinsics: Intrinsics, head_to_cam: np.ndarray | None,
               box_center: tuple[float, float, float] = HEAD_BOX_CENTER,
               box_size: float = HEAD_BOX_SIZE) -> np.ndarray:
    """Pixels with a depth measurement on the head (bool, H x W), no hole filling."""
    if head_to_cam is None:
        return _nearest_blob(depth_m, box_size)
    mask = np.zeros(depth_m.shape, bool)
    pts, flat = backproject(depth_m, intrinsics)
    inside = in_box(transform(np.linalg.inv(head_to_cam), pts), box_center, box_size)
    mask.reshape(-1)[flat[inside]] = True
    return mask


def _nearest_blob(depth_m: np.ndarray, depth_span: float) -> np.ndarray:
    """The largest connected region within ``depth_span`` behind the nearest surface."""
    valid = depth_m > 0
    if not valid.any():
        return valid
    near = float(np.percentile(depth_m[valid], 1.0))
    band = (valid & (depth_m <= near + depth_span)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(band, connectivity=8)
    if n <= 1:
        return band.astype(bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Close small gaps and fill enclosed holes (eyes, nostrils, dropouts) of a head mask."""
    m = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, _KERNEL5)
    h, w = m.shape
    flood = np.pad(m, 1)                          # 1-px frame so the outside is one region
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 2)
    return flood[1:-1, 1:-1] != 2


def refine_with_color(mask: np.ndarray, color_bgr: np.ndarray, band_px: int = 3,
                      min_separation: float = 12.0) -> np.ndarray:
    """Grow the mask into its outer border band where color says "head" (nearest mean in Lab)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return mask
    # Work in the mask's bounding box plus the two bands: the rest of the image is irrelevant.
    m = 2 * band_px + 2
    h, w = mask.shape
    win = (slice(max(rows[0] - m, 0), min(rows[-1] + m + 1, h)),
           slice(max(cols[0] - m, 0), min(cols[-1] + m + 1, w)))
    sub = mask[win]
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band_px + 1, 2 * band_px + 1))
    m8 = sub.astype(np.uint8)
    grown = cv2.dilate(m8, k).astype(bool)
    band = grown & ~sub
    inner = sub & ~cv2.erode(m8, k).astype(bool)
    outer = cv2.dilate(grown.astype(np.uint8), k).astype(bool) & ~grown
    if not band.any() or not inner.any() or not outer.any():
        return mask
    lab = cv2.cvtColor(np.ascontiguousarray(color_bgr[win]), cv2.COLOR_BGR2LAB).astype(np.float32)
    fg, bg = lab[inner].mean(axis=0), lab[outer].mean(axis=0)
    if np.linalg.norm(fg - bg) < min_separation:
        return mask
    px = lab[band]
    is_head = np.linalg.norm(px - fg, axis=1) < np.linalg.norm(px - bg, axis=1)
    out = mask.copy()
    out[win][band] = is_head
    return out


def head_mask(depth_m: np.ndarray, intrinsics: Intrinsics, head_to_cam: np.ndarray | None,
              color_bgr: np.ndarray | None = None,
              box_center: tuple[float, float, float] = HEAD_BOX_CENTER,
              box_size: float = HEAD_BOX_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(mask of the head incl. filled holes, mask of head pixels that have depth).

    ``color_bgr`` must have the depth map's size when given (resize it first otherwise).
    """
    measured = depth_mask(depth_m, intrinsics, head_to_cam, box_center, box_size)
    full = fill_holes(measured)
    if color_bgr is not None:
        full = refine_with_color(full, color_bgr)
    return full, measured

"""Training views: square crops around the projected head box, resized to one resolution.

The autodecoder renders the head box from each view's camera, so every crop is framed by
that box (not by the detected face): the head then fills the same part of every image
whatever the distance, and the stored crop intrinsics keep the geometry exact. Color is
downsampled with area averaging (no aliasing); depth and mask are resampled from the depth
map with nearest-neighbour lookups so no depth is ever invented between foreground and
background. Color and depth may come at different resolutions (iPad: 1920x1440 vs 640x480).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from facestudio.capture.frame import Intrinsics
from facestudio.dataset.segment import HEAD_BOX_CENTER, HEAD_BOX_SIZE


@dataclass
class ViewImages:
    color_rgb: np.ndarray       # (N, N, 3) uint8
    mask: np.ndarray            # (N, N) bool
    depth_m: np.ndarray         # (N, N) float32, 0 outside the mask / where unmeasured
    intrinsics: Intrinsics      # of the crop


def box_corners(center: tuple[float, float, float] = HEAD_BOX_CENTER,
                size: float = HEAD_BOX_SIZE) -> np.ndarray:
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64)
    return np.asarray(center) + signs * size / 2.0


def crop_square(head_to_cam: np.ndarray, intrinsics: Intrinsics,
                center: tuple[float, float, float] = HEAD_BOX_CENTER,
                size: float = HEAD_BOX_SIZE) -> tuple[int, int, int] | None:
    """(x0, y0, side) in pixels of the square around the projected head box; None when the box
    is (partly) behind the camera."""
    p = box_corners(center, size) @ head_to_cam[:3, :3].T + head_to_cam[:3, 3]
    if (p[:, 2] > -1e-3).any():
        return None
    u = intrinsics.fx * p[:, 0] / -p[:, 2] + intrinsics.cx
    v = -intrinsics.fy * p[:, 1] / -p[:, 2] + intrinsics.cy
    side = int(np.ceil(max(u.max() - u.min(), v.max() - v.min())))
    x0 = int(np.floor((u.max() + u.min()) / 2.0 - side / 2.0 + 0.5))
    y0 = int(np.floor((v.max() + v.min()) / 2.0 - side / 2.0 + 0.5))
    return x0, y0, side


def crop_intrinsics(intrinsics: Intrinsics, x0: int, y0: int, side: int, out: int) -> Intrinsics:
    """Intrinsics of pixels [x0, x0+side) x [y0, y0+side) resized to out x out (pixel centres)."""
    a = side / out
    return Intrinsics(intrinsics.fx / a, intrinsics.fy / a, (intrinsics.cx - x0 + 0.5) / a - 0.5,
                      (intrinsics.cy - y0 + 0.5) / a - 0.5, out, out)


def _crop_padded(img: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    out = np.zeros((side, side) + img.shape[2:], img.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[sy0:sy1, sx0:sx1]
    return out


def _resample_to(img: np.ndarray, src: Intrinsics, dst: Intrinsics, interpolation: int) -> np.ndarray:
    """Look up ``img`` (camera ``src``) at every pixel of camera ``dst`` (same optical centre)."""
    sx, sy = src.fx / dst.fx, src.fy / dst.fy
    m = np.array([[sx, 0.0, src.cx - sx * dst.cx], [0.0, sy, src.cy - sy * dst.cy]])
    return cv2.warpAffine(img, m, (dst.width, dst.height), flags=interpolation | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def make_view(color_bgr: np.ndarray, color_intrinsics: Intrinsics, mask: np.ndarray,
              depth_m: np.ndarray, depth_intrinsics: Intrinsics, head_to_cam: np.ndarray,
              size: int = 128, center: tuple[float, float, float] = HEAD_BOX_CENTER,
              box_size: float = HEAD_BOX_SIZE) -> ViewImages | None:
    """The view of one frame, or None when the head box is not in front of the camera.

    ``mask`` and ``depth_m`` are at the depth map's resolution; intrinsics may be given for
    another resolution of the same camera (they are rescaled).
    """
    ch, cw = color_bgr.shape[:2]
    ck = color_intrinsics.scaled(cw, ch) if (cw, ch) != (color_intrinsics.width, color_intrinsics.height) \
        else color_intrinsics
    dh, dw = depth_m.shape
    dk = depth_intrinsics.scaled(dw, dh) if (dw, dh) != (depth_intrinsics.width, depth_intrinsics.height) \
        else depth_intrinsics
    box = crop_square(head_to_cam, ck, center, box_size)
    if box is None:
        return None
    x0, y0, side = box
    out_k = crop_intrinsics(ck, x0, y0, side, size)
    color = cv2.resize(_crop_padded(color_bgr, x0, y0, side), (size, size), interpolation=cv2.INTER_AREA)
    m = _resample_to(mask.astype(np.float32), dk, out_k, cv2.INTER_LINEAR) > 0.5
    depth = _resample_to(np.where(mask, depth_m, 0.0).astype(np.float32), dk, out_k, cv2.INTER_NEAREST)
    return ViewImages(cv2.cvtColor(color, cv2.COLOR_BGR2RGB), m, np.where(m, depth, 0.0), out_k)


def pick_views(count: int, max_views: int) -> np.ndarray:
    """Evenly spread positions 0..count-1, at most ``max_views`` (all when max_views <= 0)."""
    if max_views <= 0 or count <= max_views:
        return np.arange(count)
    return np.unique(np.round(np.linspace(0, count - 1, max_views)).astype(int))

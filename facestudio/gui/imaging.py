"""Turn capture frames into things the GUI shows: preview images and a live point cloud.

Pure numpy/OpenCV except :func:`bgr_to_qimage`; called on the GUI thread from the preview
timer, so each function is sized for a 640x480 frame in a few milliseconds.
"""

from __future__ import annotations

import cv2
import numpy as np
from PySide6.QtGui import QImage

from facestudio.capture.frame import Intrinsics


def bgr_to_qimage(bgr: np.ndarray) -> QImage:
    """A QImage that owns its pixels (the numpy buffer may be freed right after)."""
    bgr = np.ascontiguousarray(bgr)
    h, w = bgr.shape[:2]
    return QImage(bgr.data, w, h, bgr.strides[0], QImage.Format.Format_BGR888).copy()


def colorize_depth(depth_m: np.ndarray) -> np.ndarray:
    """Depth in metres -> BGR turbo colours (near = red, far = blue); no measurement = black.

    The range follows the valid pixels (2nd..98th percentile), so a face at 30 cm and one at
    80 cm both use the whole colour scale.
    """
    valid = np.isfinite(depth_m) & (depth_m > 0)
    out = np.zeros((*depth_m.shape, 3), np.uint8)
    if not valid.any():
        return out
    near, far = np.percentile(depth_m[valid], [2, 98])
    span = max(float(far - near), 1e-3)
    scaled = np.clip((far - depth_m) / span, 0.0, 1.0)   # near -> 1 -> red end of turbo
    colored = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    out[valid] = colored[valid]
    return out


def backproject(depth_m: np.ndarray, intr: Intrinsics, color_bgr: np.ndarray | None = None,
                step: int = 3, max_depth_m: float = 3.0) -> tuple[np.ndarray, np.ndarray | None]:
    """Depth pixels -> 3D points in the viewport's axes, with their colours.

    Every ``step``-th pixel is used (a preview, not fusion). Points come out in the camera
    frame with OpenGL axes (x right, y up, looking down -Z), the convention of ARKit poses,
    so the cloud appears upright and seen from the device. Colours are RGB uint8, sampled
    from ``color_bgr`` at the matching pixel even when its resolution differs.
    """
    if (depth_m.shape[1], depth_m.shape[0]) != (intr.width, intr.height):
        intr = intr.scaled(depth_m.shape[1], depth_m.shape[0])
    vs, us = np.mgrid[0:depth_m.shape[0]:step, 0:depth_m.shape[1]:step]
    z = depth_m[vs, us]
    keep = np.isfinite(z) & (z > 0) & (z < max_depth_m)
    us, vs, z = us[keep], vs[keep], z[keep]
    x = (us - intr.cx) / intr.fx * z
    y = (vs - intr.cy) / intr.fy * z
    points = np.column_stack([x, -y, -z]).astype(np.float32)
    if color_bgr is None:
        return points, None
    ch, cw = color_bgr.shape[:2]
    cu = np.clip(np.rint((us + 0.5) * cw / depth_m.shape[1] - 0.5), 0, cw - 1).astype(np.intp)
    cv = np.clip(np.rint((vs + 0.5) * ch / depth_m.shape[0] - 0.5), 0, ch - 1).astype(np.intp)
    return points, color_bgr[cv, cu, ::-1].copy()


def rgb_to_qimage(rgb: np.ndarray) -> QImage:
    """Like :func:`bgr_to_qimage` for RGB arrays (what VTK screenshots return)."""
    rgb = np.ascontiguousarray(rgb[..., :3])
    h, w = rgb.shape[:2]
    return QImage(rgb.data, w, h, rgb.strides[0], QImage.Format.Format_RGB888).copy()

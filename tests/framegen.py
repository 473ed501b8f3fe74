"""Small deterministic capture frames for protocol and take tests (no renderer needed)."""

from __future__ import annotations

import cv2
import numpy as np

from facestudio.capture.frame import EncodedDepth, Frame, Intrinsics


def make_frame(index: int, width: int = 64, height: int = 48) -> Frame:
    rng = np.random.default_rng(index)
    color = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    depth = (0.4 + 0.01 * rng.standard_normal((height, width))).astype(np.float32)
    intr = Intrinsics(50.0, 50.0, width / 2 - 0.5, height / 2 - 0.5, width, height)
    pose = np.eye(4)
    pose[:3, 3] = [0.01 * index, 0.0, -0.4]
    return Frame(index=index, timestamp=0.0, color_jpeg=cv2.imencode(".jpg", color)[1].tobytes(),
                 color_intrinsics=intr, depth=EncodedDepth.encode(depth), depth_intrinsics=intr,
                 head_pose=pose, blendshapes=rng.random(52).astype(np.float32))

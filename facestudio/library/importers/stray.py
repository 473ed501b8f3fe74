"""Stray Scanner folders (LiDAR app) as FaceStudio takes.

A Stray Scanner capture is a folder: ``rgb.mp4`` (the color video), ``depth/NNNNNN.png``
(uint16 millimetres, 0 = invalid, typically 256x192), ``camera_matrix.csv`` (3x3 intrinsics
at the video's resolution), ``odometry.csv`` (``timestamp, frame, x, y, z, qx, qy, qz, qw``:
camera-to-world per frame), ``confidence/NNNNNN.png`` (8-bit ARKit confidence per depth pixel:
0 low, 1 medium, 2 high) and ``imu.csv`` (not needed, ignored).

Odometry is in OpenCV camera axes (x right, y down, looking down +Z): the app's
OdometryEncoder writes ARKit's camera transform times a 180-degree rotation about x
(``q_WA * q_AC`` with ``q_AC = (1, 0, 0, 0)``), which is what its own viewer and Open3D
expect. The take's ``camera_poses`` are in OpenGL axes like every other pose in FaceStudio, so
each pose is turned back (right-multiplied by GL_TO_CV): the result is ARKit's
``camera.transform``. The position is unaffected.

Frame N of the take is video frame N with depth/N.png and confidence/N.png (when present).
Video frames are re-encoded as JPEG (quality 95: the take format stores JPEG color); depth is
converted to metres losslessly. Confidence is kept with ``min_depth_confidence`` 1 in the
manifest: Stray's own visualiser keeps levels >= 1 by default (``--confidence``).
Odometry poses are LiDAR-world camera poses, kept in the ``camera_poses`` attachment and
never used as head_pose; timestamps come from odometry, or from the video's frame rate
when odometry.csv is absent.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facestudio.capture.frame import GL_TO_CV, EncodedDepth, Frame, Intrinsics
from facestudio.capture.take import TakeReader, TakeWriter
from facestudio.library.importers import (POSES_ATTACHMENT, confidence_levels, manifest_fields,
                                          number, pose_matrix, staged_take)

_DEPTH = re.compile(r"(\d{1,9})\.png")
_ODOMETRY_COLUMNS = ("timestamp", "frame", "x", "y", "z", "qx", "qy", "qz", "qw")
JPEG_QUALITY = 95


def parse_camera_matrix(text: str, where: str = "camera_matrix.csv") -> np.ndarray:
    """Three rows of three comma-separated numbers -> (3, 3); ValueError naming ``where``."""
    rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    if len(rows) != 3 or any(len(r) != 3 for r in rows):
        raise ValueError(f"{where}: expected 3 rows of 3 comma-separated numbers")
    try:
        K = np.array([[number(c.strip(), f"row {i + 1}") for c in r] for i, r in enumerate(rows)])
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"{where}: focal lengths must be positive, got fx={K[0, 0]}, fy={K[1, 1]}")
    return K


def parse_odometry(text: str, where: str = "odometry.csv") -> dict[int, tuple[float, np.ndarray]]:
    """Frame number -> (timestamp, 4x4 camera-to-world in OpenGL axes); ValueError naming
    ``where`` and the line. Rows are in the app's OpenCV axes (module docstring)."""
    reader = csv.reader(io.StringIO(text))
    header = [c.strip() for c in next(reader, [])]
    missing = [c for c in _ODOMETRY_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{where}: header lacks column(s) {', '.join(missing)}")
    col = {name: header.index(name) for name in _ODOMETRY_COLUMNS}
    out: dict[int, tuple[float, np.ndarray]] = {}
    for line, row in enumerate(reader, start=2):
        if not any(c.strip() for c in row):
            continue
        try:
            if len(row) < len(header):
                raise ValueError(f"has {len(row)} fields, the header {len(header)}")
            frame = number(row[col["frame"]].strip(), "frame")
            if not frame.is_integer() or frame < 0:
                raise ValueError(f"frame must be a non-negative integer, got {frame}")
            cv_pose = pose_matrix([row[col[c]].strip() for c in _ODOMETRY_COLUMNS[2:]], "pose")
            pose = cv_pose @ GL_TO_CV
            out[int(frame)] = (number(row[col["timestamp"]].strip(), "timestamp"), pose)
        except ValueError as exc:
            raise ValueError(f"{where} line {line}: {exc}") from None
    return out


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path} is missing (not a complete Stray Scanner folder)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from None


def _read_png(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{path}: not a readable PNG image")
    return image


def _read_depth(path: Path) -> np.ndarray:
    depth = _read_png(path)
    if depth.dtype != np.uint16 or depth.ndim != 2:
        raise ValueError(f"{path}: expected a 16-bit single-channel depth PNG, got "
                         f"{depth.dtype} with shape {depth.shape}")
    return depth.astype(np.float32) / 1000.0


def _read_confidence(path: Path, depth_shape: tuple[int, ...]) -> np.ndarray | None:
    """confidence/N.png, or None where the app wrote none for this frame."""
    if not path.is_file():
        return None
    return confidence_levels(_read_png(path), depth_shape, str(path))


def import_stray(folder: str | os.PathLike[str], take_path: str | os.PathLike[str],
                 subject: str, take: str, label: str | None = None) -> dict[str, Any]:
    """Write the Stray Scanner capture in ``folder`` as a new take at ``take_path``; returns info().

    ValueError naming the file for anything missing, corrupt or truncated; on any failure
    nothing is left at ``take_path``.
    """
    src = Path(folder)
    K = parse_camera_matrix(_read_text(src / "camera_matrix.csv"), str(src / "camera_matrix.csv"))
    odometry = parse_odometry(_read_text(src / "odometry.csv"), str(src / "odometry.csv")) \
        if (src / "odometry.csv").exists() else {}
    depth_dir = src / "depth"
    names = sorted(os.listdir(depth_dir)) if depth_dir.is_dir() else []
    depth_files = sorted((int(m.group(1)), depth_dir / m.group(0))
                         for m in map(_DEPTH.fullmatch, names) if m)
    if not depth_files:
        raise ValueError(f"{depth_dir}: no depth maps (expected depth/000000.png, ...)")
    if len({i for i, _ in depth_files}) != len(depth_files):
        raise ValueError(f"{depth_dir}: two depth maps claim the same frame number")
    video_path = src / "rgb.mp4"
    if not video_path.is_file():
        raise ValueError(f"{video_path} is missing (not a complete Stray Scanner folder)")
    video = cv2.VideoCapture(str(video_path))
    if not video.isOpened():
        raise ValueError(f"{video_path}: cannot open the video (corrupt, or a codec OpenCV lacks)")
    fps = video.get(cv2.CAP_PROP_FPS) or 0.0
    device = {"app": "Stray Scanner", "folder": src.name}
    poses: list[tuple[int, np.ndarray]] = []
    try:
        with staged_take(take_path) as staging:
            with TakeWriter(staging, manifest_fields(subject, take, label, "stray", device,
                                                     min_depth_confidence=1)) as writer:
                position = -1
                for index, depth_path in depth_files:
                    while position < index:
                        ok, image = video.read()
                        position += 1
                        if not ok:
                            raise ValueError(
                                f"{video_path}: the video ends after {position} frames but "
                                f"{depth_path.name} needs frame {index} (truncated video?)")
                    h, w = image.shape[:2]
                    color = Intrinsics(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]),
                                       float(K[1, 2]), w, h)
                    depth = _read_depth(depth_path)
                    conf = _read_confidence(src / "confidence" / depth_path.name, depth.shape)
                    if index in odometry:
                        t, pose = odometry[index]
                        poses.append((index, pose))
                    elif odometry:
                        raise ValueError(f"{src / 'odometry.csv'}: no row for frame {index}")
                    elif fps > 0:
                        t = index / fps
                    else:
                        raise ValueError(f"{video_path}: no frame rate and no odometry.csv, so "
                                         "frame times are unknown")
                    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                    if not ok:
                        raise ValueError(f"{video_path}: frame {index} could not be encoded")
                    writer.append(Frame(
                        index=index, timestamp=t, color_jpeg=jpeg.tobytes(),
                        color_intrinsics=color, depth=EncodedDepth.encode(depth, "float32"),
                        depth_intrinsics=color.scaled(depth.shape[1], depth.shape[0]),
                        depth_confidence=conf))
                if poses:
                    writer.add_attachment(POSES_ATTACHMENT, {
                        "index": np.array([i for i, _ in poses], np.int64),
                        "cam_to_world": np.stack([p for _, p in poses])})
    finally:
        video.release()
    return TakeReader(take_path).info()

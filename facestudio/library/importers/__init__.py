"""Bring captures from other apps (Record3D .r3d, Stray Scanner folders) into the library.

An import produces an ordinary take (TakeWriter), so fusion and everything after it never
know where a take came from; the manifest's ``source`` says it for the catalog. Imports are
all-or-nothing: the take is written into a hidden staging folder beside its destination and
renamed into place only after the last frame was stored and the take closed, so a corrupt
input, a crash or Ctrl+C never leaves a half-imported take for the catalog to index.

Camera poses from these apps are device-to-world poses (Record3D's back camera, Stray's
LiDAR odometry), not face-anchor poses, so they never become ``head_pose``: they are kept in
the attachment ``camera_poses`` (arrays ``index`` and ``cam_to_world`` (N, 4, 4), OpenGL
axes like every pose in FaceStudio; Stray's OpenCV-axes odometry is converted) for tools that
want them.

Both apps store ARKit's per-pixel depth confidence (0 low, 1 medium, 2 high) beside the depth;
it is kept with each frame (``Frame.depth_confidence``) and the manifest's
``min_depth_confidence`` says the lowest level the app's own tools trust, which fusion keeps
(Record3D's readers keep only 2, Stray's visualiser defaults to 1 and up).
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facestudio.capture.frame import HIGH_CONFIDENCE

FORMATS = ("record3d", "stray")
POSES_ATTACHMENT = "camera_poses"
MAX_DIMENSION = 16384  # larger images are certainly a corrupt header, not a real capture


def number(value: Any, what: str, *, positive: bool = False) -> float:
    """A finite number (a JSON number, or a CSV field's text) or a ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{what} must be a number, got {value!r:.40}")
    try:
        out = float(value)
    except (ValueError, OverflowError):
        raise ValueError(f"{what} must be a number, got {value!r:.40}") from None
    if not math.isfinite(out) or (positive and out <= 0):
        raise ValueError(f"{what} must be a {'positive ' if positive else ''}finite number, "
                         f"got {value!r:.40}")
    return out


def dimension(value: Any, what: str) -> int:
    """An image width/height: an integer in 1..MAX_DIMENSION."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not (isinstance(value, int) or (math.isfinite(value) and value.is_integer())) \
            or not 1 <= value <= MAX_DIMENSION:
        raise ValueError(f"{what} must be an integer from 1 to {MAX_DIMENSION}, got {value!r:.40}")
    return int(value)


def pose_matrix(pose: Sequence[float], what: str) -> np.ndarray:
    """[x, y, z, qx, qy, qz, qw] (position, unit quaternion) as a 4x4 camera-to-world matrix."""
    x, y, z, qx, qy, qz, qw = (number(v, what) for v in pose)
    q = np.array([qx, qy, qz, qw])
    norm = np.linalg.norm(q)
    if not 0.5 < norm < 2.0:  # float noise is fine; a zero or garbage quaternion is not
        raise ValueError(f"{what}: quaternion ({qx}, {qy}, {qz}, {qw}) is not a rotation")
    qx, qy, qz, qw = q / norm
    m = np.eye(4)
    m[:3, :3] = [[1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qz * qw), 2 * (qx * qz + qy * qw)],
                 [2 * (qx * qy + qz * qw), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qx * qw)],
                 [2 * (qx * qz - qy * qw), 2 * (qy * qz + qx * qw), 1 - 2 * (qx * qx + qy * qy)]]
    m[:3, 3] = [x, y, z]
    return m


def confidence_levels(levels: np.ndarray, depth_shape: tuple[int, ...], where: str) -> np.ndarray:
    """An ARKit confidence map (uint8 0/1/2) of the depth map's size, or a ValueError."""
    if levels.dtype != np.uint8 or levels.shape != depth_shape:
        raise ValueError(f"{where}: confidence map is {levels.dtype} {levels.shape}, the depth "
                         f"map is {depth_shape}: expected one uint8 level per depth pixel")
    if levels.size and int(levels.max()) > HIGH_CONFIDENCE:
        raise ValueError(f"{where}: confidence level {int(levels.max())} is not an ARKit level "
                         f"(0 low, 1 medium, {HIGH_CONFIDENCE} high)")
    return levels


def manifest_fields(subject: str, take: str, label: str | None, source: str,
                    device: dict[str, Any], min_depth_confidence: int) -> dict[str, Any]:
    """The manifest fields every import writes (docs/formats.md, manifest.json)."""
    return {"subject": subject, "take": take, "labels": [label] if label else [],
            "source": source, "device": device, "min_depth_confidence": min_depth_confidence}


@contextlib.contextmanager
def staged_take(take_path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty hidden folder; it becomes ``take_path`` only if the block succeeds.

    The staging folder sits beside the destination (same filesystem, so the final rename is
    atomic) and starts with '.', which no subject/take name may, so the catalog never
    indexes it. On any exception it is deleted, with a subject folder made just for it.
    """
    dest = Path(take_path)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"take {dest} already exists; choose another take name")
    made_parent = not dest.parent.exists()
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.import-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        yield staging
        if dest.exists():
            dest.rmdir()  # an empty placeholder; rename cannot replace it on every platform
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if made_parent:
            with contextlib.suppress(OSError):
                dest.parent.rmdir()
        raise
    if os.name == "posix":  # make the rename durable, like every other take write
        fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def detect_format(path: str | os.PathLike[str]) -> str:
    """'record3d' for a .r3d file, 'stray' for a Stray Scanner folder; ValueError otherwise."""
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() == ".r3d":
            return "record3d"
        raise ValueError(f"{p}: not a Record3D export (expected a .r3d file or a Stray Scanner "
                         "folder)")
    if p.is_dir():
        if (p / "rgb.mp4").exists() or (p / "camera_matrix.csv").exists():
            return "stray"
        raise ValueError(f"{p}: not a Stray Scanner folder (no rgb.mp4 or camera_matrix.csv)")
    raise FileNotFoundError(f"{p}: no such file or folder")


def import_capture(source: str | os.PathLike[str], root: str | os.PathLike[str], subject: str,
                   take: str, label: str | None = None) -> dict[str, Any]:
    """Import a .r3d file or Stray Scanner folder as LIBRARY/takes/SUBJECT/TAKE and index it.

    The catalog row is written only after the take is complete on disk. Returns the take's
    ``TakeReader.info()`` plus ``format``.
    """
    from facestudio.library.catalog import Catalog
    from facestudio.paths import take_dir

    fmt = detect_format(source)
    dest = take_dir(Path(root), subject, take)
    if fmt == "record3d":
        from facestudio.library.importers.record3d import import_record3d

        info = import_record3d(source, dest, subject, take, label)
    else:
        from facestudio.library.importers.stray import import_stray

        info = import_stray(source, dest, subject, take, label)
    Catalog(root).index_take(subject, take)
    return {"format": fmt, **info}

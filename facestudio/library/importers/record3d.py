"""Record3D ``.r3d`` files (front TrueDepth or back LiDAR camera) as FaceStudio takes.

An .r3d is a ZIP holding ``metadata`` (JSON: ``w``, ``h`` = RGB size; ``K`` = 9 floats,
column-major; ``fps``; ``dw``, ``dh`` = depth size, absent in old files; ``poses`` = per frame
[qx, qy, qz, qw, px, py, pz] camera-to-world, OpenGL axes, identity for the front camera;
optional ``frameTimestamps``), ``rgbd/N.jpg``, ``rgbd/N.depth`` (LZFSE-compressed
row-major float32 metres, NaN = invalid) and, from the LiDAR camera, ``rgbd/N.conf``
(LZFSE-compressed uint8 ARKit confidence per depth pixel: 0 low, 1 medium, 2 high). Other
entries (``icon``, audio) are not needed and ignored.

Choices:
- Images are stored exactly as Record3D stored them, JPEGs byte for byte and never
  un-mirrored: Record3D's own viewer shows front-camera frames mirrored, but the files hold
  the sensor's image, which is what the intrinsics describe. A mirrored image would need
  mirrored intrinsics to stay consistent, so fusion works on what is stored.
- Depth is stored losslessly as float32/zlib with invalid (NaN, inf, <= 0) pixels set to 0;
  its intrinsics are ``K`` rescaled from the RGB to the depth resolution.
- Confidence maps are kept as they are, with ``min_depth_confidence`` 2 in the manifest:
  readers of Record3D files keep only high-confidence depth, so fusion does too (by default).
- The front camera has no pose (Record3D writes identity), so the take has no head_pose and
  fusion estimates the head pose by registration. Non-identity poses (back camera) are kept
  in the ``camera_poses`` attachment, never as head_pose (package docstring).
"""

from __future__ import annotations

import json
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facestudio.capture.frame import EncodedDepth, Frame, Intrinsics
from facestudio.capture.take import TakeReader, TakeWriter
from facestudio.library.importers import (POSES_ATTACHMENT, confidence_levels, dimension,
                                          manifest_fields, number, pose_matrix, staged_take)

import lzfse  # Record3D compresses depth with Apple's LZFSE

_COLOR = re.compile(r"rgbd/(\d{1,9})\.jpg")
_MAX_ENTRY = 256 << 20  # no real frame or metadata is this big; refuse before reading it
_IDENTITY = np.array([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])


@dataclass(frozen=True)
class R3DMetadata:
    """The parts of an .r3d ``metadata`` entry the importer uses, validated."""

    color: Intrinsics                        # K at the RGB size w x h
    fps: float | None
    depth_size: tuple[int, int] | None       # (dw, dh); None: infer from each depth map
    cam_to_world: np.ndarray | None          # (N, 4, 4); None for identity poses (front camera)
    timestamps: np.ndarray | None            # (N,) seconds


def _number_list(value: Any, what: str) -> np.ndarray:
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list of numbers")
    return np.array([number(v, f"{what}[{i}]") for i, v in enumerate(value)], dtype=np.float64)


def parse_metadata(raw: bytes, where: str = "metadata") -> R3DMetadata:
    """Validate an .r3d metadata entry; any problem is a ValueError starting with ``where``."""
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: expected a JSON object, found {type(meta).__name__}")
    try:
        w, h = dimension(meta.get("w"), "w"), dimension(meta.get("h"), "h")
        k = _number_list(meta.get("K"), "K")
        if k.shape != (9,):
            raise ValueError(f"K must have 9 numbers, has {k.size}")
        K = k.reshape(3, 3).T  # stored column-major
        fx, fy = number(K[0, 0], "K fx", positive=True), number(K[1, 1], "K fy", positive=True)
        color = Intrinsics(fx, fy, float(K[0, 2]), float(K[1, 2]), w, h)
        fps = None if meta.get("fps") is None else number(meta["fps"], "fps", positive=True)
        if ("dw" in meta) != ("dh" in meta):
            raise ValueError("dw and dh must both be present or both absent")
        depth_size = (dimension(meta["dw"], "dw"), dimension(meta["dh"], "dh")) \
            if "dw" in meta else None
        cam_to_world = None
        poses = meta.get("poses") or []
        if not isinstance(poses, list) \
                or not all(isinstance(p, list) and len(p) == 7 for p in poses):
            raise ValueError("poses must be a list of [qx, qy, qz, qw, px, py, pz] lists")
        q = np.array([_number_list(p, f"poses[{i}]") for i, p in enumerate(poses)]).reshape(-1, 7)
        if not np.allclose(q, _IDENTITY, atol=1e-6):
            cam_to_world = np.stack([pose_matrix([*p[4:], *p[:4]], f"poses[{i}]")
                                     for i, p in enumerate(q)])
        timestamps = None
        if meta.get("frameTimestamps") is not None:
            timestamps = _number_list(meta["frameTimestamps"], "frameTimestamps")
        if fps is None and timestamps is None:
            raise ValueError("neither fps nor frameTimestamps is given, so frame times are unknown")
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return R3DMetadata(color, fps, depth_size, cam_to_world, timestamps)


def _decompress(data: bytes, what: str, where: str) -> bytes:
    try:
        return lzfse.decompress(data)
    except (lzfse.error, MemoryError, ValueError) as exc:
        raise ValueError(f"{where}: corrupt or truncated LZFSE {what} data "
                         f"({type(exc).__name__})") from None


def decode_confidence(data: bytes, depth_shape: tuple[int, int], where: str) -> np.ndarray:
    """LZFSE uint8 levels -> (dh, dw) uint8; ValueError if damaged or not the depth's size."""
    raw = _decompress(data, "confidence", where)
    if len(raw) != depth_shape[0] * depth_shape[1]:
        raise ValueError(f"{where}: confidence has {len(raw)} values, the depth map "
                         f"{depth_shape[1]}x{depth_shape[0]} (truncated or mismatched file)")
    return confidence_levels(np.frombuffer(raw, np.uint8).reshape(depth_shape), depth_shape,
                             where)


def decode_depth(data: bytes, meta: R3DMetadata, where: str) -> np.ndarray:
    """LZFSE float32 metres -> (dh, dw) float32 with invalid pixels 0; ValueError if damaged."""
    raw = _decompress(data, "depth", where)
    if len(raw) % 4 or not raw:
        raise ValueError(f"{where}: decompressed depth holds {len(raw)} bytes, not whole float32 "
                         "values (truncated?)")
    n = len(raw) // 4
    if meta.depth_size is not None:
        dw, dh = meta.depth_size
        if dw * dh != n:
            raise ValueError(f"{where}: depth has {n} values, metadata says {dw}x{dh} = "
                             f"{dw * dh} (truncated or mismatched file)")
    else:  # old files: same aspect ratio as the RGB image
        c = meta.color
        dh = max(1, round((n * c.height / c.width) ** 0.5))
        dw = n // dh
        if dw * dh != n or abs(dw / dh - c.width / c.height) > 0.02:
            raise ValueError(f"{where}: cannot infer the depth size of {n} values with the RGB "
                             f"aspect {c.width}x{c.height} (metadata has no dw/dh)")
    depth = np.frombuffer(raw, dtype="<f4").reshape(dh, dw)
    return np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float32)


def _read(zf: zipfile.ZipFile, name: str, source: Path) -> bytes:
    where = f"{source}: {name}"
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise ValueError(f"{where} is missing from the archive") from None
    if info.file_size > _MAX_ENTRY:
        raise ValueError(f"{where}: entry of {info.file_size} bytes is implausibly large")
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
        raise ValueError(f"{where}: damaged entry ({exc})") from None


def _color_intrinsics(jpeg: bytes, meta: R3DMetadata, where: str) -> Intrinsics:
    """K for the JPEG as stored (decoding it also proves it is whole): rescaled if its size differs."""
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE) \
        if jpeg.startswith(b"\xff\xd8") else None
    if img is None:
        raise ValueError(f"{where}: not a readable JPEG image")
    c, (h, w) = meta.color, img.shape
    if (w, h) == (c.width, c.height):
        return c
    if abs(w / h - c.width / c.height) > 0.02:
        raise ValueError(f"{where}: image is {w}x{h}, metadata says {c.width}x{c.height}")
    return c.scaled(w, h)


def import_record3d(r3d_path: str | os.PathLike[str], take_path: str | os.PathLike[str],
                    subject: str, take: str, label: str | None = None) -> dict[str, Any]:
    """Write the .r3d at ``r3d_path`` as a new take at ``take_path``; returns its info().

    ValueError naming the file and entry for anything corrupt or truncated; on any failure
    nothing is left at ``take_path``.
    """
    source = Path(r3d_path)
    try:
        zf = zipfile.ZipFile(source)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{source}: not a Record3D .r3d file (not a valid ZIP archive: "
                         f"{exc}; truncated download?)") from None
    with zf:
        meta = parse_metadata(_read(zf, "metadata", source), f"{source}: metadata")
        numbers = sorted(int(m.group(1)) for m in map(_COLOR.fullmatch, zf.namelist()) if m)
        if not numbers:
            raise ValueError(f"{source}: no frames (no rgbd/N.jpg entries)")
        names = set(zf.namelist())
        device = {"app": "Record3D", "file": source.name,
                  "camera": "front TrueDepth" if meta.cam_to_world is None else "back"}
        pose_index: list[int] = []
        with staged_take(take_path) as staging:
            with TakeWriter(staging, manifest_fields(subject, take, label, "record3d", device,
                                                     min_depth_confidence=2)) as writer:
                for n in numbers:
                    jpeg = _read(zf, f"rgbd/{n}.jpg", source)
                    color = _color_intrinsics(jpeg, meta, f"{source}: rgbd/{n}.jpg")
                    depth = decode_depth(_read(zf, f"rgbd/{n}.depth", source), meta,
                                         f"{source}: rgbd/{n}.depth")
                    if meta.timestamps is not None and n < len(meta.timestamps):
                        t = float(meta.timestamps[n])
                    elif meta.fps is not None:
                        t = n / meta.fps
                    else:
                        raise ValueError(f"{source}: metadata: frameTimestamps has no time for "
                                         f"frame {n} and there is no fps")
                    conf = None
                    if f"rgbd/{n}.conf" in names:
                        conf = decode_confidence(_read(zf, f"rgbd/{n}.conf", source), depth.shape,
                                                 f"{source}: rgbd/{n}.conf")
                    dh, dw = depth.shape
                    writer.append(Frame(index=n, timestamp=t, color_jpeg=jpeg,
                                        color_intrinsics=color,
                                        depth=EncodedDepth.encode(depth, "float32"),
                                        depth_intrinsics=meta.color.scaled(dw, dh),
                                        depth_confidence=conf))
                    if meta.cam_to_world is not None and n < len(meta.cam_to_world):
                        pose_index.append(n)
                if pose_index and meta.cam_to_world is not None:
                    writer.add_attachment(POSES_ATTACHMENT, {
                        "index": np.array(pose_index, np.int64),
                        "cam_to_world": meta.cam_to_world[pose_index]})
    return TakeReader(take_path).info()

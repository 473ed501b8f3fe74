"""The in-memory capture frame shared by devices, the wire protocol and takes on disk.

Conventions (docs/protocol.md is the normative text):

- Intrinsics are pinhole parameters in pixels, OpenCV pixel convention (u right, v down,
  pixel centres at integer coordinates).
- Depth is metres along the optical axis; 0 means "no measurement". It stays encoded
  (compressed bytes) until somebody needs the array, so a recorder writes exactly what
  the device sent and never pays for decoding.
- ``head_pose`` is the ARKit face-anchor transform: a 4x4 matrix mapping the canonical head
  frame (metres, +Y up, face looking toward +Z) to the camera frame in ARKit/OpenGL axes
  (x right, y up, camera looking down -Z).
- ``blendshapes`` are the 52 ARKit weights in :data:`facestudio.faces.arkit.BLENDSHAPE_NAMES` order.
- ``depth_confidence`` (imports from LiDAR apps only) is ARKit's per-pixel depth confidence,
  ``ARConfidenceLevel``: 0 low, 1 medium, 2 high, one uint8 per depth pixel.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEPTH_DTYPES = {"float16": np.float16, "float32": np.float32}
DEPTH_CODECS = ("zlib", "raw")
#: OpenGL camera axes (x right, y up, looking down -Z) <-> OpenCV camera axes (x right, y down,
#: looking down +Z): right-multiply a camera-to-world pose by it to switch. Its own inverse.
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])
HIGH_CONFIDENCE = 2   # ARKit's ARConfidenceLevel.high, the top of depth_confidence's 0/1/2


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole camera intrinsics for an image of ``width`` x ``height`` pixels."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)

    def scaled(self, width: int, height: int) -> "Intrinsics":
        """The same camera resampled to another resolution (pixel-centre convention)."""
        sx, sy = width / self.width, height / self.height
        return Intrinsics(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5,
                          (self.cy + 0.5) * sy - 0.5, width, height)

    def to_dict(self) -> dict[str, Any]:
        return {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy,
                "width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Intrinsics":
        return cls(float(d["fx"]), float(d["fy"]), float(d["cx"]), float(d["cy"]),
                   int(d["width"]), int(d["height"]))


@dataclass(frozen=True)
class EncodedDepth:
    """A depth map as it travels and is stored: compressed bytes plus how to read them."""

    data: bytes
    width: int
    height: int
    dtype: str = "float16"
    codec: str = "zlib"

    @classmethod
    def encode(cls, depth_m: np.ndarray, dtype: str = "float16", codec: str = "zlib",
               level: int = 1) -> "EncodedDepth":
        """Encode a (H, W) depth map in metres (0 = invalid). Lossless for the chosen dtype."""
        if dtype not in DEPTH_DTYPES or codec not in DEPTH_CODECS:
            raise ValueError(f"unsupported depth encoding {dtype}/{codec}")
        arr = np.ascontiguousarray(np.nan_to_num(depth_m, nan=0.0), dtype=DEPTH_DTYPES[dtype])
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        data = zlib.compress(raw, level) if codec == "zlib" else raw
        return cls(data, int(arr.shape[1]), int(arr.shape[0]), dtype, codec)

    def decode(self) -> np.ndarray:
        """The (H, W) float32 depth in metres. Raises ValueError on corrupt data."""
        if self.dtype not in DEPTH_DTYPES or self.codec not in DEPTH_CODECS:
            raise ValueError(f"unsupported depth encoding {self.dtype}/{self.codec}")
        itemsize = np.dtype(DEPTH_DTYPES[self.dtype]).itemsize
        expected = self.width * self.height * itemsize
        if self.codec == "zlib":
            try:
                d = zlib.decompressobj()
                raw = d.decompress(self.data, expected + 1)
            except zlib.error as exc:
                raise ValueError(f"corrupt depth data: {exc}") from exc
        else:
            raw = self.data
        if len(raw) != expected:
            raise ValueError(f"depth data holds {len(raw)} bytes, expected {expected}")
        arr = np.frombuffer(raw, dtype=np.dtype(DEPTH_DTYPES[self.dtype]).newbyteorder("<"))
        return arr.reshape(self.height, self.width).astype(np.float32)


@dataclass
class Frame:
    """One capture frame. Depth, pose, blendshapes and mesh are optional (ARKit may skip them)."""

    index: int
    timestamp: float
    color_jpeg: bytes
    color_intrinsics: Intrinsics
    depth: EncodedDepth | None = None
    depth_intrinsics: Intrinsics | None = None
    head_pose: np.ndarray | None = None
    blendshapes: np.ndarray | None = None
    face_mesh: np.ndarray | None = None
    ground_truth: dict[str, Any] | None = field(default=None)
    depth_confidence: np.ndarray | None = None   # (H, W) uint8 ARKit levels, depth's size
    # Set by the desktop's receiver, never sent: when the frame arrived (Unix seconds, frames.jsonl's
    # "received") and capture-to-receipt latency (None while the device clock's offset is unknown).
    received: float | None = None
    latency_s: float | None = None

    def color(self) -> np.ndarray:
        """Decode the color JPEG to an (H, W, 3) uint8 BGR array (OpenCV order)."""
        import cv2

        img = cv2.imdecode(np.frombuffer(self.color_jpeg, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"frame {self.index}: color is not a decodable JPEG")
        return img

    def depth_m(self, min_confidence: int | None = None) -> np.ndarray | None:
        """Depth in metres (None without depth). With ``min_confidence``, pixels whose
        ``depth_confidence`` is below it become 0 (invalid); frames without a map are as is."""
        if self.depth is None:
            return None
        depth = self.depth.decode()
        if min_confidence is not None and self.depth_confidence is not None:
            depth[self.depth_confidence < min_confidence] = 0.0
        return depth

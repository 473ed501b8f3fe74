"""A fused expression segment: one training object (person x expression) on disk.

Fusion (``facestudio fuse``) writes one folder per segment; training, evaluation and
export read it. Layout (docs/formats.md, "Segment"):

    LIBRARY/datasets/SUBJECT/TAKE/segNN-LABEL/
        segment.json          metadata, views, quality report
        mesh.ply              fused colored surface, canonical head frame, metres
        views/NNNNNN_color.png   8-bit RGB crop
        views/NNNNNN_mask.png    8-bit, 255 = face, 0 = ignore
        views/NNNNNN_depth.png   16-bit millimetres along the optical axis, 0 = invalid

Every view stores its intrinsics (of the crop) and ``cam_to_head``: the 4x4 camera-to-
canonical-head transform, camera in OpenGL axes (x right, y up, looking down -Z), the
same convention as nerfstudio's transform_matrix. The canonical head frame is the ARKit
face-anchor frame: metres, +Y up, face looking toward +Z.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facestudio.capture.frame import Intrinsics
from facestudio.storage import writing

FORMAT_NAME = "facestudio-segment"
FORMAT_VERSION = 1
SEGMENT_FILE = "segment.json"
MESH_FILE = "mesh.ply"
# The box in the canonical head frame that every model covers (metres): the whole face and
# forehead with margin; fusion crops to it, the autodecoder's voxel grid spans it.
HEAD_BOX_CENTER = (0.0, 0.01, 0.03)
HEAD_BOX_SIZE = 0.26


class SegmentError(Exception):
    """A segment folder is missing, corrupt or of an unknown version."""


@dataclass
class SegmentView:
    index: int                    # frame index in the take
    intrinsics: Intrinsics        # of the stored crop
    cam_to_head: np.ndarray       # (4, 4) float64

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "intrinsics": self.intrinsics.to_dict(),
                "cam_to_head": [float(x) for x in self.cam_to_head.reshape(16)]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SegmentView":
        pose = np.asarray(d["cam_to_head"], dtype=np.float64)
        if pose.shape != (16,) or not np.all(np.isfinite(pose)):
            raise SegmentError(f"view {d.get('index')}: cam_to_head must be 16 finite numbers")
        return cls(int(d["index"]), Intrinsics.from_dict(d["intrinsics"]), pose.reshape(4, 4))


@dataclass
class SegmentInfo:
    subject: str
    take: str
    segment_id: str               # "seg00-neutral"
    label: str                    # expression label ("neutral", "smile", ...)
    blendshapes: list[float]      # mean ARKit weights over the segment (52)
    frames: list[int]             # take frame indices in the segment
    views: list[SegmentView] = field(default_factory=list)
    quality: dict[str, Any] = field(default_factory=dict)
    truth: dict[str, Any] | None = None   # synthetic takes: {"segment": i} into the take's ground truth
    box_center: tuple[float, float, float] = HEAD_BOX_CENTER
    box_size: float = HEAD_BOX_SIZE

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["views"] = [v.to_dict() for v in self.views]
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, **d}


def view_files(index: int) -> tuple[str, str, str]:
    stem = f"views/{index:06d}"
    return f"{stem}_color.png", f"{stem}_mask.png", f"{stem}_depth.png"


class SegmentWriter:
    """Write a segment folder; ``finish`` writes segment.json last, atomically (it marks completeness)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        (self.path / "views").mkdir(parents=True, exist_ok=True)

    def add_view(self, view: SegmentView, color_rgb: np.ndarray, mask: np.ndarray, depth_m: np.ndarray) -> None:
        c, m, d = (self.path / f for f in view_files(view.index))
        _imwrite(c, cv2.cvtColor(color_rgb, cv2.COLOR_RGB2BGR))
        _imwrite(m, np.where(mask, 255, 0).astype(np.uint8))
        _imwrite(d, np.clip(np.round(np.nan_to_num(depth_m) * 1000), 0, 65535).astype(np.uint16))

    def finish(self, info: SegmentInfo) -> Path:
        tmp = self.path / (SEGMENT_FILE + ".tmp")
        with writing(tmp), open(tmp, "w", encoding="utf-8") as f:
            json.dump(info.to_json(), f, indent=1, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / SEGMENT_FILE)
        return self.path


def _imwrite(path: Path, image: np.ndarray) -> None:
    """Encode in memory and write with Python: cv2.imwrite only says False, never why
    (a full disk must be reported as such)."""
    ok, data = cv2.imencode(path.suffix, image)
    if not ok:
        raise ValueError(f"could not encode {path}")
    with writing(path), open(path, "wb") as f:
        f.write(data)


class Segment:
    """Read a segment folder written by :class:`SegmentWriter`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        meta = self.path / SEGMENT_FILE
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SegmentError(f"{meta} does not exist (not a fused segment, or fusion did not finish)") from None
        except (OSError, ValueError) as exc:
            raise SegmentError(f"{meta} is unreadable: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise SegmentError(f"{meta} is not a {FORMAT_NAME} file")
        if data.get("version") != FORMAT_VERSION:
            raise SegmentError(f"{meta} has version {data.get('version')!r}; this FaceStudio reads {FORMAT_VERSION}")
        try:
            self.info = SegmentInfo(
                subject=str(data["subject"]), take=str(data["take"]), segment_id=str(data["segment_id"]),
                label=str(data["label"]), blendshapes=[float(x) for x in data["blendshapes"]],
                frames=[int(i) for i in data["frames"]],
                views=[SegmentView.from_dict(v) for v in data["views"]],
                quality=dict(data.get("quality") or {}), truth=data.get("truth"),
                box_center=tuple(float(x) for x in data["box_center"]), box_size=float(data["box_size"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise SegmentError(f"{meta} is malformed: {exc!r}") from None
        if len(self.info.blendshapes) != 52:
            raise SegmentError(f"{meta}: blendshapes must have 52 entries")

    @property
    def name(self) -> str:
        return f"{self.info.subject}/{self.info.take}/{self.info.segment_id}"

    @property
    def mesh_path(self) -> Path:
        return self.path / MESH_FILE

    def __len__(self) -> int:
        return len(self.info.views)

    def load_view(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(color RGB uint8 (H,W,3), mask bool (H,W), depth float32 metres (H,W)) of view i."""
        view = self.info.views[i]
        c, m, d = (self.path / f for f in view_files(view.index))
        color, mask = cv2.imread(str(c), cv2.IMREAD_COLOR), cv2.imread(str(m), cv2.IMREAD_GRAYSCALE)
        depth = cv2.imread(str(d), cv2.IMREAD_UNCHANGED)
        if color is None or mask is None or depth is None:
            raise SegmentError(f"{self.path}: view {view.index} has a missing or corrupt image")
        return cv2.cvtColor(color, cv2.COLOR_BGR2RGB), mask > 127, depth.astype(np.float32) / 1000.0

    def load_all(self) -> dict[str, np.ndarray]:
        """Every view stacked: colors (N,H,W,3) uint8, masks (N,H,W) bool, depths (N,H,W) float32,
        K (N,3,3), cam_to_head (N,4,4)."""
        views = [self.load_view(i) for i in range(len(self))]
        return {"colors": np.stack([v[0] for v in views]), "masks": np.stack([v[1] for v in views]),
                "depths": np.stack([v[2] for v in views]),
                "K": np.stack([v.intrinsics.matrix() for v in self.info.views]),
                "cam_to_head": np.stack([v.cam_to_head for v in self.info.views])}


def find_segments(root: Path) -> list[Path]:
    """Every complete segment folder under ``root`` (a library's datasets/ or any folder)."""
    return sorted(p.parent for p in Path(root).rglob(SEGMENT_FILE))

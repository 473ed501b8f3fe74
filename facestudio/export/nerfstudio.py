"""Export a fused segment in nerfstudio's ``transforms.json`` layout.

Fields follow nerfstudio's own parser (nerfstudio/data/dataparsers/nerfstudio_dataparser.py,
summarised in ../shared/design/REFERENCE.md): per-frame intrinsics (every crop has its own),
``transform_matrix`` camera-to-world in OpenGL axes (our ``cam_to_head`` exactly, the world
being the canonical head frame), 16-bit depth PNGs in millimetres with
``depth_unit_scale_factor`` 1e-3, and single-channel masks (0 = ignore). nerfstudio puts
pixel centres at +0.5 (COLMAP convention) while our intrinsics use OpenCV's integer centres,
so cx and cy are shifted by half a pixel.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facestudio.dataset.segment import Segment


def _imwrite(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def export_nerfstudio(segment_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Write images/, depth/, masks/ and transforms.json into ``out_dir``; returns a summary."""
    seg = Segment(Path(segment_path))
    if len(seg) == 0:
        raise ValueError(f"{seg.path}: the segment has no views to export")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: choose a new folder")
    for sub in ("images", "depth", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    frames = []
    for i, view in enumerate(seg.info.views):
        color, mask, depth = seg.load_view(i)
        name = f"frame_{view.index:06d}.png"
        _imwrite(out / "images" / name, cv2.cvtColor(color, cv2.COLOR_RGB2BGR))
        _imwrite(out / "depth" / name, np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16))
        _imwrite(out / "masks" / name, np.where(mask, 255, 0).astype(np.uint8))
        k = view.intrinsics
        frames.append({
            "file_path": f"images/{name}", "depth_file_path": f"depth/{name}", "mask_path": f"masks/{name}",
            "fl_x": k.fx, "fl_y": k.fy, "cx": k.cx + 0.5, "cy": k.cy + 0.5, "w": k.width, "h": k.height,
            "transform_matrix": view.cam_to_head.tolist(),
        })
    doc = {"camera_model": "PINHOLE", "depth_unit_scale_factor": 1e-3, "frames": frames,
           "facestudio": {"segment": seg.name, "label": seg.info.label,
                          "blendshapes": seg.info.blendshapes, "box_center": list(seg.info.box_center),
                          "box_size": seg.info.box_size}}
    if seg.mesh_path.exists():
        ply = out / "mesh.ply"
        ply.write_bytes(seg.mesh_path.read_bytes())
        doc["ply_file_path"] = "mesh.ply"
    tmp = out / "transforms.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, allow_nan=False), encoding="utf-8")
    os.replace(tmp, out / "transforms.json")
    return {"segment": seg.name, "out_dir": str(out), "frames": len(frames)}

"""TSDF fusion of one expression segment into a colored surface in the canonical head frame.

Open3D's tensor ``VoxelBlockGrid`` is used because it allocates only the blocks a frame
touches (a face is a thin shell inside a large box) and integrates a 640x480 frame in a few
milliseconds on one core; the legacy ScalableTSDFVolume is documented as not meant for that.
Depth arrives already masked to the head, so the grid never holds background or shoulders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d

from facestudio.capture.frame import GL_TO_CV, Intrinsics
from facestudio.dataset.segment import HEAD_BOX_CENTER, HEAD_BOX_SIZE

_F32 = o3d.core.Dtype.Float32


class TsdfVolume:
    """A truncated signed distance volume in the canonical head frame (metres).

    ``block_count`` is only the initial capacity (the CPU hash map grows): a face segment uses
    ~700 blocks at 2 mm, ~1200 at 1.5 mm, and a large initial allocation costs ~0.2 s.
    """

    def __init__(self, voxel_m: float = 0.0015, trunc_voxels: float = 4.0, depth_max_m: float = 1.5,
                 block_count: int = 2000) -> None:
        self.voxel = voxel_m
        self.trunc_voxels = trunc_voxels
        self.depth_max = depth_max_m
        self.grid = o3d.t.geometry.VoxelBlockGrid(
            attr_names=("tsdf", "weight", "color"), attr_dtypes=(_F32, _F32, _F32),
            attr_channels=((1,), (1,), (3,)), voxel_size=voxel_m, block_resolution=8,
            block_count=block_count, device=o3d.core.Device("CPU:0"))
        self.frames = 0

    def integrate(self, depth_m: np.ndarray, color_rgb: np.ndarray, intrinsics: Intrinsics,
                  cam_to_head: np.ndarray) -> None:
        """Fuse one frame. ``depth_m`` (H, W) float32 is 0 outside the head; ``color_rgb`` uint8
        has the same size; ``cam_to_head`` is the OpenGL-axes camera-to-head transform."""
        h, w = depth_m.shape
        if color_rgb.shape[:2] != (h, w):
            raise ValueError(f"color {color_rgb.shape[:2]} and depth {(h, w)} sizes differ")
        rows, cols = np.flatnonzero((depth_m > 0).any(axis=1)), np.flatnonzero((depth_m > 0).any(axis=0))
        if len(rows) == 0:
            return
        # Only the head's bounding box: the block search and color conversion scale with pixels.
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        k = intrinsics.scaled(w, h) if (w, h) != (intrinsics.width, intrinsics.height) else intrinsics
        kmat = k.matrix()
        kmat[0, 2] -= x0
        kmat[1, 2] -= y0
        intr = o3d.core.Tensor(kmat)
        extr = o3d.core.Tensor(GL_TO_CV @ np.linalg.inv(cam_to_head))   # head -> OpenCV camera
        depth = o3d.t.geometry.Image(o3d.core.Tensor(np.ascontiguousarray(depth_m[y0:y1, x0:x1], np.float32)))
        color = o3d.t.geometry.Image(o3d.core.Tensor(
            color_rgb[y0:y1, x0:x1].astype(np.float32) * np.float32(1.0 / 255.0)))
        blocks = self.grid.compute_unique_block_coordinates(depth, intr, extr, 1.0, self.depth_max,
                                                            self.trunc_voxels)
        self.grid.integrate(blocks, depth, color, intr, extr, 1.0, self.depth_max, self.trunc_voxels)
        self.frames += 1

    def extract_mesh(self, weight_threshold: float = 3.0,
                     box_center: tuple[float, float, float] = HEAD_BOX_CENTER,
                     box_size: float = HEAD_BOX_SIZE) -> o3d.geometry.TriangleMesh:
        """The zero crossing as a colored legacy mesh, cropped to the head box, with only the
        largest connected piece kept (isolated specks are sensor noise, not face)."""
        mesh = self.grid.extract_triangle_mesh(weight_threshold=weight_threshold).to_legacy()
        c, half = np.asarray(box_center), box_size / 2.0
        mesh = mesh.crop(o3d.geometry.AxisAlignedBoundingBox(c - half, c + half))
        if len(mesh.triangles) == 0:
            return mesh
        labels, counts, _ = mesh.cluster_connected_triangles()
        labels = np.asarray(labels)
        mesh.remove_triangles_by_mask(labels != int(np.argmax(np.asarray(counts))))
        mesh.remove_unreferenced_vertices()
        mesh.compute_vertex_normals()
        return mesh


def save_mesh_ply(mesh: o3d.geometry.TriangleMesh, path: Path) -> None:
    """Binary PLY with vertex colors; raises OSError when Open3D cannot write it. Colours are
    clipped to [0, 1] here (blending can overshoot by rounding): Open3D would clamp them too, but
    with a warning on stdout, inside `--json` output."""
    if mesh.has_vertex_colors():
        mesh.vertex_colors = o3d.utility.Vector3dVector(np.clip(np.asarray(mesh.vertex_colors), 0.0, 1.0))
    if not o3d.io.write_triangle_mesh(str(path), mesh, write_ascii=False, write_vertex_colors=True):
        raise OSError(f"could not write mesh {path}")

"""Head-pose canonicalisation: every frame expressed in the head's canonical frame.

Takes from an iPad carry the ARKit face-anchor transform per frame; then the canonical frame
*is* the anchor frame and nothing needs estimating. Imports from the front camera (Record3D,
Stray Scanner) or takes whose anchor is not trusted have no pose at all: the camera never
moves in the world, the head does. :class:`FrameToModelTracker` then estimates each frame's
camera-to-head transform by robust point-to-plane ICP (Open3D tensor registration) of the
frame's back-projected face points against a running fused point model of the head, frame
after frame, so errors do not accumulate the way frame-to-frame odometry drifts.

Conventions: poses are 4x4 float64; cameras use OpenGL axes (x right, y up, looking down -Z)
like ``Frame.head_pose``; pixels follow OpenCV (see ``facestudio.capture.frame``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d

from facestudio.capture.frame import GL_TO_CV, Intrinsics

_REG = o3d.pipelines.registration

#: Where the nose tip sits in the canonical head frame (ARKit-like anchor frame used by the
#: virtual device). Without an anchor the canonical origin is placed this far behind the nose.
NOSE_TIP_HEAD = np.array([0.0, 0.0, 0.125])


def backproject(depth_m: np.ndarray, intrinsics: Intrinsics, mask: np.ndarray | None = None,
                stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame points (N, 3), OpenGL axes, of valid (and masked) depth pixels.

    Returns the points and their flat pixel indices (into the full image) so callers can pick
    colors. ``stride`` subsamples rows and columns, a cheap uniform thinning for tracking.
    """
    h, w = depth_m.shape
    valid = depth_m > 0
    if mask is not None:
        valid &= mask
    if stride > 1:
        sub = np.zeros_like(valid)
        sub[::stride, ::stride] = valid[::stride, ::stride]
        valid = sub
    flat = np.flatnonzero(valid)
    v, u = np.divmod(flat, w)
    z = depth_m.reshape(-1)[flat].astype(np.float32)
    k = intrinsics.scaled(w, h) if (w, h) != (intrinsics.width, intrinsics.height) else intrinsics
    x = (u.astype(np.float32) - np.float32(k.cx)) * np.float32(1.0 / k.fx) * z
    y = (v.astype(np.float32) - np.float32(k.cy)) * np.float32(-1.0 / k.fy) * z
    return np.stack([x, y, -z], axis=1), flat


def organized_normals(depth_m: np.ndarray, intrinsics: Intrinsics, mask: np.ndarray,
                      stride: int = 2, max_jump_m: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points, unit normals facing the camera, flat pixel indices) on a ``stride`` pixel grid.

    Normals come from central differences on the depth grid: an order of magnitude cheaper
    than a nearest-neighbour search, and exact enough for point-to-plane ICP. Pixels whose
    neighbours are missing or across a depth jump get no point.
    """
    h, w = depth_m.shape
    k = intrinsics.scaled(w, h) if (w, h) != (intrinsics.width, intrinsics.height) else intrinsics
    z = np.where(mask, depth_m, 0.0)[::stride, ::stride].astype(np.float64)
    v, u = np.mgrid[0:h:stride, 0:w:stride]
    p = np.stack([(u - k.cx) / k.fx * z, -(v - k.cy) / k.fy * z, -z], axis=-1)
    dx, dy = p[1:-1, 2:] - p[1:-1, :-2], p[2:, 1:-1] - p[:-2, 1:-1]
    zc = z[1:-1, 1:-1]
    ok = (zc > 0) & (z[1:-1, 2:] > 0) & (z[1:-1, :-2] > 0) & (z[2:, 1:-1] > 0) & (z[:-2, 1:-1] > 0)
    ok &= (np.abs(dx[..., 2]) < max_jump_m) & (np.abs(dy[..., 2]) < max_jump_m)
    n = np.cross(dx[ok], dy[ok])
    pts = p[1:-1, 1:-1][ok]
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    n *= np.where((n * pts).sum(axis=1) > 0, -1.0, 1.0)[:, None]   # face the camera at the origin
    flat = (v[1:-1, 1:-1][ok] * w + u[1:-1, 1:-1][ok])
    return pts, n, flat


def rotate(rot: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """``rot`` (3x3) applied to (N, 3) points, in their dtype.

    Written out per axis on purpose: a (N, 3) @ (3, 3) product goes to multithreaded BLAS,
    whose spinning threads cost ~50 ms per call on a busy 2-core machine.
    """
    r = rot.astype(pts.dtype)
    out = np.empty_like(pts)
    for i in range(3):
        out[:, i] = pts[:, 0] * r[i, 0] + pts[:, 1] * r[i, 1] + pts[:, 2] * r[i, 2]
    return out


def transform(pose: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """A 4x4 rigid ``pose`` applied to (N, 3) points."""
    return rotate(pose[:3, :3], pts) + pose[:3, 3].astype(pts.dtype)


def rotation_angle_deg(rot: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(rot[:3, :3]) - 1.0) / 2.0, -1.0, 1.0))))


def initial_head_pose(points_cam: np.ndarray) -> np.ndarray:
    """A head->camera guess for the first frame of a take without anchor poses.

    The subject is assumed to start roughly facing the camera: the canonical axes are the
    camera's and the origin sits :data:`NOSE_TIP_HEAD` behind the nose tip, taken as the
    nearest face point (a low depth percentile, robust to stray pixels).
    """
    if len(points_cam) == 0:
        raise ValueError("cannot place the head: the first frame has no face points")
    near = points_cam[points_cam[:, 2] >= np.percentile(points_cam[:, 2], 99.5)]
    pose = np.eye(4)
    pose[:3, 3] = near.mean(axis=0) - NOSE_TIP_HEAD
    return pose


def canonicalize(head_to_cam: np.ndarray, model_points: np.ndarray) -> np.ndarray:
    """Re-anchor tracked poses (N, 4, 4; NaN = lost) so the canonical frame is face-centred.

    Tracking starts in a frame guessed from the first view, which may show the head turned.
    The subject is asked to turn the head around looking at the camera, so the *average*
    head orientation over the take is taken as "facing the camera" (identity rotation), and
    the origin is put :data:`NOSE_TIP_HEAD` behind the front-most point of the fused model.
    """
    ok = np.isfinite(head_to_cam).all(axis=(1, 2))
    if not ok.any():
        return head_to_cam
    u, _, vt = np.linalg.svd(head_to_cam[ok, :3, :3].sum(axis=0))
    mean_rot = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
    z = rotate(mean_rot, model_points)[:, 2]
    nose = model_points[z >= np.percentile(z, 99.5)].mean(axis=0)
    fix = np.eye(4)                    # new head coordinates -> old head coordinates
    fix[:3, :3] = mean_rot.T
    fix[:3, 3] = nose - mean_rot.T @ NOSE_TIP_HEAD
    return head_to_cam @ fix


@dataclass
class TrackResult:
    cam_to_head: np.ndarray | None   # None: the frame could not be registered (face lost)
    rmse_m: float                    # inlier RMSE of the final ICP stage
    fitness: float                   # fraction of frame points with a model correspondence


class PointModel:
    """The running fused head model: a voxel map of averaged points, normals and colors.

    Each voxel keeps a weighted mean whose weight is capped, so the model follows slow
    changes (a new expression after a transition) instead of freezing on the first one.
    """

    def __init__(self, voxel_m: float, max_weight: float) -> None:
        self.voxel, self.max_weight = voxel_m, max_weight
        self.keys = np.empty(0, np.int64)
        self.data = np.empty((0, 9))      # weighted means: point (3), normal (3), color (3)
        self.weight = np.empty(0)

    def __len__(self) -> int:
        return len(self.keys)

    def _key(self, pts: np.ndarray) -> np.ndarray:
        ijk = np.floor(pts / self.voxel).astype(np.int64) + (1 << 20)
        return (ijk[:, 0] << 42) | (ijk[:, 1] << 21) | ijk[:, 2]

    def add(self, pts: np.ndarray, normals: np.ndarray, colors: np.ndarray) -> None:
        keys = np.concatenate([self.keys, self._key(pts)])
        w = np.concatenate([self.weight, np.ones(len(pts))])
        data = np.concatenate([self.data, np.concatenate([pts, normals, colors], axis=1)])
        uniq, inv = np.unique(keys, return_inverse=True)
        wsum = np.bincount(inv, w, len(uniq))
        acc = np.stack([np.bincount(inv, w * data[:, c], len(uniq)) for c in range(9)], axis=1)
        self.keys, self.data = uniq, acc / wsum[:, None]
        self.weight = np.minimum(wsum, self.max_weight)

    def points(self) -> np.ndarray:
        """(M, 3) model points in the (tracking) head frame."""
        return self.data[:, :3].copy()

    def cloud(self, min_weight: float) -> o3d.geometry.PointCloud:
        keep = self.weight >= min_weight
        d = self.data[keep]
        n = d[:, 3:6] / np.maximum(np.linalg.norm(d[:, 3:6], axis=1, keepdims=True), 1e-9)
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(d[:, :3]))
        pcd.normals = o3d.utility.Vector3dVector(n)
        pcd.colors = o3d.utility.Vector3dVector(d[:, 6:9])
        return pcd


class FrameToModelTracker:
    """Estimate cam_to_head for consecutive frames by ICP against the running :class:`PointModel`.

    Coarse-to-fine correspondence distances absorb the head motion between frames; a Tukey
    kernel ignores what the model does not explain (a changing mouth, hair, noise). Open3D's
    legacy registration is used: in 0.20 it is ~6x faster per call than the tensor one on CPU
    for clouds of this size (the tensor ICP spends ~40 ms per call in setup).
    """

    def __init__(self, voxel_m: float = 0.0025, max_corr_m: tuple[float, ...] = (0.008, 0.003),
                 min_fitness: float = 0.4, max_weight: float = 20.0) -> None:
        self.voxel = voxel_m
        self.max_corr = max_corr_m
        self.min_fitness = min_fitness
        self.model = PointModel(voxel_m, max_weight)
        self._last: np.ndarray | None = None      # cam_to_head of the last tracked frame
        self._velocity = np.eye(4)                # last inter-frame motion (constant-velocity prior)
        self._criteria = _REG.ICPConvergenceCriteria(relative_fitness=1e-6, relative_rmse=1e-6,
                                                     max_iteration=15)

    def _register(self, frame: o3d.geometry.PointCloud, target: o3d.geometry.PointCloud,
                  dist: float, init: np.ndarray) -> _REG.RegistrationResult:
        kernel = _REG.TukeyLoss(k=dist)
        return _REG.registration_icp(frame, target, dist, init,
                                     _REG.TransformationEstimationPointToPlane(kernel), self._criteria)

    def _frame_cloud(self, pts: np.ndarray, normals: np.ndarray,
                     colors: np.ndarray) -> o3d.geometry.PointCloud:
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
        pcd.normals = o3d.utility.Vector3dVector(normals)
        pcd.colors = o3d.utility.Vector3dVector(colors.astype(np.float64))
        pcd = pcd.voxel_down_sample(self.voxel)
        pcd.normalize_normals()
        return pcd

    def track(self, points_cam: np.ndarray, normals: np.ndarray, colors: np.ndarray) -> TrackResult:
        """Register one frame and fuse it into the model.

        Camera-frame points with unit normals facing the camera (see :func:`organized_normals`)
        and RGB colors in 0-1.
        """
        if len(points_cam) < 200:
            return TrackResult(None, float("nan"), 0.0)
        frame = self._frame_cloud(points_cam, normals, colors)
        if self._last is None:
            pose = np.linalg.inv(initial_head_pose(points_cam))
            self._fuse(frame, pose)
            self._last = pose
            return TrackResult(pose, 0.0, 1.0)
        target = self.model.cloud(min_weight=1.0)
        pose = self._last @ self._velocity
        result = None
        for dist in self.max_corr:
            result = self._register(frame, target, dist, pose)
            pose = np.asarray(result.transformation)
        assert result is not None
        fitness, rmse = float(result.fitness), float(result.inlier_rmse)
        if fitness < self.min_fitness:
            self._velocity = np.eye(4)
            return TrackResult(None, rmse, fitness)
        self._velocity = np.linalg.inv(self._last) @ pose
        self._last = pose
        self._fuse(frame, pose)
        return TrackResult(pose, rmse, fitness)

    def _fuse(self, frame: o3d.geometry.PointCloud, cam_to_head: np.ndarray) -> None:
        pts = transform(cam_to_head, np.asarray(frame.points))
        normals = rotate(cam_to_head[:3, :3], np.asarray(frame.normals))
        self.model.add(pts, normals, np.asarray(frame.colors))

"""The virtual device's renderer: geometry matches ground truth, TrueDepth-like noise, the script."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d
import pytest

from facestudio.capture.frame import Intrinsics
from facestudio.capture.virtual.script import EXPRESSIONS, Script
from facestudio.capture.virtual.source import SyntheticFaceSource, SyntheticView

ICT_NPZ = Path(__file__).parents[1].parent / "shared/data/ict_facekit.npz"


@pytest.fixture(scope="module")
def proc() -> SyntheticFaceSource:
    return SyntheticFaceSource.create(None, seed=3)


@pytest.fixture(scope="module")
def ict() -> SyntheticFaceSource:
    if not ICT_NPZ.is_file():
        pytest.skip(f"ICT face model not available at {ICT_NPZ}")
    return SyntheticFaceSource.create(str(ICT_NPZ), seed=1)


def _held_time(src: SyntheticFaceSource, label: str) -> tuple[float, int]:
    i = next(i for i, s in enumerate(src.script.segments) if s.label == label)
    seg = src.script.segments[i]
    return 0.5 * (seg.start + seg.end), i


def _surface_error(src: SyntheticFaceSource, view: SyntheticView, seg: int, n: int = 3000) -> np.ndarray:
    """Distances (m) from back-projected depth pixels to the ground-truth mesh for segment ``seg``."""
    truth = src.truth()
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(truth["segments"][seg]["vertices"]),
                        o3d.core.Tensor(truth["triangles"].astype(np.uint32)))
    k = view.intrinsics
    v, u = np.nonzero(view.depth_m)
    pick = np.random.default_rng(0).choice(len(u), size=min(n, len(u)), replace=False)
    u, v, z = u[pick], v[pick], view.depth_m[v[pick], u[pick]]
    cam = np.stack([(u - k.cx) / k.fx * z, -(v - k.cy) / k.fy * z, -z], axis=1)   # OpenGL axes
    pose = view.head_pose
    head = (cam - pose[:3, 3]) @ pose[:3, :3]                                      # R^T (p - t)
    return scene.compute_distance(o3d.core.Tensor(head.astype(np.float32))).numpy()


@pytest.mark.parametrize("which", ["proc", "ict"])
def test_depth_matches_ground_truth(which: str, request: pytest.FixtureRequest) -> None:
    src: SyntheticFaceSource = request.getfixturevalue(which)
    t, seg = _held_time(src, "jaw_open")
    view = src.view_at(t)
    assert view.color_bgr.shape == (480, 640, 3) and view.color_bgr.dtype == np.uint8
    assert view.depth_m.shape == (480, 640) and view.depth_m.dtype == np.float32
    assert view.head_pose.shape == (4, 4) and view.blendshapes.shape == (52,)
    valid = view.depth_m > 0
    assert valid.mean() > 0.15
    err = _surface_error(src, view, seg)
    assert np.median(err) < 0.0015 and np.quantile(err, 0.95) < 0.004, (np.median(err), np.quantile(err, 0.95))
    # The frontal face sits at selfie distance.
    verts = src.truth()["segments"][seg]["vertices"][src.truth()["face_vertex_mask"]]
    cam = verts @ view.head_pose[:3, :3].T + view.head_pose[:3, 3]
    assert 0.3 < -cam[:, 2].max() and -cam[:, 2].min() < 0.5
    k = view.intrinsics
    u = k.fx * cam[:, 0] / -cam[:, 2] + k.cx
    v = -k.fy * cam[:, 1] / -cam[:, 2] + k.cy
    assert 0 < u.min() and u.max() < k.width and 0 < v.min() and v.max() < k.height  # in frame
    # Colour: the face is lit and coloured, the background plain and dark.
    face_px = view.color_bgr[valid].astype(float)
    assert face_px.mean() > 70 and np.ptp(face_px.mean(axis=0)) > 10
    assert view.color_bgr[~valid & (view.depth_m == 0)].mean() < 70


def test_open_mouth_is_deeper_than_closed(proc: SyntheticFaceSource) -> None:
    """jawOpen must open a cavity: the ray between the lips' centres goes far behind them."""
    truth = proc.truth()
    rest = truth["segments"][0]["vertices"]
    front = np.where(truth["face_vertex_mask"], rest[:, 2], -1.0)
    upper = np.argmax(front - 100 * np.hypot(rest[:, 0], rest[:, 1] + 0.025))
    lower = np.argmax(front - 100 * np.hypot(rest[:, 0], rest[:, 1] + 0.036))
    k = proc.intrinsics
    for label, expect_open in (("jaw_open", True), ("neutral", False)):
        t, seg = _held_time(proc, label)
        verts = truth["segments"][seg]["vertices"]
        pose = proc.script.head_pose(t)
        mid = pose[:3, :3] @ (0.5 * (verts[upper] + verts[lower])) + pose[:3, 3]
        u, v = int(round(k.fx * mid[0] / -mid[2] + k.cx)), int(round(-k.fy * mid[1] / -mid[2] + k.cy))
        depth, _ = proc.render_clean(t)
        behind = depth[v, u] - (-mid[2])
        assert (behind > 0.015) == expect_open, (label, behind)


def test_noise_level_and_holes(proc: SyntheticFaceSource) -> None:
    t, _ = _held_time(proc, "neutral")
    clean, cos = proc.render_clean(t)
    noisy = proc.view_at(t).depth_m
    both = (clean > 0.37) & (clean < 0.43) & (noisy > 0)
    diff = (noisy - clean)[both]
    sigma = diff.std() * (0.4 / clean[both]).mean() ** 2
    assert 0.0007 < sigma < 0.0014, sigma
    assert abs(diff.mean()) < 3e-4
    # Silhouette: surface pixels touching background are all dropped.
    hit = clean > 0
    border = hit & ~np.pad(hit, 1)[2:, 1:-1] | hit & ~np.pad(hit, 1)[:-2, 1:-1] \
        | hit & ~np.pad(hit, 1)[1:-1, 2:] | hit & ~np.pad(hit, 1)[1:-1, :-2]
    border[[0, -1], :] = border[:, [0, -1]] = False   # the image edge is no silhouette
    assert border.sum() > 100 and (noisy[border] == 0).mean() > 0.95
    # Grazing surfaces lose most pixels, frontal ones almost none.
    inner = hit & ~border
    assert (noisy[inner & (cos < 0.1)] == 0).mean() > 0.8
    assert (noisy[inner & (cos > 0.6)] == 0).mean() < 0.05
    assert (noisy[~hit] == 0).all()


def test_noise_grows_with_distance() -> None:
    near = SyntheticFaceSource.create(None, seed=3)
    far = SyntheticFaceSource(near.face, Script(seed=3, distance_m=0.8), near.intrinsics, seed=3)
    sig = []
    for src in (near, far):
        t, _ = _held_time(src, "neutral")
        clean, cos = src.render_clean(t)
        noisy = src.view_at(t).depth_m
        ok = (clean > 0) & (noisy > 0) & (cos > 0.5)
        sig.append(((noisy - clean)[ok].std(), np.median(clean[ok])))
    (s0, z0), (s1, z1) = sig
    assert s1 / s0 == pytest.approx((z1 / z0) ** 2, rel=0.3)


def test_deterministic_and_looping(proc: SyntheticFaceSource) -> None:
    other = SyntheticFaceSource.create(None, seed=3)
    for t in (1.3, 7.77):
        a, b = proc.view_at(t), other.view_at(t)
        np.testing.assert_array_equal(a.color_bgr, b.color_bgr)
        np.testing.assert_array_equal(a.depth_m, b.depth_m)
        np.testing.assert_array_equal(a.head_pose, b.head_pose)
    a, b = proc.view_at(2.0), proc.view_at(2.0 + proc.duration)
    np.testing.assert_array_equal(a.depth_m, b.depth_m)
    assert not np.array_equal(proc.view_at(2.0).depth_m, proc.view_at(2.1).depth_m)
    s4 = SyntheticFaceSource.create(None, seed=4)
    assert not np.array_equal(s4.view_at(1.3).color_bgr, proc.view_at(1.3).color_bgr)


def test_script_segments_and_labels(proc: SyntheticFaceSource) -> None:
    truth = proc.truth()
    segs = truth["segments"]
    assert truth["source"] == "procedural" and truth["seed"] == 3
    assert len(truth["identity_weights"]) > 0
    assert {s["label"] for s in segs} == set(EXPRESSIONS) and segs[0]["label"] == "neutral"
    n_v = len(proc.face.vertices(np.zeros(52)))
    assert truth["triangles"].dtype == np.int32 and truth["face_vertex_mask"].shape == (n_v,)
    for i, s in enumerate(segs):
        assert s["end"] - s["start"] >= 2.0 and s["vertices"].shape == (n_v, 3)
        view = proc.view_at(0.5 * (s["start"] + s["end"]))
        assert view.label == s["label"] and view.segment == i
        np.testing.assert_array_equal(view.blendshapes, s["blendshapes"])
        gap = proc.view_at(s["start"] - 0.5 * proc.script.transition_s)
        assert gap.label == "transition" and gap.segment is None
    assert segs[-1]["end"] == pytest.approx(proc.duration)
    smile = next(s for s in segs if s["label"] == "smile")["blendshapes"]
    assert smile[23] > 0.5 and smile[24] > 0.5      # mouthSmileLeft/Right


def test_head_motion_range() -> None:
    script = Script(seed=0)
    ts = np.linspace(0, script.duration, 2400)
    poses = np.stack([script.head_pose(t) for t in ts])
    yaw = np.degrees(np.arctan2(poses[:, 0, 2], poses[:, 2, 2]))
    pitch = np.degrees(np.arcsin(np.clip(-poses[:, 1, 2], -1, 1)))
    assert 35 < np.abs(yaw).max() <= 41 and 15 < np.abs(pitch).max() <= 22
    step = np.abs(np.diff(yaw)).max()
    assert step < 2.0                                  # smooth: < 2 deg at ~58 samples/s
    for seg in script.segments:                        # every hold is seen from both sides
        held = (ts >= seg.start) & (ts < seg.end)
        assert yaw[held].max() > 30 and yaw[held].min() < -30, seg.label
        assert pitch[held].max() > 12 and pitch[held].min() < -12, seg.label
    np.testing.assert_allclose(script.head_pose(0.0), script.head_pose(script.duration), atol=1e-9)
    assert np.allclose(poses[:, :3, :3] @ poses[:, :3, :3].transpose(0, 2, 1), np.eye(3), atol=1e-9)


def test_intrinsics_truedepth_like(proc: SyntheticFaceSource) -> None:
    k = proc.view_at(0.0).intrinsics
    assert isinstance(k, Intrinsics) and (k.width, k.height) == (640, 480)
    assert k.fx == pytest.approx(590) and k.fy == pytest.approx(590)
    assert (k.cx, k.cy) == (319.5, 239.5)

"""Fusion: expression segments, masks, TSDF accuracy vs ground truth, registration, crash safety."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import ICT_MODEL
from facestudio.capture.take import TakeReader
from facestudio.dataset.evaluate import evaluate_take, record_synthetic_take
from facestudio.dataset.fuse import FusionCancelled, FusionConfig, fuse_take, plan_segments
from facestudio.dataset.segment import Segment
from facestudio.dataset.segmenting import SegmentingConfig, segment_take

FPS = 12.0
FRAMES = 90          # 0-7.5 s: the neutral hold (0.6-4.6 s), a transition, half of the second hold


@pytest.fixture(scope="module")
def take(tmp_path_factory) -> Path:
    """A short two-expression virtual-device take with ground truth (ICT face when available)."""
    model = ICT_MODEL if ICT_MODEL.exists() else None
    path = tmp_path_factory.mktemp("takes") / "subj" / "t1"
    return record_synthetic_take(path, FRAMES, FPS, face_model=model, seed=3, subject="subj", take="t1")


def _hold_positions(reader: TakeReader) -> dict[int, set[int]]:
    holds: dict[int, set[int]] = {}
    for i in range(len(reader)):
        seg = reader.metadata(i)["ground_truth"]["segment"]
        if seg is not None:
            holds.setdefault(seg, set()).add(i)
    return holds


def test_segmenting_multi_expression_take_by_blendshapes(take):
    reader = TakeReader(take)
    holds = _hold_positions(reader)
    assert len(holds) == 2
    spans = plan_segments(reader, FusionConfig(segmenting=SegmentingConfig(by="blendshapes")))
    assert [s.truth_segment for s in spans] == sorted(holds)
    labels = [str(x) for x in reader.attachment("ground_truth")["labels"]]
    for span in spans:
        frames = set(int(p) for p in span.positions)
        hold = holds[span.truth_segment]
        assert frames <= hold, "a segment must not contain transition frames"
        assert len(frames) >= 0.7 * len(hold)
        assert span.label == labels[span.truth_segment]
        truth = reader.attachment("ground_truth")["blendshapes"][span.truth_segment]
        assert np.abs(span.blendshapes - truth).max() < 1e-3


def test_segmenting_without_labels_splits_merges_and_names():
    dt = 1 / 30
    smile = np.zeros(52, np.float32)
    smile[[23, 24]] = 0.9                                   # mouthSmileLeft/Right
    ramp = np.linspace(0, 1, 15)[:, None]
    b = np.concatenate([np.zeros((60, 52)), ramp * smile, np.repeat(smile[None], 60, 0)]).astype(np.float32)
    b[100:104, 0] = 1.0                                     # a blink inside the smile hold
    b[:, 1] = np.linspace(0, 1, len(b))                     # gaze wandering: must be ignored
    t = np.arange(len(b)) * dt
    none = [None] * len(b)
    spans = segment_take(b, t, none, none, [], SegmentingConfig())
    assert [s.label for s in spans] == ["neutral", "mouthSmileLeft+mouthSmileRight"]
    assert spans[0].positions.max() < 60 and spans[1].positions.min() > 75
    assert not set(range(100, 104)) & set(spans[1].positions.tolist())   # blink frames dropped
    assert len(spans[1].positions) > 40                                  # ... but one segment
    named = segment_take(b, t, none, none, ["neutral", "smile"], SegmentingConfig())
    assert [s.label for s in named] == ["neutral", "smile"]
    whole = segment_take(np.full((30, 52), np.nan, np.float32), np.zeros(30), [None] * 30, [None] * 30,
                         [], SegmentingConfig())
    assert len(whole) == 1 and whole[0].label == "unlabelled" and len(whole[0].positions) == 30


def test_fusion_accuracy_with_anchor_pose(take, tmp_path):
    progress: list[dict] = []
    paths = fuse_take(take, tmp_path / "datasets", FusionConfig(max_views=24), progress=progress.append)
    assert [p.name for p in paths] == ["seg00-neutral", paths[1].name] and len(paths) == 2
    assert paths[0].parent == tmp_path / "datasets" / "subj" / "t1"
    assert progress[-1]["fraction"] == 1.0
    assert not (tmp_path / ".datasets.partial").exists()
    seg = Segment(paths[0])
    assert 20 <= len(seg) <= 24 and seg.mesh_path.is_file()
    data = seg.load_all()
    assert data["colors"].shape[1:] == (128, 128, 3)
    assert data["masks"].mean() > 0.2 and (data["depths"][data["masks"]] > 0).mean() > 0.8
    q = seg.info.quality
    assert q["pose_source"] == "anchor" and q["frames_used"] == q["frames"] and q["yaw_range_deg"]
    # Views are consistent: a view's depth back-projected with its intrinsics lands on the mesh.
    k, pose, depth = data["K"][0], data["cam_to_head"][0], data["depths"][0]
    v, u = np.nonzero(depth > 0)
    z = depth[v, u]
    pts = np.stack([(u - k[0, 2]) / k[0, 0] * z, -(v - k[1, 2]) / k[1, 1] * z, -z], 1)
    head = pts @ pose[:3, :3].T + pose[:3, 3]
    import open3d as o3d
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.io.read_triangle_mesh(str(seg.mesh_path)))
    dist = scene.compute_distance(o3d.core.Tensor(head.astype(np.float32))).numpy()
    assert np.median(dist) < 0.002

    report = evaluate_take(take, paths)
    s = report["summary"]
    assert s["gt_to_fused_observed"]["mean_mm"] < 1.0 and s["gt_to_fused_observed"]["p95_mm"] < 3.0
    assert s["fused_to_gt"]["mean_mm"] < 1.0 and s["fused_to_gt"]["p95_mm"] < 3.0
    assert report["pose"] is None
    assert all(r["label"] == r["truth_label"] for r in report["segments"])


def test_registration_without_anchor_pose(take, tmp_path):
    paths = fuse_take(take, tmp_path / "datasets", FusionConfig(use_anchor_pose=False, max_views=16))
    assert len(paths) == 2
    assert Segment(paths[0]).info.quality["pose_source"] == "registration"
    assert Segment(paths[0]).info.quality["registration_rmse_mm"] < 2.0
    report = evaluate_take(take, paths)
    assert report["pose"]["rotation_mean_deg"] < 1.0
    assert report["pose"]["translation_mean_mm"] < 2.0
    assert report["summary"]["gt_to_fused_observed"]["mean_mm"] < 1.5


def test_cancel_leaves_nothing_and_refusion_replaces(take, tmp_path):
    out = tmp_path / "datasets"
    cancel = threading.Event()

    def stop_soon(p: dict) -> None:
        if p["frame"] == 5:
            cancel.set()

    with pytest.raises(FusionCancelled):
        fuse_take(take, out, FusionConfig(max_views=4), progress=stop_soon, cancel=cancel)
    assert not out.exists() or not any(out.rglob("segment.json"))
    assert not (tmp_path / ".datasets.partial").exists()
    first = fuse_take(take, out, FusionConfig(max_views=4, view_size=64))
    second = fuse_take(take, out, FusionConfig(max_views=4, view_size=32))
    assert first == second
    assert Segment(second[0]).load_view(0)[0].shape == (32, 32, 3)
    assert sorted(p.name for p in (out / "subj" / "t1").iterdir()) == [p.name for p in second]


def test_fuse_cli(take, library, capsys):
    from facestudio.cli.main import main

    assert main(["fuse", str(take), "--json", "--view-size", "48"]) == 0
    result = json.loads(capsys.readouterr().out)
    segs = result["takes"][0]["segments"]
    assert len(segs) == 2 and Path(segs[0]["path"]).is_relative_to(library / "datasets")
    assert main(["fuse", "--subject", "nobody", "--json"]) == 2
    assert "no takes found" in json.loads(capsys.readouterr().out)["error"]


def test_min_confidence_comes_from_the_take_unless_configured_or_off():
    from types import SimpleNamespace

    from facestudio.dataset.fuse import min_confidence

    def reader(**manifest):
        return SimpleNamespace(manifest=manifest, path=Path("take"))
    assert min_confidence(reader(min_depth_confidence=1), FusionConfig()) == 1
    assert min_confidence(reader(), FusionConfig()) == 2                  # ARKit's "high"
    assert min_confidence(reader(min_depth_confidence=1), FusionConfig(min_confidence=2)) == 2
    assert min_confidence(reader(min_depth_confidence=1), FusionConfig(use_confidence=False)) is None
    for bad in (3, -1, "2", True, 1.0):
        with pytest.raises(ValueError, match="take: manifest min_depth_confidence must be"):
            min_confidence(reader(min_depth_confidence=bad), FusionConfig())
    with pytest.raises(ValueError, match="FusionConfig.min_confidence must be"):
        min_confidence(reader(), FusionConfig(min_confidence=5))


def test_eval_confidence_cli_shows_the_filter_removes_flying_pixels(capsys):
    from facestudio.cli.main import main

    assert main(["eval", "confidence", "--frames", "60", "--anchor-only", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["ok"], result
    levels = result["depth_by_confidence"]
    assert sum(v["fraction_of_depth_pixels"] for v in levels.values()) == pytest.approx(1, abs=1e-3)
    assert levels["0"]["mean_abs_error_mm_on_face"] > 10 * levels["2"]["mean_abs_error_mm_on_face"]
    runs = {r["min_confidence"]: r["summary"] for r in result["runs"].values()}
    assert set(runs) == {None, 1, 2}
    # Flying pixels fused as surface: all depth is worse than either rule, both ways.
    for level in (1, 2):
        assert runs[level]["fused_to_gt"]["mean_mm"] < 0.5 * runs[None]["fused_to_gt"]["mean_mm"]
    assert runs[1]["gt_to_fused_observed"]["mean_mm"] < runs[None]["gt_to_fused_observed"]["mean_mm"]


def test_a_mesh_whose_colours_overshoot_is_saved_clipped_and_quietly(tmp_path, capfd):
    """Blended colours can overshoot 1.0 by rounding; Open3D would clamp them with a warning on
    stdout, which broke `eval expression --json`."""
    import open3d as o3d

    from facestudio.dataset.tsdf import save_mesh_ply

    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(np.eye(3)), o3d.utility.Vector3iVector([[0, 1, 2]]))
    mesh.vertex_colors = o3d.utility.Vector3dVector([[1.02, 0.5, -0.01], [0.2, 0.3, 0.4], [1.0, 1.0, 1.0]])
    save_mesh_ply(mesh, tmp_path / "mesh.ply")
    assert capfd.readouterr().out == ""
    colors = np.asarray(o3d.io.read_triangle_mesh(str(tmp_path / "mesh.ply")).vertex_colors)
    np.testing.assert_allclose(colors, [[1.0, 0.5, 0.0], [0.2, 0.3, 0.4], [1.0, 1.0, 1.0]], atol=1 / 255)

"""Export: nerfstudio transforms.json layout and mesh files, each read back."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
import pytest
from scipy.spatial import cKDTree

from facestudio.capture.frame import Intrinsics
from facestudio.dataset.segment import MESH_FILE, SegmentInfo, SegmentView, SegmentWriter
from facestudio.export.mesh import write_mesh
from facestudio.export.nerfstudio import export_nerfstudio


def _mesh() -> o3d.geometry.TriangleMesh:
    mesh = o3d.geometry.TriangleMesh.create_sphere(0.08, resolution=12)
    rng = np.random.default_rng(0)
    mesh.vertex_colors = o3d.utility.Vector3dVector(rng.random((len(mesh.vertices), 3)))
    return mesh


@pytest.fixture
def segment(tmp_path) -> Path:
    """A small hand-made segment: 3 views with distinct poses and intrinsics, and a mesh."""
    path = tmp_path / "datasets" / "subj" / "t1" / "seg00-smile"
    writer = SegmentWriter(path)
    rng = np.random.default_rng(1)
    views = []
    for i in range(3):
        pose = np.eye(4)
        angle = 0.2 * (i - 1)
        pose[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
        pose[:3, 3] = [0.4 * np.sin(angle), 0.01, 0.4 * np.cos(angle)]
        view = SegmentView(10 + i, Intrinsics(300.0 + i, 301.0 + i, 31.5, 32.0, 64, 64), pose)
        depth = np.where(rng.random((64, 64)) > 0.3, 0.4 + 0.01 * i, 0.0).astype(np.float32)
        writer.add_view(view, rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), depth > 0, depth)
        views.append(view)
    o3d.io.write_triangle_mesh(str(path / MESH_FILE), _mesh(), write_vertex_colors=True)
    writer.finish(SegmentInfo("subj", "t1", "seg00-smile", "smile", [0.0] * 52, [10, 11, 12], views))
    return path


def test_nerfstudio_export_reads_back(segment, tmp_path):
    out = tmp_path / "ns"
    summary = export_nerfstudio(segment, out)
    assert summary["frames"] == 3
    doc = json.loads((out / "transforms.json").read_text())
    assert doc["camera_model"] == "PINHOLE" and doc["depth_unit_scale_factor"] == 1e-3
    meta = json.loads((segment / "segment.json").read_text())
    for frame, view in zip(doc["frames"], meta["views"]):
        img = cv2.imread(str(out / frame["file_path"]), cv2.IMREAD_UNCHANGED)
        depth = cv2.imread(str(out / frame["depth_file_path"]), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(out / frame["mask_path"]), cv2.IMREAD_UNCHANGED)
        assert img.shape == (frame["h"], frame["w"], 3) == (64, 64, 3)
        assert depth.dtype == np.uint16 and depth.shape == (64, 64)
        assert mask.ndim == 2 and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask > 0, depth > 0)
        assert set(np.unique(depth[depth > 0]).tolist()) == {400 + 10 * (view["index"] - 10)}
        k = view["intrinsics"]
        assert (frame["fl_x"], frame["fl_y"]) == (k["fx"], k["fy"])
        assert (frame["cx"], frame["cy"]) == (k["cx"] + 0.5, k["cy"] + 0.5)   # nerfstudio pixel centres
        np.testing.assert_allclose(np.array(frame["transform_matrix"]).reshape(16), view["cam_to_head"])
    ply = o3d.io.read_point_cloud(str(out / doc["ply_file_path"]))
    assert len(ply.points) == len(_mesh().vertices)
    with pytest.raises(FileExistsError):
        export_nerfstudio(segment, out)


@pytest.mark.parametrize("suffix", [".ply", ".obj", ".stl", ".glb"])
def test_mesh_export_reads_back(tmp_path, suffix):
    mesh = _mesh()
    path = write_mesh(mesh, tmp_path / f"face{suffix}")
    if suffix == ".glb":
        trimesh = pytest.importorskip("trimesh")
        back = trimesh.load(path, force="mesh", process=False)
        np.testing.assert_allclose(back.vertices, np.asarray(mesh.vertices), atol=1e-6)
        assert len(back.faces) == len(mesh.triangles)
        np.testing.assert_allclose(back.visual.vertex_colors[:, :3] / 255.0, np.asarray(mesh.vertex_colors),
                                   atol=1 / 255)
        return
    back = o3d.io.read_triangle_mesh(str(path))
    assert len(back.triangles) == len(mesh.triangles)
    if suffix == ".stl":
        return          # STL has no shared vertices and no colors
    assert len(back.vertices) == len(mesh.vertices) and back.has_vertex_colors()
    # Readers may reorder vertices: match each vertex to the nearest one read back.
    dist, match = cKDTree(np.asarray(back.vertices)).query(np.asarray(mesh.vertices))
    assert dist.max() < 1e-5
    np.testing.assert_allclose(np.asarray(back.vertex_colors)[match], np.asarray(mesh.vertex_colors),
                               atol=1 / 255 + 1e-6)


def test_mesh_export_rejects_unknown_format_and_empty_mesh(tmp_path):
    with pytest.raises(ValueError, match="unsupported"):
        write_mesh(_mesh(), tmp_path / "face.fbx")
    with pytest.raises(ValueError, match="empty"):
        write_mesh(o3d.geometry.TriangleMesh(), tmp_path / "face.ply")


def test_export_cli(segment, tmp_path, monkeypatch, capsys):
    from facestudio.cli.main import main

    monkeypatch.setenv("FACESTUDIO_HOME", str(tmp_path))     # segment lives under tmp_path/datasets
    assert main(["export", "mesh", "subj/t1/seg00-smile", str(tmp_path / "m.obj"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["triangles"] == len(_mesh().triangles)
    assert main(["export", "nerfstudio", str(segment), str(tmp_path / "ns"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 3
    assert main(["export", "mesh", "no/such/segment", str(tmp_path / "x.ply"), "--json"]) == 2
    assert "not a fused segment" in json.loads(capsys.readouterr().out)["error"]

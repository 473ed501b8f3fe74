"""Record3D (.r3d) and Stray Scanner imports, from files these tests write to the public formats."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import cv2
import lzfse
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from facestudio.capture.take import TakeReader
from facestudio.cli.main import main
from facestudio.library.catalog import Catalog
from facestudio.library.importers import detect_format, import_capture
from facestudio.library.importers.record3d import parse_metadata
from facestudio.library.importers.stray import parse_camera_matrix, parse_odometry
from facestudio.paths import take_dir

W, H, DW, DH = 64, 48, 32, 24
K = np.array([[60.0, 0.0, 31.0], [0.0, 61.0, 24.5], [0.0, 0.0, 1.0]])


def color_image(i: int) -> np.ndarray:
    """A smooth image (survives JPEG and MPEG-4 well enough to compare)."""
    y, x = np.mgrid[0:H, 0:W]
    img = np.stack([x * 3 + i * 10, y * 4, np.full_like(x, 200 - i * 20)], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def depth_map(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    depth = (0.35 + 0.05 * rng.random((DH, DW))).astype(np.float32)
    depth[0, :3] = np.nan  # invalid pixels
    return depth


def confidence_map(i: int) -> np.ndarray:
    """ARKit levels 0/1/2 in a pattern that differs per frame."""
    y, x = np.mgrid[0:DH, 0:DW]
    return ((x + 2 * y + i) % 3).astype(np.uint8)


def write_r3d(path: Path, frames: int = 4, *, depth_size: bool = True, poses=None,
              timestamps: bool = True, entries: dict[str, bytes | None] | None = None) -> dict:
    """A .r3d following the public format: ZIP, metadata JSON, rgbd/N.jpg, rgbd/N.depth (LZFSE).

    ``entries`` replaces (bytes) or drops (None) entries, to make corrupt files.
    """
    meta = {"w": W, "h": H, "K": K.flatten(order="F").tolist(), "fps": 30,
            "poses": poses if poses is not None else [[0, 0, 0, 1, 0, 0, 0]] * frames,
            "initPose": [0, 0, 0, 1, 0, 0, 0], "cameraType": 1}
    if depth_size:
        meta.update(dw=DW, dh=DH)
    if timestamps:
        meta["frameTimestamps"] = [100.0 + i / 30 for i in range(frames)]
    content: dict[str, bytes | None] = {"metadata": json.dumps(meta).encode(), "icon": b"\x89PNG"}
    for i in range(frames):
        content[f"rgbd/{i}.jpg"] = cv2.imencode(".jpg", color_image(i))[1].tobytes()
        content[f"rgbd/{i}.depth"] = lzfse.compress(depth_map(i).tobytes())
        content[f"rgbd/{i}.conf"] = lzfse.compress(confidence_map(i).tobytes())
    content.update(entries or {})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in content.items():
            if data is not None:
                zf.writestr(name, data)
    return content


def assert_nothing_imported(library: Path, subject: str = "alice", take: str = "t1") -> None:
    assert not take_dir(library, subject, take).exists()
    takes = library / "takes"
    assert not takes.exists() or list(takes.rglob("*")) == []  # no staging leftovers
    assert Catalog(library).list()["takes"] == []


def test_record3d_front_camera_import(library: Path, tmp_path: Path) -> None:
    src = tmp_path / "face.r3d"
    content = write_r3d(src)
    assert detect_format(src) == "record3d"
    info = import_capture(src, library, "alice", "t1", "smile")
    assert info["format"] == "record3d" and info["frames"] == 4 and info["status"] == "complete"
    assert info["depth_resolution"] == [DW, DH] and info["attachments"] == []

    reader = TakeReader(take_dir(library, "alice", "t1"))
    assert reader.manifest["source"] == "record3d" and reader.manifest["labels"] == ["smile"]
    assert reader.manifest["device"]["camera"] == "front TrueDepth"
    np.testing.assert_allclose(reader.timestamps(), [100 + i / 30 for i in range(4)])
    for i, frame in enumerate(reader.iter_frames()):
        assert frame.color_jpeg == content[f"rgbd/{i}.jpg"]  # stored byte for byte
        c = frame.color_intrinsics
        assert (c.fx, c.fy, c.cx, c.cy, c.width, c.height) == (60.0, 61.0, 31.0, 24.5, W, H)
        assert frame.depth_intrinsics == c.scaled(DW, DH)
        np.testing.assert_array_equal(frame.depth_m(), np.nan_to_num(depth_map(i), nan=0.0))
        np.testing.assert_array_equal(frame.depth_confidence, confidence_map(i))
        assert frame.head_pose is None and frame.blendshapes is None
    assert reader.manifest["min_depth_confidence"] == 2     # Record3D's readers keep level 2
    assert info["has_confidence"] == 4

    [row] = Catalog(library).list()["takes"]
    assert (row["subject"], row["take"], row["source"], row["frames"]) == ("alice", "t1",
                                                                           "record3d", 4)


def test_record3d_old_file_without_depth_size_or_timestamps(library: Path, tmp_path: Path) -> None:
    src = tmp_path / "old.r3d"
    write_r3d(src, 3, depth_size=False, timestamps=False)
    info = import_capture(src, library, "alice", "t1")
    assert info["depth_resolution"] == [DW, DH]  # inferred from the RGB aspect
    reader = TakeReader(take_dir(library, "alice", "t1"))
    np.testing.assert_allclose(reader.timestamps(), [0, 1 / 30, 2 / 30])
    np.testing.assert_array_equal(reader.frame(2).depth_m(), np.nan_to_num(depth_map(2)))


def test_record3d_back_camera_poses_are_kept_but_never_head_poses(library: Path,
                                                                  tmp_path: Path) -> None:
    half = np.sqrt(0.5)
    poses = [[0, 0, 0, 1, 0.1 * i, 0, 0] for i in range(2)] + [[0, half, 0, half, 0, 0, 1]]
    src = tmp_path / "lidar.r3d"
    write_r3d(src, 3, poses=poses)
    import_capture(src, library, "alice", "t1")
    reader = TakeReader(take_dir(library, "alice", "t1"))
    assert all(f.head_pose is None for f in reader.iter_frames())
    arrays = reader.attachment("camera_poses")
    assert arrays["index"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(arrays["cam_to_world"][1][:3, 3], [0.1, 0, 0])
    rot_y90 = np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]])
    np.testing.assert_allclose(arrays["cam_to_world"][2][:3, :3], rot_y90, atol=1e-12)
    np.testing.assert_allclose(arrays["cam_to_world"][2][:3, 3], [0, 0, 1])


def _cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


CORRUPT_R3D = {
    "not a zip": (None, "not a valid ZIP archive"),
    "missing metadata": ({"metadata": None}, "metadata is missing"),
    "metadata not JSON": ({"metadata": b"{\"w\": 64,"}, "metadata: not valid JSON"),
    "metadata without K": ({"metadata": json.dumps({"w": 64, "h": 48, "fps": 30}).encode()},
                           "metadata: K must be a list"),
    "truncated depth": ("truncate-depth", r"rgbd/2\.depth: (corrupt or truncated|decompressed|depth has)"),
    "depth of wrong size": ({"rgbd/1.depth": lzfse.compress(b"\0" * 40)},
                            r"rgbd/1\.depth: depth has 10 values, metadata says 32x24"),
    "depth missing": ({"rgbd/3.depth": None}, r"rgbd/3\.depth is missing"),
    "corrupt jpeg": ({"rgbd/0.jpg": b"\xff\xd8garbage"}, r"rgbd/0\.jpg: not a readable JPEG"),
    "confidence of wrong size": ({"rgbd/2.conf": lzfse.compress(b"\1" * 10)},
                                 r"rgbd/2\.conf: confidence has 10 values, the depth map 32x24"),
    "confidence not a level": ({"rgbd/1.conf": lzfse.compress(b"\7" * (DW * DH))},
                               r"rgbd/1\.conf: confidence level 7 is not an ARKit level"),
    "corrupt confidence": ({"rgbd/0.conf": b"bvx2garbage"}, r"rgbd/0\.conf: corrupt or truncated"),
    "no frames": ("no-frames", "no frames"),
    "truncated file": ("truncate-file", "not a valid ZIP archive"),
}


@pytest.mark.parametrize("case", list(CORRUPT_R3D))
def test_corrupt_record3d_gives_a_clear_error_and_leaves_nothing(library: Path, tmp_path: Path,
                                                                 case: str) -> None:
    change, message = CORRUPT_R3D[case]
    src = tmp_path / "bad.r3d"
    if change is None:
        src.write_bytes(b"PK\x03\x04 definitely not a zip archive" * 10)
    elif change == "truncate-depth":
        good = write_r3d(tmp_path / "good.r3d")
        write_r3d(src, entries={"rgbd/2.depth": _cut(good["rgbd/2.depth"])})
    elif change == "no-frames":
        write_r3d(src, entries={f"rgbd/{i}.jpg": None for i in range(4)})
    elif change == "truncate-file":
        write_r3d(tmp_path / "good.r3d")
        src.write_bytes(_cut((tmp_path / "good.r3d").read_bytes()))
    else:
        write_r3d(src, entries=change)
    with pytest.raises(ValueError, match=message) as err:
        import_capture(src, library, "alice", "t1")
    assert str(src) in str(err.value)
    assert_nothing_imported(library)


def test_import_refuses_an_existing_take_and_bad_names(library: Path, tmp_path: Path) -> None:
    src = tmp_path / "face.r3d"
    write_r3d(src, 2)
    import_capture(src, library, "alice", "t1")
    before = sorted(p.name for p in take_dir(library, "alice", "t1").rglob("*"))
    with pytest.raises(FileExistsError, match="already exists"):
        import_capture(src, library, "alice", "t1")
    assert sorted(p.name for p in take_dir(library, "alice", "t1").rglob("*")) == before
    with pytest.raises(ValueError, match="invalid take name"):
        import_capture(src, library, "alice", "../escape")
    with pytest.raises(ValueError, match="not a Record3D export"):
        detect_format(_touch(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match="not a Stray Scanner folder"):
        detect_format(tmp_path)


def _touch(path: Path) -> Path:
    path.write_text("hello")
    return path


# ------------------------------------------------------------------------- Stray Scanner


def stray_odometry_row(timestamp: float, frame: int, arkit_cam_to_world: np.ndarray) -> str:
    """One odometry.csv line the way the app's OdometryEncoder writes it: the position of ARKit's
    camera.transform and the quaternion q_WA * q_AC, q_AC = 180 degrees about x (ix=1, r=0)."""
    x, y, z = arkit_cam_to_world[:3, 3]
    q_wa = Rotation.from_matrix(arkit_cam_to_world[:3, :3])
    q = (q_wa * Rotation.from_quat([1.0, 0.0, 0.0, 0.0])).as_quat()   # scipy: (x, y, z, w)
    return f"{timestamp}, {frame:06d}, {x}, {y}, {z}, {q[0]}, {q[1]}, {q[2]}, {q[3]}"


def write_stray(folder: Path, frames: int = 5, video_frames: int | None = None,
                odometry: bool = True) -> None:
    """A Stray Scanner folder: rgb.mp4, depth/NNNNNN.png (uint16 mm), camera_matrix.csv,
    odometry.csv (ARKit camera i at x = 0.01 i, z = 0.5, axes aligned with the world), imu.csv."""
    (folder / "depth").mkdir(parents=True)
    (folder / "confidence").mkdir()
    video = cv2.VideoWriter(str(folder / "rgb.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 60, (W, H))
    assert video.isOpened(), "OpenCV cannot write mp4v here"
    for i in range(frames if video_frames is None else video_frames):
        video.write(color_image(i))
    video.release()
    for i in range(frames):
        mm = np.nan_to_num(depth_map(i) * 1000).astype(np.uint16)
        cv2.imwrite(str(folder / "depth" / f"{i:06d}.png"), mm)
        cv2.imwrite(str(folder / "confidence" / f"{i:06d}.png"), confidence_map(i))
    (folder / "camera_matrix.csv").write_text("\n".join(",".join(f"{v:.6f}" for v in row)
                                                        for row in K) + "\n")
    if odometry:
        lines = ["timestamp, frame, x, y, z, qx, qy, qz, qw"]
        lines += [stray_odometry_row(5 + i / 60, i, _translation(0.01 * i, 0.0, 0.5))
                  for i in range(frames)]
        (folder / "odometry.csv").write_text("\n".join(lines) + "\n")
    (folder / "imu.csv").write_text("timestamp, a_x, a_y, a_z, alpha_x, alpha_y, alpha_z\n")


def _translation(x: float, y: float, z: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = x, y, z
    return m


def test_stray_odometry_written_the_apps_way_reads_as_the_arkit_pose() -> None:
    # A camera turned 30 degrees about y and tilted 20 degrees down, 1.2 m up, in ARKit's world.
    arkit = _translation(0.3, 1.2, -0.4)
    arkit[:3, :3] = Rotation.from_euler("YX", [30, -20], degrees=True).as_matrix()
    text = "timestamp, frame, x, y, z, qx, qy, qz, qw\n" + stray_odometry_row(1.5, 7, arkit)
    [(t, pose)] = parse_odometry(text).values()
    assert t == 1.5
    np.testing.assert_allclose(pose, arkit, atol=1e-9)   # OpenGL axes, as camera_poses promises

    # The raw row is an OpenCV-axes pose (what Stray's own viewer and Open3D use): a world point
    # in front of the camera projects to the same pixel through the row with OpenCV's pinhole
    # and through the imported pose with OpenGL's (camera looking down -Z, y up).
    row = text.splitlines()[1].split(",")
    cv_pose = np.eye(4)
    cv_pose[:3, :3] = Rotation.from_quat([float(v) for v in row[5:9]]).as_matrix()
    cv_pose[:3, 3] = [float(v) for v in row[2:5]]
    point = arkit @ np.array([0.05, -0.02, -0.8, 1.0])          # 0.8 m in front, off-centre
    x, y, z = (np.linalg.inv(cv_pose) @ point)[:3]
    assert z > 0                                                # in front for OpenCV: +Z
    cv_pixel = K[0, 0] * x / z + K[0, 2], K[1, 1] * y / z + K[1, 2]
    x, y, z = (np.linalg.inv(pose) @ point)[:3]
    assert z < 0                                                # in front for OpenGL: -Z
    gl_pixel = K[0, 0] * x / -z + K[0, 2], K[1, 2] - K[1, 1] * y / -z
    np.testing.assert_allclose(gl_pixel, cv_pixel, atol=1e-9)
    np.testing.assert_allclose(cv_pixel, (K[0, 0] * 0.05 / 0.8 + K[0, 2], K[1, 1] * 0.02 / 0.8 + K[1, 2]))


def test_stray_scanner_import(library: Path, tmp_path: Path) -> None:
    src = tmp_path / "stray"
    write_stray(src)
    assert detect_format(src) == "stray"
    info = import_capture(src, library, "bob", "scan", "neutral")
    assert info["format"] == "stray" and info["frames"] == 5
    assert info["color_resolution"] == [W, H] and info["depth_resolution"] == [DW, DH]
    reader = TakeReader(take_dir(library, "bob", "scan"))
    assert reader.manifest["source"] == "stray"
    np.testing.assert_allclose(reader.timestamps(), [5 + i / 60 for i in range(5)], atol=1e-6)
    for i, frame in enumerate(reader.iter_frames()):
        diff = np.abs(frame.color().astype(int) - color_image(i).astype(int)).mean()
        assert diff < 8, f"frame {i} color differs by {diff}"
        expected_m = np.nan_to_num(depth_map(i) * 1000).astype(np.uint16) / np.float32(1000)
        np.testing.assert_allclose(frame.depth_m(), expected_m, rtol=0, atol=1e-6)
        c = frame.color_intrinsics
        assert (c.fx, c.fy, c.cx, c.cy) == (60.0, 61.0, 31.0, 24.5)
        assert frame.depth_intrinsics == c.scaled(DW, DH) and frame.head_pose is None
        np.testing.assert_array_equal(frame.depth_confidence, confidence_map(i))
    assert reader.manifest["min_depth_confidence"] == 1     # Stray's visualiser keeps >= 1
    poses = reader.attachment("camera_poses")
    np.testing.assert_allclose(poses["cam_to_world"][3], _translation(0.03, 0, 0.5), atol=1e-12)
    assert Catalog(library).take("bob", "scan")["labels"] == ["neutral"]


def test_stray_without_odometry_uses_the_video_rate(library: Path, tmp_path: Path) -> None:
    src = tmp_path / "stray"
    write_stray(src, 3, odometry=False)
    (src / "confidence" / "000001.png").unlink()      # the app may miss a map: that frame has none
    import_capture(src, library, "bob", "scan")
    reader = TakeReader(take_dir(library, "bob", "scan"))
    np.testing.assert_allclose(reader.timestamps(), [0, 1 / 60, 2 / 60])
    assert reader.attachment_names() == []
    assert [f.depth_confidence is None for f in reader.iter_frames()] == [False, True, False]


def _break_stray(folder: Path, case: str) -> None:
    if case == "truncated video":
        (folder / "rgb.mp4").unlink()
        video = cv2.VideoWriter(str(folder / "rgb.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 60,
                                (W, H))
        for i in range(2):
            video.write(color_image(i))
        video.release()
    elif case == "video not a video":
        (folder / "rgb.mp4").write_bytes(b"\0" * 1000)
    elif case == "no camera matrix":
        (folder / "camera_matrix.csv").unlink()
    elif case == "bad camera matrix":
        (folder / "camera_matrix.csv").write_text("1,2\n3,4\n")
    elif case == "bad depth png":
        (folder / "depth" / "000003.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    elif case == "8-bit depth":
        cv2.imwrite(str(folder / "depth" / "000001.png"), np.zeros((DH, DW), np.uint8))
    elif case == "bad odometry":
        with open(folder / "odometry.csv", "a") as f:
            f.write("7.0, 9, x, 0, 0, 0, 0, 0, 1\n")
    elif case == "confidence of wrong size":
        cv2.imwrite(str(folder / "confidence" / "000002.png"), np.zeros((DH, DW + 1), np.uint8))
    elif case == "confidence not a level":
        cv2.imwrite(str(folder / "confidence" / "000001.png"), np.full((DH, DW), 255, np.uint8))
    elif case == "odometry row missing":
        lines = (folder / "odometry.csv").read_text().splitlines()
        (folder / "odometry.csv").write_text("\n".join(lines[:-1]) + "\n")


STRAY_ERRORS = {
    "truncated video": r"rgb\.mp4: the video ends after 2 frames",
    "video not a video": r"rgb\.mp4: (cannot open the video|the video ends after 0)",
    "no camera matrix": r"camera_matrix\.csv is missing",
    "bad camera matrix": r"camera_matrix\.csv: expected 3 rows",
    "bad depth png": r"000003\.png: not a readable PNG",
    "8-bit depth": r"000001\.png: expected a 16-bit",
    "bad odometry": r"odometry\.csv line 7: x must be a number|odometry\.csv line 7: pose",
    "odometry row missing": r"odometry\.csv: no row for frame 4",
    "confidence of wrong size": r"000002\.png: confidence map is uint8 \(24, 33\), the depth map is "
                                r"\(24, 32\)",
    "confidence not a level": r"000001\.png: confidence level 255 is not an ARKit level",
}


@pytest.mark.parametrize("case", list(STRAY_ERRORS))
def test_corrupt_stray_gives_a_clear_error_and_leaves_nothing(library: Path, tmp_path: Path,
                                                              case: str) -> None:
    src = tmp_path / "stray"
    write_stray(src)
    _break_stray(src, case)
    with pytest.raises(ValueError, match=STRAY_ERRORS[case]):
        import_capture(src, library, "alice", "t1")
    assert_nothing_imported(library)


def test_cli_import(library: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "face.r3d"
    write_r3d(src, 2)
    assert main(["import", str(src), "--subject", "alice", "--take", "t1", "--expression",
                 "smile", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["ok"] and result["format"] == "record3d" and result["frames"] == 2
    bad = tmp_path / "bad.r3d"
    bad.write_bytes(b"nope")
    assert main(["import", str(bad), "--subject", "alice", "--take", "t2", "--json"]) == 2
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not result["ok"] and "not a valid ZIP archive" in result["error"]


# ------------------------------------------------------------------------- fuzzing

_json_scalars = st.none() | st.booleans() | st.integers(-10**20, 10**20) | \
    st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
_json_values = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=10)
                            | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                            max_leaves=30)
_numbers = st.integers(-100, 5000) | st.floats(-1e6, 1e6) | \
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e300])
_VALID = {"w": W, "h": H, "K": K.flatten(order="F").tolist(), "fps": 30, "dw": DW, "dh": DH,
          "poses": [[0, 0, 0, 1, 0, 0, 0]], "frameTimestamps": [0.0]}
_fuzzed_value = _numbers | _json_values | st.lists(_numbers, min_size=6, max_size=10) \
    | st.lists(st.lists(_numbers, min_size=6, max_size=8), max_size=3)
# Valid metadata with a key or two dropped or replaced: examples get past the first checks.
_metadata = st.builds(lambda drop, fuzz: {**{k: v for k, v in _VALID.items() if k not in drop},
                                          **fuzz},
                      st.sets(st.sampled_from(sorted(_VALID)), max_size=1),
                      st.dictionaries(st.sampled_from(sorted(_VALID)), _fuzzed_value, max_size=2))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meta=_metadata)
def test_fuzz_record3d_metadata_gives_valid_metadata_or_a_clear_error(meta: dict) -> None:
    raw = json.dumps(meta, allow_nan=True).encode()
    try:
        parsed = parse_metadata(raw, "fuzz.r3d: metadata")
    except ValueError as exc:
        assert str(exc).startswith("fuzz.r3d: metadata: ")
        return
    c = parsed.color
    assert c.fx > 0 and c.fy > 0 and np.isfinite([c.cx, c.cy]).all()
    assert 1 <= c.width <= 16384 and 1 <= c.height <= 16384
    assert parsed.fps is not None or parsed.timestamps is not None
    if parsed.cam_to_world is not None:
        assert np.isfinite(parsed.cam_to_world).all()
    if parsed.depth_size is not None:
        assert min(parsed.depth_size) >= 1


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200))
def test_fuzz_record3d_metadata_bytes(raw: bytes) -> None:
    try:
        parse_metadata(raw, "m")
    except ValueError as exc:
        assert str(exc).startswith("m: ")


_csv_cell = st.sampled_from(["0", "1.5", "-2", "nan", "inf", "x", "", " 3 ", "1e400"])


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.lists(_csv_cell, max_size=10), max_size=6))
def test_fuzz_stray_csvs(rows: list[list[str]]) -> None:
    text = "\n".join(",".join(r) for r in rows)
    try:
        K_ = parse_camera_matrix(text, "cm")
        assert K_.shape == (3, 3) and np.isfinite(K_).all()
    except ValueError as exc:
        assert str(exc).startswith("cm")
    header = "timestamp, frame, x, y, z, qx, qy, qz, qw\n"
    try:
        for t, pose in parse_odometry(header + text, "odo").values():
            assert np.isfinite(t) and np.isfinite(pose).all()
    except ValueError as exc:
        assert str(exc).startswith("odo")

"""Takes on disk: round trip, ordering, a recorder killed with SIGKILL, recovery, hostile files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facestudio.capture.frame import EncodedDepth, Frame, Intrinsics
from facestudio.capture.take import (FRAMES, MANIFEST, TakeError, TakeReader, TakeWriter,
                                     recover_take)

REPO = Path(__file__).resolve().parents[1]
COLOR_K = Intrinsics(60.0, 61.0, 31.5, 23.5, 64, 48)
DEPTH_K = Intrinsics(30.0, 30.5, 15.5, 11.5, 32, 24)


def make_frame(index: int) -> Frame:
    """Deterministic in ``index`` (so a killed writer's output can be checked) and varied:
    every optional field is absent on some frames, both depth dtypes and codecs occur."""
    rng = np.random.default_rng(index)
    jpeg = cv2.imencode(".jpg", rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))[1].tobytes()
    depth = confidence = None
    if index % 3 != 2:
        d = rng.uniform(0.25, 0.6, (24, 32)).astype(np.float32)
        d[0, :5] = 0.0
        depth = EncodedDepth.encode(d, dtype="float16" if index % 2 else "float32",
                                    codec="zlib" if index % 4 < 2 else "raw")
        if index % 3 == 0:
            confidence = rng.integers(0, 3, (24, 32), dtype=np.uint8)
    pose = None
    if index % 5 != 3:
        pose = np.eye(4)
        pose[:3, 3] = rng.normal(0.0, 0.05, 3) + [0.0, 0.0, -0.4]
    return Frame(
        index=index, timestamp=100.0 + index / 30.0, color_jpeg=jpeg, color_intrinsics=COLOR_K,
        depth=depth, depth_intrinsics=DEPTH_K if depth is not None else None, head_pose=pose,
        blendshapes=rng.uniform(0, 1, 52).astype(np.float32) if index % 5 != 4 else None,
        face_mesh=rng.normal(size=(20, 3)).astype(np.float32) if index % 2 == 0 else None,
        ground_truth={"expression": "smile", "jaw": index / 7} if index % 4 == 0 else None,
        depth_confidence=confidence)


def assert_same_frame(got: Frame, want: Frame) -> None:
    assert got.index == want.index
    assert got.timestamp == want.timestamp
    assert got.color_jpeg == want.color_jpeg
    assert got.color_intrinsics == want.color_intrinsics
    assert got.depth == want.depth  # the exact bytes and encoding the device sent
    assert got.depth_intrinsics == want.depth_intrinsics
    for name in ("head_pose", "blendshapes", "face_mesh", "depth_confidence"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert got.ground_truth == want.ground_truth


def write_take(path: Path, indices: list[int], close: bool = True) -> list[Frame]:
    frames = [make_frame(i) for i in indices]
    w = TakeWriter(path, {"subject": "alice", "take": "smile-01", "labels": ["smile"],
                          "device": {"name": "virtual", "model": "synthetic"}})
    for f in frames:
        w.append(f, received=1.7e9 + f.timestamp)
    if close:
        w.close()
    return frames


def simulate_crash(path: Path) -> None:
    """Put a closed take back into the state a killed recorder leaves: status "recording"."""
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["status"] = "recording"
    (path / MANIFEST).write_text(json.dumps(manifest))


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    path = tmp_path / "take"
    indices = [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]  # 6 skipped by the device
    frames = [make_frame(i) for i in indices]
    with TakeWriter(path, {"subject": "alice", "take": "smile-01", "labels": ["smile"],
                           "device": {"name": "iPad", "model": "iPad13,8"}}) as w:
        for f in frames:
            w.append(f, received=1.7e9 + f.timestamp)
        w.add_attachment("gt_mesh", {"vertices": np.arange(12, dtype=np.float32).reshape(4, 3),
                                     "faces": np.array([[0, 1, 2], [0, 2, 3]], np.int32)})
        assert len(w) == len(frames)

    r = TakeReader(path)
    assert r.complete and r.status == "complete" and r.problems == []
    m = r.manifest
    assert (m["format"], m["version"], m["subject"], m["take"]) == ("facestudio-take", 1,
                                                                  "alice", "smile-01")
    assert m["frames"] == 12 and m["first_index"] == 0 and m["last_index"] == 12
    assert m["skipped"] == 1 and m["message"] is None
    assert m["duration_s"] == pytest.approx(12 / 30)
    assert len(r) == 12 and r.indices == tuple(indices)
    for i, want in enumerate(frames):
        assert_same_frame(r.frame(i), want)
    for got, want in zip(r.iter_frames(), frames):
        assert_same_frame(got, want)
    d = r.frame(0).depth_m()
    assert d is not None and d[0, 0] == 0.0 and d.shape == (24, 32)

    meta = r.metadata(1)
    assert meta["received"] == 1.7e9 + frames[1].timestamp
    assert meta["color"]["file"] == "color/000001.jpg"
    assert meta["depth"]["file"] == "depth/000001.depth"
    assert (meta["depth"]["dtype"], meta["depth"]["codec"]) == ("float16", "zlib")
    assert r.metadata(0)["face_mesh"]["file"] == "mesh/000000.npy"
    assert r.metadata(2)["depth"] is None

    bs, poses = r.blendshapes(), r.head_poses()
    assert bs.shape == (12, 52) and poses.shape == (12, 4, 4)
    for row, pose, f in zip(bs, poses, frames):
        assert np.isnan(row).all() if f.blendshapes is None else np.array_equal(row, f.blendshapes)
        assert np.isnan(pose).all() if f.head_pose is None else np.array_equal(pose, f.head_pose)
    assert np.array_equal(r.timestamps(), [f.timestamp for f in frames])

    att = r.attachment("gt_mesh")
    assert att["faces"].dtype == np.int32 and att["vertices"].shape == (4, 3)
    with pytest.raises(TakeError, match="gt_mesh"):
        r.attachment("nope")

    info = r.info()
    json.dumps(info)
    assert info["frames"] == 12 and info["complete"] and info["skipped"] == 1
    assert info["fps"] == pytest.approx(11 / (12 / 30))
    assert info["has_depth"] == sum(f.depth is not None for f in frames)
    assert info["color_resolution"] == [64, 48] and info["depth_resolution"] == [32, 24]
    assert info["labels"] == ["smile"] and info["attachments"] == ["gt_mesh"]
    assert info["size_bytes"] > sum(len(f.color_jpeg) for f in frames)


def test_indices_must_strictly_increase(tmp_path: Path) -> None:
    w = TakeWriter(tmp_path / "t")
    w.append(make_frame(5))
    for bad in (5, 3):
        with pytest.raises(ValueError, match="does not increase"):
            w.append(make_frame(bad))
    w.append(make_frame(6))
    w.close()
    r = TakeReader(tmp_path / "t")
    assert r.indices == (5, 6) and r.problems == []


def test_writer_refuses_nonempty_folder_and_reserved_fields(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "x").write_text("precious")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        TakeWriter(tmp_path / "t")
    with pytest.raises(ValueError, match="status"):
        TakeWriter(tmp_path / "u", {"status": "complete"})


def test_exception_inside_with_marks_take_incomplete(tmp_path: Path) -> None:
    with pytest.raises(ConnectionError):
        with TakeWriter(tmp_path / "t", {"subject": "bob"}) as w:
            w.append(make_frame(0))
            raise ConnectionError("device disconnected: wifi lost")
    r = TakeReader(tmp_path / "t")
    assert r.status == "incomplete" and not r.complete and len(r) == 1
    assert "device disconnected: wifi lost" in r.manifest["message"]


class FullDisk:
    """Wraps the writer's frames.jsonl: takes a few bytes of the next write, then fails."""

    def __init__(self, f: object) -> None:
        self.f = f

    def write(self, data: memoryview) -> int:
        self.f.write(data[:10])  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    def __getattr__(self, name: str) -> object:
        return getattr(self.f, name)


def test_failed_append_leaves_no_trace(tmp_path: Path) -> None:
    w = TakeWriter(tmp_path / "t")
    w.append(make_frame(0))
    real = w._jsonl
    w._jsonl = FullDisk(real)  # type: ignore[assignment]
    with pytest.raises(OSError, match="No space"):
        w.append(make_frame(2))
    w._jsonl = real
    assert not (tmp_path / "t" / "color" / "000002.jpg").exists()
    w.append(make_frame(3))
    w.close()
    r = TakeReader(tmp_path / "t")
    assert r.indices == (0, 3) and r.problems == []


CHILD = """
import sys
from test_take import make_frame
from facestudio.capture.take import TakeWriter
w = TakeWriter(sys.argv[1], {"subject": "killed"})
i = 0
while True:
    w.append(make_frame(i))
    print(i, flush=True)
    i += 1
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_recorder_killed_mid_take_loses_at_most_the_frame_in_flight(tmp_path: Path) -> None:
    path, wanted = tmp_path / "take", 25
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                            env=env)
    reported: list[int] = []
    enough = threading.Event()

    def read_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            reported.append(int(line))
            if len(reported) >= wanted:
                enough.set()

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    try:
        assert enough.wait(20), f"writer reported only {len(reported)} frames in 20 s"
        time.sleep(0.05)  # let the kill land at an arbitrary point of the write loop
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    reader.join(10)

    r = TakeReader(path)
    assert r.status == "recording" and not r.complete
    assert len(r) >= len(reported) >= wanted
    assert r.indices == tuple(range(len(r)))
    for got in r.iter_frames():
        assert_same_frame(got, make_frame(got.index))

    info = recover_take(path)
    assert info["status"] == "incomplete" and info["frames"] == len(r)
    assert info["problems"] == []
    # Only payload files of recorded frames remain: the frame in flight is gone.
    on_disk = {f"{p.parent.name}/{p.name}" for d in ("color", "depth", "mesh")
               for p in (path / d).glob("*")}
    assert on_disk == {ref for i in range(len(r)) for ref in referenced_files(r, i)}
    snapshot = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert recover_take(path) == info  # idempotent
    assert snapshot == {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}


def referenced_files(r: TakeReader, i: int) -> set[str]:
    meta = r.metadata(i)
    return {meta[k]["file"] for k in ("color", "depth", "face_mesh") if meta[k] is not None}


def test_garbled_last_line_tolerated_and_repaired(tmp_path: Path) -> None:
    path = tmp_path / "take"
    frames = write_take(path, list(range(6)))
    simulate_crash(path)
    # The frame in flight: its color file half written, its line cut mid-way.
    (path / "color" / "000006.jpg").write_bytes(frames[0].color_jpeg[:100])
    with open(path / FRAMES, "ab") as f:
        f.write(b'{"index":6,"timestamp":100.2,"color":{"fi')
    r = TakeReader(path)
    assert len(r) == 6 and "line 7" in r.problems[0] and "incomplete last line" in r.problems[0]

    info = recover_take(path)
    assert info["status"] == "incomplete" and info["frames"] == 6 and info["problems"] == []
    assert "recovered 6 frames" in info["message"]
    assert not (path / "color" / "000006.jpg").exists()
    assert (path / FRAMES).read_bytes().endswith(b"}\n")
    for got, want in zip(TakeReader(path).iter_frames(), frames):
        assert_same_frame(got, want)
    before = (path / MANIFEST).read_bytes()
    assert recover_take(path) == info and (path / MANIFEST).read_bytes() == before


def test_unterminated_but_whole_last_line_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "take"
    write_take(path, [0, 1, 2])
    simulate_crash(path)
    data = (path / FRAMES).read_bytes()
    (path / FRAMES).write_bytes(data.rstrip(b"\n"))
    assert len(TakeReader(path)) == 3
    assert recover_take(path)["frames"] == 3
    assert (path / FRAMES).read_bytes() == data


def test_garbled_middle_line_and_missing_file_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "take"
    write_take(path, list(range(6)))
    lines = (path / FRAMES).read_bytes().split(b"\n")
    lines[2] = lines[2][:30] + b"#garbage#" + lines[2][30:]
    (path / FRAMES).write_bytes(b"\n".join(lines))
    (path / "depth" / "000004.depth").unlink()
    r = TakeReader(path)
    assert r.indices == (0, 1, 3, 5)
    assert any("line 3" in p and "corrupt JSON" in p for p in r.problems), r.problems
    assert any("depth/000004.depth is missing" in p for p in r.problems), r.problems
    assert any("records 6 frames but 4" in p for p in r.problems), r.problems


def test_depth_confidence_round_trip_and_filter(tmp_path: Path) -> None:
    path = tmp_path / "take"
    frames = write_take(path, [0, 1, 3])
    r = TakeReader(path)
    assert r.info()["has_confidence"] == 2 and r.metadata(0)["depth"]["confidence"]["file"] \
        == "confidence/000000.conf"
    assert r.frame(1).depth_confidence is None
    got = r.frame(2)
    np.testing.assert_array_equal(got.depth_confidence, frames[2].depth_confidence)
    depth, kept = got.depth_m(), got.depth_m(min_confidence=2)
    high = got.depth_confidence >= 2
    np.testing.assert_array_equal(kept[high], depth[high])
    assert not kept[~high].any() and depth[~high].any()
    np.testing.assert_array_equal(r.frame(1).depth_m(min_confidence=2), r.frame(1).depth_m())
    # A confidence map that is not the depth's size is refused before anything is written.
    bad = make_frame(6)
    bad.depth_confidence = np.zeros((5, 5), np.uint8)
    with TakeWriter(tmp_path / "bad") as w, pytest.raises(ValueError, match="depth's size"):
        w.append(bad)
    # Damage after the fact: a missing map skips its frame; garbled bytes fail its read.
    (path / "confidence" / "000000.conf").unlink()
    garbled = path / "confidence" / "000003.conf"
    garbled.write_bytes(b"\0" * garbled.stat().st_size)
    r = TakeReader(path)
    assert r.indices == (1, 3)
    assert any("confidence/000000.conf is missing" in p for p in r.problems), r.problems
    with pytest.raises(TakeError, match="000003.conf .frame 3.: corrupt"):
        r.frame(1)


def test_recover_refuses_take_that_is_still_recording(tmp_path: Path) -> None:
    pytest.importorskip("fcntl")
    w = TakeWriter(tmp_path / "t")
    w.append(make_frame(0))
    with pytest.raises(TakeError, match="still being recorded"):
        recover_take(tmp_path / "t")
    w.close()
    assert recover_take(tmp_path / "t")["status"] == "complete"


def test_manifest_problems_give_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "take"
    write_take(path, [0])
    manifest = json.loads((path / MANIFEST).read_text())
    (path / MANIFEST).write_text(json.dumps({**manifest, "version": 7}))
    with pytest.raises(TakeError, match=r"manifest.json: unsupported take format version 7"):
        TakeReader(path)
    (path / MANIFEST).write_text('{"format": "facestudio-take", "vers')
    with pytest.raises(TakeError, match=r"manifest.json: corrupt, not valid JSON"):
        TakeReader(path)
    (path / MANIFEST).unlink()
    with pytest.raises(TakeError, match=r"manifest.json: missing; .* is not a take folder"):
        TakeReader(path)
    with pytest.raises(TakeError, match="missing"):
        recover_take(path)


@pytest.mark.parametrize("field, value", [
    (("timestamp",), 10**400), (("timestamp",), "NaN"), (("index",), True), (("index",), -1),
    (("color", "file"), "../../etc/passwd"), (("color", "file"), "/etc/passwd"),
    (("color", "bytes"), 1), (("color", "intrinsics", "width"), 0.5),
    (("depth", "dtype"), ["float16"]), (("depth", "codec"), "lzfse"),
    (("head_pose",), [1.0] * 15), (("blendshapes",), [1e300] * 52),
    (("ground_truth",), [1, 2]), (("face_mesh",), "mesh/000001.npy"),
])
def test_hostile_field_values_skip_the_frame(tmp_path: Path, field: tuple[str, ...],
                                             value: object) -> None:
    path = tmp_path / "take"
    write_take(path, [0, 1, 2])
    lines = [json.loads(line) for line in (path / FRAMES).read_bytes().splitlines()]
    target = lines[1]
    for key in field[:-1]:
        target = target[key]
    target[field[-1]] = value
    text = "".join(json.dumps(line) + "\n" for line in lines).replace('"NaN"', "NaN")
    (path / FRAMES).write_text(text)
    r = TakeReader(path)
    assert r.indices == (0, 2)
    assert len(r.problems) == 2 and "line 2" in r.problems[0], r.problems


# ----------------------------------------------------------------- hostile files (hypothesis)

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    | st.sampled_from([10**400, -1, 0, 2**63, 1e308, "../../etc/passwd", "/abs"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=12)


def key_paths(obj: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key of every nested object: the places a corrupted field can hide."""
    paths = []
    for key, value in obj.items():
        paths.append((*prefix, key))
        if isinstance(value, dict):
            paths += key_paths(value, (*prefix, key))
    return paths


def mutate(data: st.DataObject, obj: dict) -> dict:
    """Replace one field, at any depth, of a valid record with an arbitrary JSON value."""
    *parents, key = data.draw(st.sampled_from(key_paths(obj)))
    target = obj
    for parent in parents:
        target = target[parent]
    target[key] = data.draw(JSON_VALUES)
    return obj


@pytest.fixture(scope="module")
def hostile_take(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A valid take whose frames.jsonl each example overwrites, plus that file's valid bytes."""
    path = tmp_path_factory.mktemp("hostile") / "take"
    write_take(path, list(range(8)))
    return path, (path / FRAMES).read_bytes()


@pytest.fixture(scope="module")
def manifest_take(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hostile_manifest") / "take"
    write_take(path, [0, 1, 2])
    return path


def exercise(path: Path) -> None:
    """Everything a library scan or a viewer would do; only TakeError may escape."""
    try:
        r = TakeReader(path)
        json.dumps(r.info())
        r.blendshapes(), r.head_poses(), r.timestamps(), r.indices
        for i in range(len(r)):
            r.metadata(i)
            r.frame(i)
    except TakeError:
        pass


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_arbitrary_frames_jsonl_only_raises_take_error(hostile_take: tuple[Path, bytes],
                                                       data: st.DataObject) -> None:
    path, valid = hostile_take
    if data.draw(st.integers(0, 3)) == 0:
        content = data.draw(st.binary(max_size=3000))
    else:
        lines = [json.loads(line) for line in valid.splitlines()]
        for _ in range(data.draw(st.integers(1, 8))):
            mutate(data, data.draw(st.sampled_from(lines)))
        content = "".join(json.dumps(line) + "\n" for line in lines).encode()
        content = content[:data.draw(st.integers(0, len(content)))]
    (path / FRAMES).write_bytes(content)
    exercise(path)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_arbitrary_manifest_only_raises_take_error(manifest_take: Path,
                                                   data: st.DataObject) -> None:
    choice = data.draw(st.integers(0, 2))
    if choice == 0:
        content = data.draw(st.binary(max_size=2000))
    elif choice == 1:
        content = json.dumps(data.draw(JSON_VALUES)).encode()
    else:
        manifest = {"format": "facestudio-take", "version": 1, "status": "complete",
                    "subject": "s", "frames": 3, "labels": ["x"]}
        content = json.dumps(mutate(data, manifest)).encode()
    (manifest_take / MANIFEST).write_bytes(content)
    exercise(manifest_take)

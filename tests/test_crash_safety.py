"""Crash safety and storage errors, end to end through the `facestudio` command.

- kill -9 during fusion and during training: the take, the catalog and the checkpoints stay
  valid, and running the command again (fuse, ``--resume``) completes.
- A full disk while recording, fusing and writing the catalog: one clear error naming the
  disk and the path, nothing saved before is lost or corrupted. The commands run with a
  per-process file size limit (RLIMIT_FSIZE; writes past it fail with EFBIG exactly where a
  full disk fails them with ENOSPC), so the real write calls fail; under the catalog SQLite's
  own page limit stands in for a full disk (its "database or disk is full").
- A read-only library: chmod when not root; root ignores permissions, so there the write
  calls FaceStudio uses fail with EROFS below the library, as on a read-only mount.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from test_cli import cli_json
from test_library import make_take

from facestudio.capture.take import TakeReader, TakeWriter
from facestudio.cli.main import main
from facestudio.dataset.evaluate import record_synthetic_take
from facestudio.dataset.segment import Segment, find_segments
from facestudio.library.catalog import CATALOG_FILE, Catalog, CatalogError
from facestudio.storage import StorageError

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals and rlimits")

# `python -m facestudio ARGS` with every file limited to LIMIT bytes (argv: LIMIT ARGS...).
# CPython already ignores SIGXFSZ, so an oversized write fails with EFBIG instead of killing it.
LIMITED = ("import resource, runpy, sys; limit = int(sys.argv.pop(1)); "
           "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
           "runpy.run_module('facestudio', run_name='__main__', alter_sys=True)")


def cli_limited(limit: int, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LIMITED, str(limit), *args], capture_output=True,
                          text=True, timeout=timeout)


@contextlib.contextmanager
def running(log: Path, *args: str) -> Iterator[subprocess.Popen]:
    """`facestudio ARGS` in the background (stderr to ``log``); killed on the way out."""
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "facestudio", *args], stdout=subprocess.DEVNULL,
                                stderr=err)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def wait_for(condition: Callable[[], bool], seconds: float, what: str, proc: subprocess.Popen,
              log: Path) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the command ended (rc {proc.returncode}) before {what}:\n"
                        f"{log.read_text(errors='replace')[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {seconds} s")
        time.sleep(0.01)


def kill_9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_no_traceback(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


# ---------------------------------------------------------------------- a take to fuse

@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A 90-frame virtual-device take holding two expressions (two segments when fused)."""
    path = tmp_path_factory.mktemp("recorded") / "subj" / "t1"
    return record_synthetic_take(path, 90, 12.0, seed=3, subject="subj", take="t1")


def library_take(recorded: Path, library: Path) -> tuple[Path, dict[str, str]]:
    """The take copied into the library and indexed (as after a capture), and its file hashes."""
    take = library / "takes" / "subj" / "t1"
    shutil.copytree(recorded, take)
    Catalog(library).index_take("subj", "t1")
    return take, snapshot(take)


def assert_take_intact(take: Path, before: dict[str, str]) -> None:
    assert snapshot(take) == before, "the take's files changed"
    reader = TakeReader(take)
    assert reader.complete and reader.problems == [] and len(reader) == 90
    for frame in reader.iter_frames():
        assert frame.color().shape == (480, 640, 3) and frame.depth_m() is not None


def catalog_matching_files(library: Path) -> dict[str, Any]:
    """`library list` after a sync; its segments must be exactly the complete ones on disk."""
    catalog = Catalog(library)
    catalog.sync()
    listing = catalog.list()
    datasets = library / "datasets"
    on_disk = [str(p) for p in find_segments(datasets)] if datasets.exists() else []
    assert sorted(s["path"] for s in listing["segments"]) == sorted(on_disk)
    assert all(s["problem"] is None for s in listing["segments"])
    return listing


# ---------------------------------------------------------------------- kill -9

def test_kill_9_during_fusion_keeps_take_and_catalog_valid_and_fusing_again_works(recorded, library,
                                                                                   tmp_path):
    take, before = library_take(recorded, library)
    staging, log = library / ".datasets.partial", tmp_path / "fuse.log"
    with running(log, "fuse", str(take)) as proc:
        # Kill while the second segment is being written, the first complete in staging.
        wait_for(lambda: any(staging.glob("*/seg00-*/segment.json")), 120, "first fused segment", proc, log)
        kill_9(proc)
    assert not (library / "datasets" / "subj" / "t1").exists(), "fusion finished before the kill"
    assert any(staging.rglob("segment.json")), "the kill left no staged work: nothing was tested"

    assert_take_intact(take, before)
    listing = catalog_matching_files(library)
    assert listing["segments"] == []
    assert [(t["take"], t["status"], t["segments"]) for t in listing["takes"]] == [("t1", "complete", 0)]

    result = cli_json("fuse", str(take))
    paths = [Path(s["path"]) for s in result["takes"][0]["segments"]]
    assert len(paths) == 2
    for path in paths:
        segment = Segment(path)
        color, mask, _ = segment.load_view(len(segment) - 1)
        assert len(segment) >= 10 and color.shape == (128, 128, 3) and mask.any()
        assert segment.mesh_path.stat().st_size > 10_000
    assert not staging.exists(), "the next fusion must delete what the killed one left"
    listing = catalog_matching_files(library)
    assert sorted(s["path"] for s in listing["segments"]) == sorted(map(str, paths))
    assert_take_intact(take, before)


TINY_TOML = """\
[model]
embedding_dim = 8
channels = [16, 8, 8]
attention_resolutions = [8]

[render]
image_size = 16
samples_per_ray = 16

[train]
objects_per_batch = 2
views_per_object = 1
checkpoint_every = 2
log_every = 1
max_steps = 1000000
num_threads = 1
"""


def train_losses(run: Path) -> dict[int, float]:
    """Step -> loss of the run's train records, in file order; a line cut by a kill is skipped."""
    losses: dict[int, float] = {}
    path = run / "metrics.jsonl"
    for line in (path.read_text(encoding="utf-8").splitlines() if path.exists() else []):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("kind") == "train":
            assert record["step"] not in losses, f"step {record['step']} logged twice"
            losses[record["step"]] = record["loss"]
    return losses


def test_kill_9_during_training_then_resume_continues_from_the_last_checkpoint(library, tmp_path):
    import torch

    from facestudio.models.runs import Run
    from facestudio.models.synthetic_segments import make_synthetic_segments

    make_synthetic_segments(tmp_path / "segments", 2, None, None, views=4, image_size=32)
    (tmp_path / "tiny.toml").write_text(TINY_TOML, encoding="utf-8")
    runs, log = library / "models" / "autodecoder", tmp_path / "train.log"

    def trained_past_a_checkpoint() -> bool:
        return any(max(train_losses(run), default=0) >= 7 and (run / "checkpoints" / "latest").exists()
                   for run in runs.glob("*"))

    with running(log, "train", "autodecoder", "--config", str(tmp_path / "tiny.toml"), "--segments",
                 str(tmp_path / "segments"), "--device", "cpu", "--json") as proc:
        wait_for(trained_past_a_checkpoint, 120, "checkpoint and 7 steps", proc, log)
        kill_9(proc)
    (run_dir,) = runs.iterdir()
    before = train_losses(run_dir)
    run = Run.open(run_dir)
    folders = sorted((run_dir / "checkpoints").glob("step_*"))
    assert folders, "no checkpoint survived"
    for folder in folders:   # every checkpoint readers can see is whole
        ckpt = run.load_checkpoint(folder)
        assert ckpt.step == int(folder.name.removeprefix("step_")) and ckpt.state
        assert ckpt.model and all(torch.isfinite(t).all() for t in ckpt.model.values())
    start = run.load_checkpoint().step
    assert start >= 2 and run.latest_checkpoint() in folders

    result = cli_json("train", "autodecoder", "--resume", run_dir.name, "--max-steps", str(start + 3),
                      "--device", "cpu")
    assert result["step"] == start + 3
    after = train_losses(run_dir)
    assert list(after) == list(range(1, start + 4)), "metrics must continue from the checkpoint step"
    assert all(after[s] == before[s] for s in before if s <= start), "records up to the checkpoint are kept"
    # Everything a step depends on is in the checkpoint: steps redone after the kill are the same.
    assert all(after[s] == before[s] for s in before if start < s <= start + 3)
    assert run.load_checkpoint().step == start + 3


def test_staging_cleanup_removes_what_killed_processes_left_and_nothing_in_use(library):
    from facestudio.library.purge import purge_subject
    from facestudio.storage import staging_dir

    parent = library / ".datasets.partial"
    dead = parent / "killed-fusion" / "seg00-smile"      # no process holds it any more
    dead.mkdir(parents=True)
    with staging_dir(parent) as live:                      # a fusion in progress
        (live / "seg00-neutral").mkdir()
        with staging_dir(parent) as other:                 # the next one starts meanwhile
            assert live.is_dir() and other.is_dir() and not dead.parent.exists()
        assert not other.exists() and (live / "seg00-neutral").is_dir()
    assert not parent.exists()

    # Purging a person also deletes such leftovers (they may hold that person's face), and
    # what a killed purge had already moved aside.
    make_take(library, "alice", "t1")
    dead.mkdir(parents=True)
    (library / ".purge" / "killed-purge" / "0").mkdir(parents=True)
    purge_subject(Catalog(library), "alice")
    assert not any(parent.iterdir()) and not (library / ".purge").exists()


# ---------------------------------------------------------------------- full disk

@pytest.mark.network
def test_full_disk_while_recording_is_a_clear_error_and_keeps_the_recorded_frames(replay_device, library):
    host, port = replay_device.address
    proc = cli_limited(16_000, "capture", "--device", f"{host}:{port}", "--pin", "123456",
                       "--subject", "full", "--take", "t1", "--seconds", "60")
    take = library / "takes" / "full" / "t1"
    assert proc.returncode == 2, proc.stderr
    error = assert_no_traceback(proc.stderr)
    assert "not enough space on the disk" in error and str(take / "frames.jsonl") in error

    reader = TakeReader(take)   # the failed frame was undone; every earlier one is whole
    assert reader.status == "incomplete" and "not enough space" in reader.manifest["message"]
    assert len(reader) >= 3 and reader.problems == [] and reader.manifest["frames"] == len(reader)
    assert all(f.color().shape == (48, 64, 3) for f in reader.iter_frames())
    (row,) = catalog_matching_files(library)["takes"]
    assert (row["take"], row["status"], row["frames"]) == ("t1", "incomplete", len(reader))


def test_full_disk_while_fusing_is_a_clear_error_and_changes_nothing(recorded, library):
    take, before = library_take(recorded, library)
    listed = catalog_matching_files(library)
    proc = cli_limited(8_000, "fuse", str(take))   # the first training view is larger
    assert proc.returncode == 2, proc.stderr
    error = assert_no_traceback(proc.stderr)
    assert "not enough space on the disk to write" in error and "_color.png" in error
    assert not (library / "datasets").exists() and not (library / ".datasets.partial").exists()
    assert_take_intact(take, before)
    assert catalog_matching_files(library) == listed


def test_full_disk_while_training_is_a_clear_error_and_leaves_no_partial_checkpoint(library, tmp_path):
    from facestudio.models.synthetic_segments import make_synthetic_segments

    make_synthetic_segments(tmp_path / "segments", 2, None, None, views=4, image_size=32)
    (tmp_path / "tiny.toml").write_text(TINY_TOML, encoding="utf-8")
    # Config, segment list and metrics fit; the first checkpoint (~130 kB of weights) does not.
    proc = cli_limited(100_000, "train", "autodecoder", "--config", str(tmp_path / "tiny.toml"), "--segments",
                       str(tmp_path / "segments"), "--device", "cpu", "--max-steps", "4")
    assert proc.returncode == 2, proc.stderr
    error = assert_no_traceback(proc.stderr)
    (run_dir,) = (library / "models" / "autodecoder").iterdir()
    assert "not enough space on the disk" in error and str(run_dir / "checkpoints") in error
    assert list((run_dir / "checkpoints").iterdir()) == []     # no half-written checkpoint left
    assert json.loads((run_dir / "segments.json").read_text(encoding="utf-8"))["names"]
    assert set(train_losses(run_dir)) == {1, 2}                 # the steps before the failed save


def test_full_disk_under_the_catalog_is_a_clear_error_and_corrupts_nothing(library, monkeypatch, capsys):
    make_take(library, "alice", "t1")
    listed = catalog_matching_files(library)
    make_take(library, "alice", "t2", labels=["x" * 20_000])   # needs new database pages
    connect = Catalog._connect

    def full_disk(self: Catalog) -> sqlite3.Connection:
        con = connect(self)
        con.execute(f"PRAGMA max_page_count = {con.execute('PRAGMA page_count').fetchone()[0]}")
        return con

    monkeypatch.setattr(Catalog, "_connect", full_disk)
    with pytest.raises(CatalogError, match="not enough space on the disk to write .*catalog.sqlite"):
        Catalog(library).sync()
    assert main(["library", "list"]) == 2
    error = assert_no_traceback(capsys.readouterr().err)
    assert "not enough space on the disk" in error and str(library / CATALOG_FILE) in error
    monkeypatch.undo()

    with contextlib.closing(sqlite3.connect(library / CATALOG_FILE)) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert Catalog(library).list() == listed, "the failed update must change nothing"
    assert [t["take"] for t in catalog_matching_files(library)["takes"]] == ["t1", "t2"]


# ---------------------------------------------------------------------- read-only library

def _make_read_only(root: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Make ``root`` read-only; returns the undo. See the module docstring for how."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [root, *root.rglob("*")]}
        for p in sorted(modes, reverse=True):   # children before their folder
            p.chmod(0o555 if p.is_dir() else 0o444)
        return lambda: [p.chmod(m) for p, m in sorted(modes.items())]

    def below(path: Any) -> bool:
        return isinstance(path, (str, bytes, os.PathLike)) and \
            Path(os.path.abspath(os.fsdecode(path))).is_relative_to(root)

    def refuse(path: Any) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real = {"open": builtins.open, "os_open": os.open, "mkdir": os.mkdir, "replace": os.replace,
            "rename": os.rename, "access": os.access, "connect": sqlite3.connect}

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if below(file) and set(mode) & set("wax+"):
            refuse(file)
        return real["open"](file, mode, *args, **kwargs)

    def fake_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if below(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real["os_open"](path, flags, *args, **kwargs)

    def fake_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if below(path):
            if os.path.lexists(path):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(path))
            refuse(path)
        real["mkdir"](path, *args, **kwargs)

    def fake_move(name: str) -> Callable[..., None]:
        def move(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            if below(src) or below(dst):
                refuse(dst)
            real[name](src, dst, *args, **kwargs)
        return move

    def fake_access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        return False if below(path) and mode & os.W_OK else real["access"](path, mode, *args, **kwargs)

    def fake_connect(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        if below(database):   # what SQLite can do on a read-only mount
            database, kwargs["uri"] = f"{Path(database).as_uri()}?mode=ro&immutable=1", True
        return real["connect"](database, *args, **kwargs)

    for target, name, fake in ((builtins, "open", fake_open), (io, "open", fake_open),
                               (os, "open", fake_os_open), (os, "mkdir", fake_mkdir),
                               (os, "replace", fake_move("replace")), (os, "rename", fake_move("rename")),
                               (os, "access", fake_access), (sqlite3, "connect", fake_connect)):
        monkeypatch.setattr(target, name, fake)
    return monkeypatch.undo


def test_read_only_library_is_a_clear_error_and_changes_nothing(recorded, library, monkeypatch, capsys):
    take, before = library_take(recorded, library)
    make_take(library, "bob", "t1")   # not indexed yet: listing must write the catalog
    everything = snapshot(library)
    undo = _make_read_only(library, monkeypatch)
    try:
        for argv in (["fuse", str(take)], ["library", "list"]):
            assert main(argv) == 2, argv
            error = assert_no_traceback(capsys.readouterr().err)
            assert "library folder is read-only" in error and str(library) in error, error
        with pytest.raises(StorageError, match="library folder is read-only: cannot write .*new"):
            TakeWriter(library / "takes" / "bob" / "new")
    finally:
        undo()
    assert snapshot(library) == everything
    assert_take_intact(take, before)
    assert [t["subject"] for t in catalog_matching_files(library)["takes"]] == ["bob", "subj"]

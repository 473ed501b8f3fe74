"""The library catalog: indexing takes/segments/models, trash and restore, rebuild, concurrency."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from framegen import make_frame

from facestudio.capture.frame import Intrinsics
from facestudio.capture.take import TakeWriter
from facestudio.cli.main import main
from facestudio.dataset.segment import SegmentInfo, SegmentView, SegmentWriter
from facestudio.library.catalog import CATALOG_FILE, Catalog, CatalogError
from facestudio.paths import take_dir


def make_take(root: Path, subject: str, take: str, frames: int = 3, **fields) -> Path:
    path = take_dir(root, subject, take)
    with TakeWriter(path, {"subject": subject, "take": take, **fields}) as writer:
        for i in range(frames):
            frame = make_frame(i)
            frame.timestamp = i / 30
            writer.append(frame)
    return path


def make_segment(root: Path, subject: str, take: str, segment_id: str, label: str) -> Path:
    path = root / "datasets" / subject / take / segment_id
    intr = Intrinsics(50.0, 50.0, 31.5, 23.5, 64, 48)
    info = SegmentInfo(subject=subject, take=take, segment_id=segment_id, label=label,
                       blendshapes=[0.25] * 52, frames=[0, 1],
                       views=[SegmentView(i, intr, np.eye(4)) for i in range(2)],
                       quality={"frames_used": 2, "warnings": []})
    return SegmentWriter(path).finish(info)


def make_model(root: Path, name: str, segments: list[str]) -> Path:
    """A training run as facestudio.models.runs lays it out (only the files the catalog reads)."""
    path = root / "models" / "autodecoder" / name
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.toml").write_text("[train]\n")
    (path / "segments.json").write_text(json.dumps({"paths": [], "names": segments}))
    (path / "checkpoints" / "latest").write_text("step_00000100")
    return path


@pytest.fixture
def filled(library: Path) -> Path:
    make_take(library, "alice", "neutral", labels=["neutral"])
    make_take(library, "alice", "smile", frames=4, expression="smile")
    make_take(library, "bob", "t1", source="record3d")
    make_segment(library, "alice", "smile", "seg00-smile", "smile")
    make_segment(library, "alice", "smile", "seg01-neutral", "neutral")
    make_model(library, "run1", ["alice/smile/seg00-smile"])
    return library


def snapshot(catalog: Catalog) -> dict:
    return catalog.list()


def test_sync_indexes_takes_segments_and_models(filled: Path) -> None:
    catalog = Catalog(filled)  # a library without a catalog is indexed on first open
    assert catalog.rebuild() == {"takes": {"indexed": 3, "unchanged": 0, "removed": 0},
                                 "segments": {"indexed": 2, "unchanged": 0, "removed": 0},
                                 "models": {"indexed": 1, "unchanged": 0, "removed": 0}}
    listing = catalog.list()
    takes = {(t["subject"], t["take"]): t for t in listing["takes"]}
    smile = takes["alice", "smile"]
    assert smile["frames"] == 4 and smile["status"] == "complete" and smile["labels"] == ["smile"]
    assert smile["segments"] == 2 and smile["source"] == "capture"
    assert smile["duration_s"] == pytest.approx(3 / 30)
    assert Path(smile["path"]) == take_dir(filled, "alice", "smile")
    assert takes["alice", "neutral"]["labels"] == ["neutral"]
    assert takes["bob", "t1"]["source"] == "record3d"
    assert [s["name"] for s in listing["subjects"]] == ["alice", "bob"]
    assert listing["subjects"][0]["takes"] == 2 and listing["subjects"][0]["frames"] == 7
    seg = listing["segments"][0]
    assert seg["name"] == "alice/smile/seg00-smile" and seg["label"] == "smile"
    assert seg["views"] == 2 and seg["blendshapes"] == [0.25] * 52
    assert seg["quality"]["frames_used"] == 2
    model = listing["models"][0]
    assert (model["kind"], model["name"], model["checkpoint"]) == ("autodecoder", "run1",
                                                                   "step_00000100")
    assert model["segments"] == ["alice/smile/seg00-smile"] and model["problem"] is None
    assert catalog.list("bob")["takes"][0]["take"] == "t1"
    assert catalog.list("bob")["segments"] == []

    # Unchanged files are skipped; a changed, a new and a vanished take are noticed.
    again = catalog.sync()
    assert again["takes"] == {"indexed": 0, "unchanged": 3, "removed": 0}
    make_take(filled, "carol", "t1")
    manifest = take_dir(filled, "bob", "t1") / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "labels": ["jaw open"]}))
    os.rename(take_dir(filled, "alice", "neutral"), filled / "elsewhere")
    changed = catalog.sync()
    assert changed["takes"] == {"indexed": 2, "unchanged": 1, "removed": 1}
    assert catalog.take("bob", "t1")["labels"] == ["jaw open"]
    with pytest.raises(CatalogError, match="not in the catalog"):
        catalog.take("alice", "neutral")


def test_index_take_adds_one_take(library: Path) -> None:
    catalog = Catalog(library)
    make_take(library, "alice", "t1")
    make_take(library, "alice", "t2")  # on disk, but not indexed until a sync
    row = catalog.index_take("alice", "t1")
    assert row["frames"] == 3
    assert [t["take"] for t in catalog.list()["takes"]] == ["t1"]
    with pytest.raises(CatalogError, match="no take alice/nope"):
        catalog.index_take("alice", "nope")


def test_unreadable_take_is_listed_with_its_problem(library: Path) -> None:
    path = make_take(library, "alice", "broken")
    (path / "manifest.json").write_text("{not json")
    (library / "takes" / "alice" / ".hidden-staging").mkdir()  # staging folders are not takes
    catalog = Catalog(library)
    catalog.sync()
    [take] = catalog.list()["takes"]
    assert take["status"] == "unreadable" and "not valid JSON" in take["problem"]


def test_delete_moves_take_and_datasets_to_trash_and_restore_brings_them_back(filled: Path) -> None:
    catalog = Catalog(filled)
    catalog.sync()
    before = snapshot(catalog)
    result = catalog.delete_take("alice", "smile")
    assert result["datasets_moved"]
    entry = filled / "trash" / result["trash"]
    assert (entry / "take" / "manifest.json").is_file()
    assert (entry / "datasets" / "seg00-smile" / "segment.json").is_file()
    assert not take_dir(filled, "alice", "smile").exists()
    assert not (filled / "datasets" / "alice").exists()  # emptied parents are tidied away
    listing = catalog.list()
    assert [(t["subject"], t["take"]) for t in listing["takes"]] == [("alice", "neutral"),
                                                                      ("bob", "t1")]
    assert listing["segments"] == []
    assert catalog.sync()["takes"]["removed"] == 0  # the rows were already gone

    [trash] = catalog.list_trash()
    assert trash["name"] == result["trash"] and trash["subject"] == "alice"
    assert trash["take"] == "smile" and trash["frames"] == 4
    assert trash["has_take"] and trash["has_datasets"]

    restored = catalog.restore(result["trash"])
    assert restored["restored"] == "alice/smile"
    assert catalog.list_trash() == [] and not entry.exists()
    assert snapshot(catalog) == before

    # Deleting the only take of a subject drops the subject too.
    catalog.delete_take("bob", "t1")
    assert [s["name"] for s in catalog.list()["subjects"]] == ["alice"]


def test_trash_errors_change_nothing(filled: Path) -> None:
    catalog = Catalog(filled)
    catalog.sync()
    with pytest.raises(CatalogError, match="no take alice/nobody"):
        catalog.delete_take("alice", "nobody")
    with pytest.raises(ValueError, match="invalid take name"):
        catalog.delete_take("alice", "../bob")
    with pytest.raises(CatalogError, match="no trash entry"):
        catalog.restore("20250101T000000Z-alice-smile")
    with pytest.raises(CatalogError, match="invalid trash entry"):
        catalog.restore("../takes")

    name = catalog.delete_take("alice", "neutral")["trash"]
    make_take(filled, "alice", "neutral")  # the name was taken again meanwhile
    before = snapshot(catalog)
    with pytest.raises(CatalogError, match="exists again"):
        catalog.restore(name)
    assert snapshot(catalog) == before
    assert [e["name"] for e in catalog.list_trash()] == [name]

    recording = take_dir(filled, "carol", "live")
    TakeWriter(recording, {"subject": "carol", "take": "live"})  # never closed: "recording"
    with pytest.raises(CatalogError, match="still being recorded"):
        catalog.delete_take("carol", "live")
    assert recording.is_dir()


def test_rebuild_from_disk_equals_the_synced_catalog(filled: Path) -> None:
    catalog = Catalog(filled)
    catalog.sync()
    catalog.delete_take("bob", "t1")
    make_take(filled, "dave", "t1")
    catalog.sync()
    synced = snapshot(catalog)
    summary = catalog.rebuild()
    assert summary["takes"] == {"indexed": 3, "unchanged": 0, "removed": 0}
    assert snapshot(catalog) == synced

    # Losing the catalog file loses nothing: a fresh one indexes the same folder.
    for suffix in ("", "-wal", "-shm"):
        Path(f"{filled / CATALOG_FILE}{suffix}").unlink(missing_ok=True)
    fresh = Catalog(filled)
    fresh.sync()
    assert snapshot(fresh) == synced


def test_corrupt_catalog_file_is_set_aside_and_rebuilt(filled: Path) -> None:
    Catalog(filled).sync()
    expected = snapshot(Catalog(filled))
    for suffix in ("-wal", "-shm"):
        Path(f"{filled / CATALOG_FILE}{suffix}").unlink(missing_ok=True)
    (filled / CATALOG_FILE).write_bytes(b"this is not a database" * 100)
    catalog = Catalog(filled)
    assert snapshot(catalog) == expected
    assert list(filled.glob(f"{CATALOG_FILE}.corrupt-*"))


def test_schema_versions(filled: Path) -> None:
    Catalog(filled).sync()
    expected = snapshot(Catalog(filled))
    with sqlite3.connect(filled / CATALOG_FILE) as con:
        con.execute("UPDATE schema_version SET version = 0")
        con.execute("DELETE FROM takes")
    assert snapshot(Catalog(filled)) == expected  # an older schema is rebuilt and refilled
    with sqlite3.connect(filled / CATALOG_FILE) as con:
        con.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(CatalogError, match="newer FaceStudio"):
        Catalog(filled)


def test_pragmas(library: Path) -> None:
    Catalog(library)
    with sqlite3.connect(library / CATALOG_FILE) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_readers_are_safe_while_another_catalog_writes(filled: Path) -> None:
    """A GUI reading while the CLI deletes, restores and rebuilds: no errors, consistent lists."""
    Catalog(filled).sync()
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        catalog = Catalog(filled)
        try:
            while not stop.is_set():
                listing = catalog.list()
                counted = sum(t["segments"] for t in listing["takes"])
                on_take = sum(1 for s in listing["segments"]
                              if any((t["subject"], t["take"]) == (s["subject"], s["take"])
                                     for t in listing["takes"]))
                assert counted == on_take  # one snapshot: counts agree with the rows
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    writer = Catalog(filled)
    try:
        for _ in range(8):
            name = writer.delete_take("alice", "smile")["trash"]
            writer.sync()
            writer.restore(name)
            writer.rebuild()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert len(writer.list()["takes"]) == 3


def run_cli(capsys, *args: str) -> tuple[int, dict]:
    code = main([*args, "--json"])
    lines = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(lines[-1])


def test_cli_library_commands(filled: Path, capsys) -> None:
    code, listing = run_cli(capsys, "library", "list")
    assert code == 0 and len(listing["takes"]) == 3 and len(listing["segments"]) == 2
    code, deleted = run_cli(capsys, "library", "delete", "alice", "smile")
    assert code == 0 and deleted["deleted"] == "alice/smile"
    code, trash = run_cli(capsys, "library", "trash")
    assert trash["count"] == 1 and trash["trash"][0]["name"] == deleted["trash"]
    code, restored = run_cli(capsys, "library", "restore", deleted["trash"])
    assert code == 0 and restored["restored"] == "alice/smile"
    code, rebuilt = run_cli(capsys, "library", "rebuild")
    assert code == 0 and rebuilt["rebuilt"]["segments"]["indexed"] == 2
    code, failed = run_cli(capsys, "library", "delete", "alice", "nobody")
    assert code == 2 and not failed["ok"] and "no take alice/nobody" in failed["error"]
    assert main(["library", "list"]) == 0
    assert "alice/smile\tcomplete\t4 frames" in capsys.readouterr().out

"""Wiping a subject: every file, trash entry, catalog row and model trained on them goes."""

from __future__ import annotations

import json
from pathlib import Path

from facestudio.capture.take import TakeWriter
from facestudio.cli.main import main
from facestudio.library.catalog import Catalog
from framegen import make_frame


def _take(library: Path, subject: str, take: str) -> None:
    with TakeWriter(library / "takes" / subject / take, {"subject": subject, "take": take}) as w:
        for i in range(3):
            w.append(make_frame(i))


def _model(library: Path, name: str, segments: list[str]) -> Path:
    run = library / "models" / "autodecoder" / name
    run.mkdir(parents=True)
    (run / "config.toml").write_text("preset = 'tiny'\n")
    (run / "segments.json").write_text(json.dumps({"names": segments}))
    return run


def test_delete_subject_purge_removes_everything_of_that_person_only(library, capsys):
    for take in ("t1", "t2", "t3"):
        _take(library, "alice", take)
    _take(library, "bob", "t1")
    (library / "datasets" / "alice" / "t1" / "seg00-neutral").mkdir(parents=True)
    shared = _model(library, "run-shared", ["alice/t1/seg00-neutral", "bob/t1/seg00-neutral"])
    bobs = _model(library, "run-bob", ["bob/t1/seg00-neutral"])
    Catalog(library).delete_take("alice", "t3")            # one take already in the trash

    assert main(["library", "delete-subject", "alice", "--purge"]) == 2   # no tty, no --yes
    assert "--yes" in capsys.readouterr().err
    assert (library / "takes" / "alice").is_dir()

    assert main(["library", "delete-subject", "alice", "--purge", "--yes", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["counts"] == {"takes": 1, "datasets": 1, "trash": 1, "models": 1}
    assert not (library / "takes" / "alice").exists() and not (library / "datasets" / "alice").exists()
    assert not shared.exists() and bobs.exists() and (library / "takes" / "bob" / "t1").is_dir()
    assert not list((library / "trash").iterdir())
    listing = Catalog(library).list()
    assert [s["name"] for s in listing["subjects"]] == ["bob"]
    assert [m["name"] for m in listing["models"]] == ["run-bob"]
    assert not (library / ".purge").exists()


def test_delete_subject_without_purge_goes_to_the_trash(library):
    _take(library, "carol", "t1")
    _take(library, "carol", "t2")
    assert main(["library", "delete-subject", "carol"]) == 0
    catalog = Catalog(library)
    assert not catalog.list("carol")["takes"]
    trash = catalog.list_trash()
    assert sorted(t["take"] for t in trash) == ["t1", "t2"]
    catalog.restore(trash[0]["name"])
    assert len(catalog.list("carol")["takes"]) == 1

"""The Library panel end to end: list -> fuse -> mesh in the viewport -> export -> trash -> restore.

Runs under Xvfb (pytest-xvfb) with a real QtInteractor. Takes are rendered straight to disk
from the procedural head (no network, no ICT model): 40 frames at 12 fps cover the first
held expression (neutral holds from 0.6 s to 4.6 s in the virtual script).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guikit import main_window

from facestudio.dataset.evaluate import record_synthetic_take
from facestudio.paths import take_dir

pytestmark = [pytest.mark.gui, pytest.mark.network]

QtWidgets = pytest.importorskip("PySide6.QtWidgets")
from PySide6.QtCore import Qt  # noqa: E402

from facestudio.gui import library_panel  # noqa: E402
from facestudio.gui.main_window import MainWindow  # noqa: E402

SUBJECT, TAKE = "alex", "neutral-01"


def make_take(library: Path, take: str = TAKE, frames: int = 40) -> Path:
    return record_synthetic_take(take_dir(library, SUBJECT, take), frames, 12.0, seed=0,
                                 subject=SUBJECT, take=take)


@pytest.fixture
def window(qtbot, library):
    with main_window(qtbot, library) as win:
        yield win


def open_library(qtbot, win: MainWindow) -> library_panel.LibraryPanel:
    win.show_step("Library")
    panel = win.library_panel
    qtbot.waitUntil(lambda: panel.listing is not None and not panel.is_scanning(), timeout=90_000)
    return panel


def wait_task(qtbot, panel) -> None:
    qtbot.waitUntil(lambda: panel._task_job is None and not panel.is_scanning(), timeout=60_000)


def click(qtbot, button) -> None:
    assert button.isEnabled() and button.isVisible(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def test_fuse_view_export_delete_restore(qtbot, window, library, tmp_path, monkeypatch):
    take_path = make_take(library)
    panel = open_library(qtbot, window)
    item = panel.item_for(take_path)
    assert item is not None and item.text(2) == "40" and item.text(3) == "raw"
    assert not item.icon(0).isNull()                       # first color frame as thumbnail

    panel.select(take_path)
    assert "complete" in panel.take_text.text() and "12.0 fps" in panel.take_text.text()
    progress: list[int] = []
    panel.fuse_progress.connect(progress.append)
    click(qtbot, panel.fuse_button)
    assert not panel.fuse_button.isEnabled() and panel.cancel_button.isVisible()
    assert window.job_progress.isVisible()                 # progress in the status bar too
    qtbot.waitUntil(lambda: panel._fuse_job is None and not panel.is_scanning()
                    and bool(panel.listing["segments"]), timeout=90_000)
    assert progress[-1] == -1 and 100 in progress and not window.job_progress.isVisible()
    assert "Fused alex/neutral-01 into 1 segment" in panel.banner.text()

    # The new segment is selected: its mesh is in the viewport, its quality report shown.
    segment = panel.listing["segments"][0]
    assert segment["label"] == "neutral"
    assert panel.selected_path() == segment["path"]
    assert panel.mesh.points() > 1000
    assert "Fused mesh · alex/neutral-01/seg00-neutral" in window.viewport.title.text()
    report = panel.segment_text.text()
    assert "Frames used" in report and "Head yaw" in report and "ARKit face anchor" in report
    assert panel.item_for(take_path).text(3) == "fused"

    # Export the mesh (OBJ, suffix added from the chosen filter) and read it back.
    out = tmp_path / "exported"
    monkeypatch.setattr(library_panel.QFileDialog, "getSaveFileName", staticmethod(
        lambda *a, **k: (str(out), "OBJ with vertex colors (*.obj)")))
    click(qtbot, panel.export_mesh_button)
    wait_task(qtbot, panel)
    import open3d as o3d

    mesh = o3d.io.read_triangle_mesh(str(out.with_suffix(".obj")))
    assert len(mesh.vertices) > 1000 and len(mesh.triangles) > 1000 and mesh.has_vertex_colors()
    assert "Wrote" in panel.banner.text()

    # Export for nerfstudio into a folder that already holds something: a subfolder is used.
    folder = tmp_path / "ns"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    monkeypatch.setattr(library_panel.QFileDialog, "getExistingDirectory",
                        staticmethod(lambda *a, **k: str(folder)))
    click(qtbot, panel.export_nerf_button)
    wait_task(qtbot, panel)
    doc = json.loads((folder / "alex-neutral-01-seg00-neutral" / "transforms.json").read_text())
    assert len(doc["frames"]) == segment["views"] > 0

    # A training run that used the segment marks it (catalog layout: models/KIND/RUN/).
    run = library / "models" / "autodecoder" / "run-1"
    run.mkdir(parents=True)
    (run / "config.toml").write_text("")
    (run / "segments.json").write_text(json.dumps({"names": [segment["name"]]}))
    click(qtbot, panel.refresh_button)
    qtbot.waitUntil(lambda: not panel.is_scanning() and panel.item_for(take_path).text(3)
                    == "in model", timeout=90_000)
    assert panel.item_for(segment["path"]).text(3) == "in model"

    # Delete (confirmed) -> gone from the list, in the trash; restore -> back with its segment.
    asked = []
    monkeypatch.setattr(library_panel.QMessageBox, "question", staticmethod(
        lambda *a, **k: asked.append(a[2]) or library_panel.QMessageBox.StandardButton.Yes))
    panel.select(take_path)
    click(qtbot, panel.delete_button)
    qtbot.waitUntil(lambda: panel.item_for(take_path) is None and len(panel.trash) == 1,
                    timeout=90_000)
    assert "alex/neutral-01" in asked[0]
    assert not take_path.exists() and panel.mesh.points() == 0
    assert panel.content.currentIndex() == 0           # the library is empty again
    assert panel.trash_button.text() == "Trash (1)"

    click(qtbot, panel.trash_button)
    dialog = panel.trash_dialog
    assert dialog.isVisible() and dialog.list.count() == 1 and "alex / neutral-01" in \
        dialog.list.item(0).text()
    click(qtbot, dialog.restore_button)
    qtbot.waitUntil(lambda: panel.item_for(take_path) is not None and not panel.trash
                    and not panel.is_scanning(), timeout=90_000)
    assert take_path.is_dir() and panel.item_for(segment["path"]) is not None
    assert dialog.list.count() == 0 and panel.selected_path() == str(take_path)


def test_cancel_and_failure_are_reported(qtbot, window, library):
    take_path = make_take(library)
    short = make_take(library, "blink-01", frames=4)        # too short for any segment
    panel = open_library(qtbot, window)

    panel.select(take_path)
    click(qtbot, panel.fuse_button)
    click(qtbot, panel.cancel_button)
    qtbot.waitUntil(lambda: panel._fuse_job is None, timeout=60_000)
    assert "cancelled" in panel.banner.text()
    assert not (library / "datasets" / SUBJECT / TAKE).exists()
    qtbot.waitUntil(panel.fuse_button.isEnabled, timeout=90_000)   # after the refresh scan

    qtbot.waitUntil(lambda: not panel.is_scanning(), timeout=90_000)
    panel.select(short)
    click(qtbot, panel.fuse_button)
    qtbot.waitUntil(lambda: panel._fuse_job is None, timeout=60_000)
    assert panel.banner.property("kind") == "error"
    assert "Could not fuse alex/blink-01" in panel.banner.text()
    assert window.isVisible()


def test_empty_library_guides_to_capture(qtbot, window):
    panel = open_library(qtbot, window)
    assert panel.content.currentIndex() == 0
    assert "Record" in panel.empty_text.text() and "facestudio import" in panel.empty_text.text()
    click(qtbot, panel.go_capture_button)
    assert window.nav.currentRow() == 0

"""The Train page end to end: start a tiny autodecoder run, watch it, pause, resume, close.

Runs under Xvfb (pytest-xvfb). Three small synthetic segments (8 views of 64 px each) are
rendered straight from the virtual device's ground truth into LIBRARY/datasets; the tiny
preset does ~1 step/s on one core, so every run here is a handful of steps.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from guikit import main_window

pytestmark = [pytest.mark.gui]

QtWidgets = pytest.importorskip("PySide6.QtWidgets")
pytest.importorskip("pyqtgraph")
from PySide6.QtCore import Qt  # noqa: E402

from facestudio.gui.main_window import MainWindow  # noqa: E402
from facestudio.models.synthetic_segments import make_synthetic_segments  # noqa: E402


@pytest.fixture
def window(qtbot, library):
    make_synthetic_segments(library / "datasets", 3, views=8, heldout_views=0, image_size=64)
    with main_window(qtbot, library) as win:
        yield win


def click(qtbot, button) -> None:
    assert button.isEnabled() and button.isVisible(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def open_train(qtbot, win):
    win.show_step("Train")
    panel = win.train_panel
    qtbot.waitUntil(lambda: panel.runs is not None and not panel.is_reading(), timeout=90_000)
    return panel


def test_train_pause_resume_and_reopen(qtbot, window, library):
    panel = open_train(qtbot, window)
    box = panel.stages["autodecoder"]
    assert box.preset_combo.currentText() == "tiny"
    assert "cpu" in [box.device_combo.itemText(i) for i in range(box.device_combo.count())]
    assert not panel.stages["diffusion"].start_button.isEnabled()   # no autodecoder yet
    box.device_combo.setCurrentText("cpu")
    box.steps_spin.setValue(400)

    progress: list[dict] = []
    click(qtbot, box.start_button)
    job = panel._job
    job.signals.progress.connect(lambda p: progress.append(p) if "loss" in p else None)
    assert box.pause_button.isEnabled() and not box.start_button.isEnabled()
    qtbot.waitUntil(lambda: len(box.plot.steps) >= 2, timeout=40_000)
    assert "ETA" in box.status.text() and box.progress.value() >= 0
    click(qtbot, box.pause_button)
    qtbot.waitUntil(lambda: not panel.is_training(), timeout=90_000)
    qtbot.waitUntil(lambda: not panel.is_reading(), timeout=90_000)

    assert panel.banner.kind() == "success" and "Paused at step" in panel.banner.text()
    runs = panel.runs["autodecoder"]
    assert len(runs) == 1 and runs[0].step is not None and runs[0].step >= 2
    paused_at = runs[0].step
    assert (Path(runs[0].path) / "checkpoints" / f"step_{paused_at:08d}").is_dir()
    assert box.selected_run().path == runs[0].path and box.resume_button.isEnabled()
    assert not box.start_button.isEnabled()               # paused: Resume or Stop
    assert box.preview.pixmap() is not None and not box.preview.pixmap().isNull()
    assert max(p["step"] for p in progress) == paused_at   # no step after the pause was lost

    box.steps_spin.setValue(paused_at + 2)
    click(qtbot, box.resume_button)
    qtbot.waitUntil(lambda: not panel.is_training(), timeout=40_000)
    qtbot.waitUntil(lambda: not panel.is_reading(), timeout=90_000)
    assert panel.banner.kind() == "success", panel.banner.text()
    assert "Trained to step" in panel.banner.text()
    assert panel.runs["autodecoder"][0].step == paused_at + 2
    assert box.plot.steps[-1] == paused_at + 2
    assert box.start_button.isEnabled()
    assert panel.stages["diffusion"].source_combo.count() == 1   # stage 2 can start now


def test_runs_survive_reopening_and_errors_show_in_the_banner(qtbot, library):
    from facestudio.gui.model_runs import new_run_dir
    from facestudio.models.config import load_config
    from facestudio.models.train_autodecoder import train_autodecoder

    segments = [s.train for s in make_synthetic_segments(library / "datasets", 2, views=6, heldout_views=0,
                                                         image_size=64)]
    config = load_config("tiny")
    config.train.num_threads = 1
    run_dir = new_run_dir(library, "autodecoder")
    train_autodecoder(segments, run_dir, config, "cpu", 2)          # as the CLI would, before the app opens

    win = MainWindow(library, interfaces=["127.0.0.1"], detect_compute=False)
    qtbot.addWidget(win)
    win.show()
    try:
        panel = open_train(qtbot, win)
        box = panel.stages["autodecoder"]
        assert box.run_combo.count() == 2                       # "New run" + the CLI's run
        box.run_combo.setCurrentIndex(1)
        assert box.selected_run().step == 2 and box.plot.steps == [2]
        assert box.resume_button.isEnabled()
        box.steps_spin.setValue(2)
        click(qtbot, box.resume_button)                         # nothing to do: says so
        assert panel.banner.kind() == "info" and "already at step 2" in panel.banner.text()

        # A training error (here: the segments were deleted) is a banner, not a crash.
        for seg in segments:
            shutil.rmtree(seg)
        box.steps_spin.setValue(4)
        click(qtbot, box.resume_button)
        qtbot.waitUntil(lambda: not panel.is_training(), timeout=90_000)
        assert panel.banner.kind() == "error" and "training failed" in panel.banner.text()
        assert box.start_button.isEnabled()
    finally:
        win.close()

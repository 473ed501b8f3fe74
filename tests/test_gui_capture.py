"""The Capture panel end to end: virtual device -> discovery -> pairing -> preview -> take.

Runs under Xvfb (pytest-xvfb) with a real QtInteractor. The virtual device replays small
pre-encoded frames, so the test measures the GUI wiring, not the face renderer.
"""

from __future__ import annotations


import pytest

from guikit import main_window
from framegen import make_frame

from facestudio.capture.take import TakeReader
from facestudio.capture.virtual_device import ReplayFrameSource
from facestudio.paths import take_dir

pytestmark = [pytest.mark.gui, pytest.mark.network]

QtWidgets = pytest.importorskip("PySide6.QtWidgets")
from PySide6.QtCore import Qt  # noqa: E402

from facestudio.gui import capture_panel  # noqa: E402
from facestudio.gui.main_window import MainWindow  # noqa: E402

FRAMES = [make_frame(i, 160, 120) for i in range(30)]


def replay_source(_seed: int) -> ReplayFrameSource:
    return ReplayFrameSource(FRAMES, max_fps=30)


@pytest.fixture
def window(qtbot, library):
    with main_window(qtbot, library, virtual_source=replay_source) as win:
        yield win


def add_virtual_device(qtbot, win: MainWindow):
    panel = win.capture
    qtbot.mouseClick(panel.add_virtual_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(panel._virtual) and panel.device_list.count() == 1, timeout=45_000)
    panel.device_list.item(0).setSelected(True)
    device = next(iter(panel._virtual.values()))
    assert f"PIN {device.pin}" in panel.device_list.item(0).text()
    return device


def connect_with(qtbot, win: MainWindow, monkeypatch, pin: str) -> None:
    monkeypatch.setattr(capture_panel.QInputDialog, "getText",
                        staticmethod(lambda *a, **k: (pin, True)))
    qtbot.mouseClick(win.capture.connect_button, Qt.MouseButton.LeftButton)


def fail_on_message_box(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError(f"unexpected message box: {args[1:]}")
    monkeypatch.setattr(capture_panel.QMessageBox, "warning", staticmethod(fail))


def test_connect_preview_and_record_take(qtbot, window, monkeypatch, library):
    fail_on_message_box(monkeypatch)
    panel = window.capture
    device = add_virtual_device(qtbot, window)
    connect_with(qtbot, window, monkeypatch, device.pin)

    qtbot.waitUntil(lambda: not panel.color_view.pixmap().isNull()
                    and not panel.depth_view.pixmap().isNull()
                    and window.viewport.cloud_points() > 0, timeout=45_000)
    assert window.device_label.text().startswith("Device: Virtual iPad 1")
    assert "fps" in panel.stats_label.text()

    panel.length_spin.setValue(10)
    panel.length_unit.setCurrentText("frames")
    assert panel.current_expression() == "neutral"
    assert panel.take_edit.text() == "neutral-01"
    qtbot.mouseClick(panel.record_button, Qt.MouseButton.LeftButton)
    assert panel.stop_button.isEnabled()
    qtbot.waitUntil(lambda: panel._record_job is None, timeout=45_000)

    path = take_dir(library, "subject01", "neutral-01")
    reader = TakeReader(path)
    assert len(reader) == 10 and reader.complete, reader.problems
    assert reader.manifest["expression"] == "neutral"
    assert "Saved take with 10 frames" in panel.banner.text() and str(path) in panel.banner.text()
    # The guide marks the prompt done and moves on; the preview kept running.
    assert panel.prompt_list.item(0).text().startswith("✓")
    assert panel.current_expression() == "smile" and panel.take_edit.text() == "smile-01"
    frames_before = panel._client.stats.frames
    qtbot.waitUntil(lambda: panel._client.stats.frames > frames_before + 3, timeout=20_000)


def test_wrong_pin_shows_an_error(qtbot, window, monkeypatch):
    boxes = []
    monkeypatch.setattr(capture_panel.QMessageBox, "warning",
                        staticmethod(lambda parent, title, text, *a: boxes.append((title, text))))
    device = add_virtual_device(qtbot, window)
    wrong = "000000" if device.pin != "000000" else "111111"
    connect_with(qtbot, window, monkeypatch, wrong)
    qtbot.waitUntil(lambda: bool(boxes), timeout=90_000)
    assert boxes[0][0] == "Pairing failed" and "wrong PIN" in boxes[0][1]
    assert window.capture._client is None
    assert window.capture.connect_button.isEnabled()   # the user can try again


def test_vanished_device_is_reported(qtbot, window, monkeypatch):
    fail_on_message_box(monkeypatch)
    panel = window.capture
    device = add_virtual_device(qtbot, window)
    connect_with(qtbot, window, monkeypatch, device.pin)
    qtbot.waitUntil(lambda: not panel.color_view.pixmap().isNull(), timeout=45_000)

    qtbot.mouseClick(panel.remove_virtual_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: panel._client is None, timeout=90_000)
    assert panel.banner.text().startswith("Lost Virtual iPad 1")
    assert window.device_label.text() == "No device"
    qtbot.waitUntil(lambda: panel.device_list.count() == 0, timeout=90_000)


def test_closing_while_recording_keeps_the_take(qtbot, window, monkeypatch, library):
    fail_on_message_box(monkeypatch)
    panel = window.capture
    device = add_virtual_device(qtbot, window)
    connect_with(qtbot, window, monkeypatch, device.pin)
    qtbot.waitUntil(lambda: not panel.color_view.pixmap().isNull(), timeout=45_000)
    panel.length_spin.setValue(600)
    panel.length_unit.setCurrentText("seconds")
    qtbot.mouseClick(panel.record_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: any(take_dir(library, "subject01", "neutral-01").glob("color/*")),
                    timeout=90_000)
    window.close()      # the fixture then checks that no thread outlived the window
    reader = TakeReader(take_dir(library, "subject01", "neutral-01"))
    assert reader.complete and len(reader) > 0 and not reader.problems

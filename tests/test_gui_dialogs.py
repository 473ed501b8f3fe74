"""Settings, log viewer and About (issue 6), driven through the real window's menus."""

from __future__ import annotations

import pytest

from guikit import main_window

pytestmark = [pytest.mark.gui]


def test_settings_dialog_saves_what_the_cli_reads_and_refuses_bad_values(qtbot, library, tmp_path):
    from PySide6.QtWidgets import QDialog

    from facestudio.settings import load_settings

    with main_window(qtbot, library) as win:
        win.settings_action.trigger()
        dialog = next(d for d in win.findChildren(QDialog) if d.windowTitle() == "Settings")
        assert dialog.isVisible() and dialog.device_combo.currentText() == "auto"
        dialog.vgg_edit.setText(str(tmp_path / "missing.pth"))
        dialog.save()
        assert dialog.isVisible() and "Not saved" in dialog.error.text() and "does not exist" in dialog.error.text()
        assert not (tmp_path / "config" / "settings.toml").exists()

        dialog.vgg_edit.setText("")
        dialog.device_combo.setCurrentText("cpu")
        dialog.save()
        assert not dialog.isVisible()
        assert load_settings().device == "cpu"
        win.show_step("Train")
        qtbot.waitUntil(lambda: win.train_panel.runs is not None, timeout=60_000)
        assert {box.device_combo.currentText() for box in win.train_panel.stages.values()} == {"cpu"}
        assert "Settings saved" in win.statusBar().currentMessage()


def test_a_damaged_settings_file_is_shown_not_overwritten(qtbot, library, tmp_path):
    path = tmp_path / "config" / "settings.toml"
    path.parent.mkdir(parents=True)
    path.write_text("device = 3\n", encoding="utf-8")
    with main_window(qtbot, library) as win:
        dialog = win.open_settings()
        assert dialog.problem.isVisible() and "device" in dialog.problem.text()
        dialog.reject()
        assert path.read_text(encoding="utf-8") == "device = 3\n"


def test_log_viewer_shows_the_end_of_the_log_and_about_names_versions(qtbot, library):
    from PySide6.QtWidgets import QMessageBox

    from facestudio import __version__
    from facestudio.logs import log_file

    path = log_file()
    path.write_text("".join(f"2026-11-25 INFO line {i}\n" for i in range(50_000)) + "the last line\n",
                    encoding="utf-8")
    with main_window(qtbot, library) as win:
        viewer = win.open_log()
        text = viewer.text.toPlainText()
        assert text.endswith("the last line\n") and "line 0\n" not in text   # only the tail is read
        with path.open("a", encoding="utf-8") as f:
            f.write("written after opening\n")
        viewer.reload()
        assert viewer.text.toPlainText().endswith("written after opening\n")
        viewer.close()

        win.about_action.trigger()
        box = next(b for b in win.findChildren(QMessageBox) if b.windowTitle() == "About FaceStudio")
        assert f"FaceStudio {__version__}" in box.text() and str(library) in box.text()
        box.close()

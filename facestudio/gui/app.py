"""`run_app`: the entry point behind `facestudio gui` (see facestudio/cli/gui_cmd.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from facestudio.gui.capture_panel import synthetic_source
from facestudio.gui.main_window import MainWindow
from facestudio.paths import library_root

RESOURCES = Path(__file__).resolve().parents[2] / "resources"


def apply_look(app: QApplication) -> None:
    """App icon and stylesheet from resources/ (missing files only cost the looks)."""
    icon = RESOURCES / "facestudio.svg"
    if icon.is_file():
        app.setWindowIcon(QIcon(str(icon)))
    style = RESOURCES / "facestudio.qss"
    if style.is_file():
        app.setStyleSheet(style.read_text(encoding="utf-8"))


def create_window(library: str | None = None, face_model: str | None = None,
                  interfaces: list[str] | None = None) -> MainWindow:
    """The main window for a library (QApplication must exist)."""
    root = library_root(library)
    return MainWindow(root, interfaces=interfaces, virtual_source=synthetic_source(face_model, root))


def run_app(library: str | None = None, virtual_device: bool = False,
            face_model: str | None = None) -> int:
    """Open the app; with ``virtual_device`` a virtual iPad starts and appears in the list."""
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("FaceStudio")
    app.setOrganizationName("FaceStudio")
    apply_look(app)
    window = create_window(library, face_model)
    # Quitting by other means than the close button (Ctrl+Q, the session ending) must still
    # end streams, takes and VTK cleanly: that is what the window's closeEvent does.
    app.aboutToQuit.connect(window.close)
    window.show()
    if virtual_device:
        QTimer.singleShot(0, window.capture.add_virtual_device)
    return app.exec()

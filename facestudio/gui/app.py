"""`run_app`: the entry point behind `facestudio gui` (see facestudio/cli/gui_cmd.py)."""

from __future__ import annotations

import sys

from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from facestudio.gui.capture_panel import synthetic_source
from facestudio.gui.main_window import MainWindow
from facestudio.paths import library_root, resources_dir



def apply_look(app: QApplication) -> None:
    """App icon and stylesheet from resources/ (missing files only cost the looks)."""
    resources = resources_dir()
    icon = resources / "facestudio.svg"
    if icon.is_file():
        app.setWindowIcon(QIcon(str(icon)))
    style = resources / "facestudio.qss"
    if style.is_file():
        app.setStyleSheet(style.read_text(encoding="utf-8"))


def create_window(library: str | None = None, face_model: str | None = None,
                  interfaces: list[str] | None = None) -> MainWindow:
    """The main window for a library (QApplication must exist)."""
    root = library_root(library)
    return MainWindow(root, interfaces=interfaces, virtual_source=synthetic_source(face_model, root))


def run_app(library: str | None = None, virtual_device: bool = False,
            face_model: str | None = None, startup_probe: bool = False) -> int:
    """Open the app; with ``virtual_device`` a virtual iPad starts and appears in the list.

    ``startup_probe`` (for `facestudio bench startup`) prints "shown" at the window's first
    paint and "ready" once the deferred start-up work (the 3D viewport) is done, then quits.
    """
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
    if startup_probe:
        _probe_startup(app, window)
    return app.exec()


class _FirstPaint(QObject):
    def __init__(self, app: QApplication, window: MainWindow):
        super().__init__(window)
        self._app, self._window, self._seen = app, window, False

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.Paint and not self._seen:
            self._seen = True
            print("shown", flush=True)
            # Two hops: after the window's own deferred start-up work, which its paintEvent
            # (running after this filter) queues.
            QTimer.singleShot(0, lambda: QTimer.singleShot(0, self._ready))
        return False

    def _ready(self) -> None:
        print("ready", flush=True)
        self._window.close()
        self._app.quit()


def _probe_startup(app: QApplication, window: MainWindow) -> None:
    window.installEventFilter(_FirstPaint(app, window))

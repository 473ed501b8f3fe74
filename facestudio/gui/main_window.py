"""The main window: workflow navigation, the current panel, the shared 3D viewport, status.

The window is cheap to show: pyvista and torch are imported after the first paint
(``_after_show``), because together they take seconds. Closing the window ends every job,
stream, discovery browser and virtual device before the viewport is closed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QSize, Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QMainWindow,
                               QProgressBar, QSplitter, QStackedWidget, QVBoxLayout, QWidget)

from facestudio.gui.capture_panel import CapturePanel, SourceFactory
from facestudio.gui.dialogs import LogViewer, SettingsDialog, show_about
from facestudio.gui.first_steps import FirstSteps
from facestudio.gui.library_panel import LibraryPanel
from facestudio.gui.train_panel import TrainPanel
from facestudio.gui.generate_panel import GeneratePanel
from facestudio.gui.viewport import Viewport
from facestudio.gui.workers import Job, Jobs

log = logging.getLogger(__name__)

STEPS = ("Capture", "Library", "Train", "Generate")


class MainWindow(QMainWindow):
    def __init__(self, library: Path, *, interfaces: list[str] | None = None,
                 virtual_source: SourceFactory | None = None, detect_compute: bool = True):
        super().__init__()
        self.setWindowTitle("FaceStudio")
        self.resize(1500, 940)
        self.library = library
        self._detect_compute = detect_compute
        self._started = False
        self.jobs = Jobs(self)
        self.viewport = Viewport()
        self.capture = CapturePanel(library, self.jobs, self.viewport, interfaces=interfaces,
                                    virtual_source=virtual_source)
        self.library_panel = LibraryPanel(library, self.jobs, self.viewport)
        self.train_panel = TrainPanel(library, self.jobs)
        self.generate_panel = GeneratePanel(library, self.jobs, self.viewport)
        panels = {"Capture": self.capture, "Library": self.library_panel, "Train": self.train_panel,
                  "Generate": self.generate_panel}

        self.nav = QListWidget()
        self.nav.setObjectName("nav")
        self.nav.setIconSize(QSize(18, 18))
        self.first_steps = FirstSteps(library)
        sidebar = QWidget()
        sidebar.setObjectName("sidebar")
        sidebar.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        sidebar.setFixedWidth(200)
        side = QVBoxLayout(sidebar)
        side.setContentsMargins(0, 0, 0, 0)
        side.setSpacing(0)
        side.addWidget(self.nav, 1)
        side.addWidget(self.first_steps)
        self.pages = QStackedWidget()
        self.pages.setObjectName("pages")
        for name in STEPS:
            self.nav.addItem(QListWidgetItem(name))
            self.pages.addWidget(panels[name])
        self.nav.currentRowChanged.connect(self.pages.setCurrentIndex)
        self.nav.currentRowChanged.connect(lambda _row: self.first_steps.refresh())
        self.nav.setCurrentRow(0)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.pages)
        splitter.addWidget(self.viewport)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        self.pages.setMinimumWidth(560)
        splitter.setSizes([720, 700])
        central = QWidget()
        layout = QHBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(sidebar)
        layout.addWidget(splitter, 1)
        self.setCentralWidget(central)

        self.device_label = QLabel("No device")
        self.compute_label = QLabel("Compute: …")
        self.jobs_label = QLabel("No background jobs")
        self.job_progress = QProgressBar()
        self.job_progress.setObjectName("statusProgress")
        self.job_progress.setRange(0, 100)
        self.job_progress.setFixedWidth(140)
        self.job_progress.hide()
        for widget in (self.device_label, self.compute_label, self.jobs_label, self.job_progress):
            self.statusBar().addPermanentWidget(widget)
        self.statusBar().showMessage(f"Library: {library}")
        self.capture.device_changed.connect(self._device_changed)
        self.jobs.changed.connect(self._jobs_changed)
        self.library_panel.fuse_progress.connect(self._fuse_progress)
        for panel in (self.library_panel, self.train_panel, self.generate_panel):
            panel.notice.connect(self._notice)
        self.library_panel.capture_requested.connect(lambda: self.show_step("Capture"))
        self.first_steps.page_requested.connect(self.show_step)
        self._build_menu()

    def _build_menu(self) -> None:
        def action(menu, text: str, slot, shortcut: QKeySequence | QKeySequence.StandardKey | None = None) -> QAction:
            act = QAction(text, self)
            if shortcut is not None:
                act.setShortcut(shortcut)
            act.triggered.connect(slot)
            menu.addAction(act)
            return act

        app_menu = self.menuBar().addMenu("&FaceStudio")
        self.settings_action = action(app_menu, "&Settings…", self.open_settings, QKeySequence.StandardKey.Preferences)
        app_menu.addSeparator()
        action(app_menu, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        help_menu = self.menuBar().addMenu("&Help")
        self.log_action = action(help_menu, "Show &log", self.open_log)
        self.about_action = action(help_menu, "&About FaceStudio", lambda: show_about(self.library, self))

    def open_settings(self) -> SettingsDialog:
        """Non-modal so a running capture or training keeps updating; saved values reach the panels."""
        dialog = SettingsDialog(self.library, self)
        dialog.accepted.connect(self._settings_saved)
        dialog.open()
        return dialog

    def _settings_saved(self) -> None:
        self.train_panel.apply_settings()   # the Generate page reads the device when it loads a model
        self._notice("Settings saved")

    def open_log(self) -> LogViewer:
        viewer = LogViewer(self)
        viewer.show()
        return viewer

    def show_step(self, name: str) -> None:
        self.nav.setCurrentRow(STEPS.index(name))

    # ------------------------------------------------------------------ start-up
    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        """Start the slow start-up work only once the window has been painted: on show, the
        expose event can arrive after a zero timer, and the viewport's seconds of imports
        would then keep the window blank."""
        super().paintEvent(event)
        if not self._started:
            self._started = True
            QTimer.singleShot(0, self._after_show)

    def _after_show(self) -> None:
        """The slow parts of start-up, after the window is on screen."""
        self.viewport.create_plotter()
        self.capture.start_discovery()
        if self._detect_compute:
            self.jobs.start("detect compute device", _detect_compute,
                            on_success=self._compute_found, on_error=self._compute_failed)
        else:
            self.compute_label.setText("Compute: not checked")

    # ------------------------------------------------------------------ status bar
    def _notice(self, text: str) -> None:
        self.statusBar().showMessage(text, 10_000)

    def _device_changed(self, text: str) -> None:
        self.device_label.setText(f"Device: {text}" if text else "No device")

    def _compute_found(self, text: str) -> None:
        self.compute_label.setText(f"Compute: {text}")

    def _compute_failed(self, exc: Exception) -> None:
        self.compute_label.setText(f"Compute: unknown ({exc})")

    def _jobs_changed(self, names: list[str]) -> None:
        self.jobs_label.setText(f"Jobs: {', '.join(names)}" if names else "No background jobs")
        self.first_steps.refresh()   # a job that ended may have added a take, a segment or a model

    def _fuse_progress(self, percent: int) -> None:
        """The running fusion's progress next to the job list (-1: none runs)."""
        self.job_progress.setVisible(percent >= 0)
        self.job_progress.setValue(max(percent, 0))

    # ------------------------------------------------------------------ shutdown
    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt API
        """Stop training (after its current step, with a checkpoint), live input and mesh generation,
        finish takes, close streams and devices, then VTK (it crashes at exit otherwise)."""
        self.train_panel.shutdown()
        self.generate_panel.shutdown()
        self.jobs.shutdown()
        self.capture.shutdown()
        self.library_panel.shutdown()
        self.viewport.close_plotter()
        super().closeEvent(event)


def _detect_compute(_job: Job) -> str:
    """Which device training would use (torch is imported here, off the GUI thread)."""
    import torch

    if torch.cuda.is_available():
        return f"CUDA · {torch.cuda.get_device_name(0)}"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "Apple MPS"
    return f"CPU · {torch.get_num_threads()} threads"

"""The app's menu dialogs: Settings, the log viewer and About.

Settings edit the same file as `facestudio settings set` (:mod:`facestudio.settings`); the log
viewer reads the rotating log file every command and the app write (:mod:`facestudio.logs`),
so a user can see why background work failed without a terminal.
"""

from __future__ import annotations

import platform
from pathlib import Path

from PySide6.QtCore import QUrl, qVersion
from PySide6.QtGui import QDesktopServices, QFontDatabase
from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout,
                               QHBoxLayout, QLabel, QLineEdit, QMessageBox, QPlainTextEdit,
                               QPushButton, QVBoxLayout, QWidget)

from facestudio import __version__
from facestudio.logs import log_file
from facestudio.settings import DEVICES, Settings, load_settings, save_settings, settings_path

LOG_TAIL_BYTES = 400_000


def _path_row(edit: QLineEdit, pick) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    browse = QPushButton("Browse…")
    browse.clicked.connect(pick)
    layout.addWidget(edit, 1)
    layout.addWidget(browse)
    return row


class SettingsDialog(QDialog):
    """Library folder, compute device, VGG-19 weights. A damaged settings file is shown, not
    overwritten, until the user saves valid values."""

    def __init__(self, current_library: Path, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.setMinimumWidth(560)
        self.current_library = current_library
        self.problem = QLabel()
        self.problem.setObjectName("banner")
        self.problem.setProperty("kind", "error")
        self.problem.setWordWrap(True)
        self.problem.hide()
        try:
            settings = load_settings()
        except ValueError as exc:
            settings = Settings()
            self.problem.setText(str(exc))
            self.problem.show()
        self.library_edit = QLineEdit(settings.library)
        self.library_edit.setPlaceholderText(f"default ({current_library})")
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.device_combo.setCurrentText(settings.device)
        self.device_combo.setToolTip("auto picks CUDA, then Apple MPS, then the CPU")
        self.vgg_edit = QLineEdit(settings.vgg19_weights)
        self.vgg_edit.setPlaceholderText("none: the perceptual loss is off")
        self.vgg_edit.setToolTip("A torchvision-layout VGG-19 state dict (.pth or .safetensors) on disk; "
                                 "nothing is downloaded")
        form = QFormLayout()
        form.addRow("Library folder", _path_row(self.library_edit, self._pick_library))
        form.addRow("Compute device", self.device_combo)
        form.addRow("VGG-19 weights", _path_row(self.vgg_edit, self._pick_vgg))
        self.error = QLabel()
        self.error.setObjectName("hint")
        self.error.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.problem)
        layout.addLayout(form)
        layout.addWidget(QLabel(f"Stored in {settings_path()}"))
        layout.addWidget(self.error)
        layout.addWidget(buttons)

    def _pick_library(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Library folder", self.library_edit.text() or
                                                  str(self.current_library))
        if folder:
            self.library_edit.setText(folder)

    def _pick_vgg(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "VGG-19 weights", "",
                                              "Weights (*.pth *.pt *.safetensors);;All files (*)")
        if path:
            self.vgg_edit.setText(path)

    def settings(self) -> Settings:
        return Settings(library=self.library_edit.text().strip(), device=self.device_combo.currentText(),
                        vgg19_weights=self.vgg_edit.text().strip())

    def save(self) -> None:
        """Save and close; invalid values keep the dialog open with the reason."""
        chosen = self.settings()
        try:
            save_settings(chosen)
        except (ValueError, OSError) as exc:
            self.error.setText(f"Not saved: {exc}")
            return
        if chosen.library and Path(chosen.library).expanduser().resolve() != self.current_library:
            QMessageBox.information(self, "Settings", "The new library folder is used from the next start "
                                                      "of FaceStudio.")
        self.accept()


class LogViewer(QDialog):
    """The end of the log file, reloadable, with a button to open its folder."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Log")
        self.resize(900, 520)
        self.path = log_file()
        self.text = QPlainTextEdit()
        self.text.setReadOnly(True)
        self.text.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.text.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        reload_button = QPushButton("Reload")
        reload_button.clicked.connect(self.reload)
        folder_button = QPushButton("Open log folder")
        folder_button.clicked.connect(lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.path.parent))))
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.reject)
        row = QHBoxLayout()
        row.addWidget(QLabel(str(self.path)), 1)
        row.addWidget(reload_button)
        row.addWidget(folder_button)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.text, 1)
        layout.addWidget(close)
        self.reload()

    def reload(self) -> None:
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, 2)
                f.seek(max(0, size - LOG_TAIL_BYTES))
                data = f.read().decode("utf-8", errors="replace")
        except OSError as exc:
            data = f"The log file {self.path} cannot be read: {exc}"
        self.text.setPlainText(data)
        bar = self.text.verticalScrollBar()
        bar.setValue(bar.maximum())


def about_text(library: Path) -> str:
    """Versions and places a bug report needs (torch is imported by now: the viewport needs it)."""
    import torch
    import vtk

    return (f"<h3>FaceStudio {__version__}</h3>"
            "<p>Capture faces with an iPad's TrueDepth camera, fuse them into datasets, train a latent "
            "3D diffusion model and generate expression avatars.</p>"
            f"<p>Python {platform.python_version()} · Qt {qVersion()} · torch {torch.__version__} · "
            f"VTK {vtk.vtkVersion.GetVTKVersion()}<br>"
            f"Library: {library}<br>Log: {log_file()}<br>Settings: {settings_path()}</p>"
            "<p>MIT licence.</p>")


def show_about(library: Path, parent: QWidget | None = None) -> QMessageBox:
    box = QMessageBox(QMessageBox.Icon.NoIcon, "About FaceStudio", about_text(library),
                      QMessageBox.StandardButton.Close, parent)
    box.setIconPixmap(parent.windowIcon().pixmap(64, 64) if parent is not None else box.iconPixmap())
    box.open()
    return box

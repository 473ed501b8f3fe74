"""Train and Generate: honest placeholders until those stages exist in the core.

Each page says what the step will do and what it needs, instead of showing controls that
do nothing.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

PLANNED = {
    "Train": (
        "Train the autodecoder, then the latent diffusion model, in the background.",
        ["Progress, ETA, live loss curves and preview renders.",
         "Pause, stop and resume from checkpoints.",
         "Presets from 'tiny' (minutes on a laptop CPU) to 'paper' (GPUs)."],
    ),
    "Generate": (
        "Generate a person with any expression from their neutral take.",
        ["52 ARKit blendshape sliders, grouped, with presets and left/right mirroring.",
         "Drive the sliders live from Live Link Face.",
         "Export PLY, OBJ, STL or glTF with vertex colors."],
    ),
}


class PlannedPage(QWidget):
    def __init__(self, name: str, library: Path, parent: QWidget | None = None):
        super().__init__(parent)
        summary, items = PLANNED[name]
        title = QLabel(name)
        title.setObjectName("pageTitle")
        body = QLabel(
            f"<p>{summary}</p><p><b>Not available in this build yet.</b> This step will:</p><ul>"
            + "".join(f"<li>{item}</li>" for item in items) + "</ul>"
            + f"<p>Library folder: <code>{library}</code></p>")
        body.setWordWrap(True)
        body.setTextFormat(Qt.TextFormat.RichText)
        body.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 18, 24, 18)
        layout.addWidget(title)
        layout.addWidget(body)
        layout.addStretch(1)

"""Building blocks the pages share: a page header (title and summary) and a message banner.

Background work reports its outcome in the page it belongs to (a banner the user can read
and select), never in a modal dialog that would stop the live viewport or a training run.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QWidget


def page_title(text: str) -> QLabel:
    title = QLabel(text)
    title.setObjectName("pageTitle")
    return title


def page_header(title: str, summary: QLabel) -> QHBoxLayout:
    """The page's title with its one-line summary beside it, aligned on the title's baseline."""
    header = QHBoxLayout()
    header.addWidget(page_title(title))
    header.addSpacing(12)
    header.addWidget(summary, 1, Qt.AlignmentFlag.AlignBottom)
    return header


def hint(text: str) -> QLabel:
    label = QLabel(text)
    label.setObjectName("hint")
    label.setWordWrap(True)
    return label


class Banner(QLabel):
    """An inline message (info / success / error), hidden until there is something to say."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("banner")
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.hide()

    def show_message(self, text: str, kind: str = "info") -> None:
        self.setProperty("kind", kind)
        self.setText(text)
        self.style().unpolish(self)
        self.style().polish(self)
        self.show()

    def kind(self) -> str:
        return str(self.property("kind") or "") if not self.isHidden() else ""

"""Building blocks the Train and Generate pages share: a page title and a message banner.

Background work reports its outcome in the page it belongs to (a banner the user can read
and select), never in a modal dialog that would stop the live viewport or a training run.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QWidget


def page_title(text: str) -> QLabel:
    title = QLabel(text)
    title.setObjectName("pageTitle")
    return title


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

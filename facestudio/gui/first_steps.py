"""The "Getting started" checklist under the navigation, for a library that has not yet been
through the whole journey (record -> fuse -> train both stages -> generate).

Each step is ticked from the library's files (:mod:`facestudio.library.first_steps`), so the
list is right after a restart; clicking a step opens its page; the next step to do is bold
with its one-line how-to. Once both models exist the checklist hides itself.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget

from facestudio.library.first_steps import Step, first_steps


class FirstSteps(QWidget):
    page_requested = Signal(str)        # the page a clicked step is done on

    def __init__(self, library: Path) -> None:
        super().__init__()
        self.setObjectName("firstSteps")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        self.library = library
        self.steps: list[Step] = []
        self.title = QLabel("Getting started")
        self.title.setObjectName("firstStepsTitle")
        self.buttons: list[QPushButton] = []
        self.how = QLabel()
        self.how.setObjectName("hint")
        self.how.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 10, 8, 12)
        layout.setSpacing(2)
        layout.addWidget(self.title)
        for _ in range(len(first_steps(library))):
            button = QPushButton()
            button.setObjectName("firstStep")
            button.setFlat(True)
            button.setCursor(Qt.CursorShape.PointingHandCursor)
            button.clicked.connect(lambda _=False, b=button: self._clicked(b))
            self.buttons.append(button)
            layout.addWidget(button)
        layout.addSpacing(4)
        layout.addWidget(self.how)
        self.refresh()

    def refresh(self) -> None:
        """Re-read the library (a few globs): call when work that adds files has ended."""
        self.steps = first_steps(self.library)
        upcoming = self.next_step()
        self.setVisible(upcoming is not None)
        for i, (step, button) in enumerate(zip(self.steps, self.buttons)):
            mark = "✓" if step.done else f"{i + 1}."
            button.setText(f"{mark}  {step.title}")
            button.setProperty("state", "done" if step.done else "next" if step is upcoming else "todo")
            button.setToolTip(f"{step.hint} ({step.page} page)")
            button.style().unpolish(button)
            button.style().polish(button)
        self.how.setText(upcoming.hint if upcoming is not None else "")

    def next_step(self) -> Step | None:
        return next((s for s in self.steps if not s.done), None)

    def _clicked(self, button: QPushButton) -> None:
        self.page_requested.emit(self.steps[self.buttons.index(button)].page)

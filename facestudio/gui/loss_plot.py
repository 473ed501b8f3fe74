"""A live loss curve (pyqtgraph), created when its page is first shown.

pyqtgraph takes most of a second to import, and the window must appear fast (issue 6), so
the plot widget is made on demand; points that arrive before that are kept and drawn then.
"""

from __future__ import annotations

import math

from PySide6.QtWidgets import QVBoxLayout, QWidget

ACCENT = "#4f8cff"


class LossPlot(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self._plot = None
        self._curve = None
        self.setMinimumHeight(150)
        self.setMaximumHeight(200)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        if self._plot is None:
            self._create()

    def _create(self) -> None:
        import pyqtgraph as pg

        self._plot = pg.PlotWidget(background="#171a1f")
        self._plot.setMenuEnabled(False)
        self._plot.showGrid(x=True, y=True, alpha=0.15)
        for side in ("left", "bottom"):
            axis = self._plot.getAxis(side)
            axis.setPen("#4a505c")
            axis.setTextPen("#9aa4b2")
        self._plot.setLabel("bottom", "step", color="#9aa4b2")
        self._plot.setLabel("left", "loss", color="#9aa4b2")
        self._curve = self._plot.plot(pen=pg.mkPen(ACCENT, width=2), symbol="o", symbolSize=4,
                                      symbolBrush=ACCENT, symbolPen=None)
        self._layout.addWidget(self._plot)
        self._redraw()

    def set_points(self, points: list[tuple[int, float]]) -> None:
        self.steps = [s for s, _ in points]
        self.losses = [v for _, v in points]
        self._redraw()

    def add_point(self, step: int, loss: float) -> None:
        """A training step's loss; a step at or before the last one (a resume) cuts the curve there.

        Non-finite losses (a diverged step) are not drawn: they would blank the whole plot."""
        if not math.isfinite(loss):
            return
        while self.steps and self.steps[-1] >= step:
            self.steps.pop()
            self.losses.pop()
        self.steps.append(step)
        self.losses.append(loss)
        self._redraw()

    def _redraw(self) -> None:
        if self._curve is not None:
            self._curve.setData(self.steps, self.losses)

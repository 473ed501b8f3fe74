"""The 52 ARKit blendshape sliders, grouped by face region, with left/right mirroring.

Left/right twins share a row (L and R columns), so a symmetric expression is easy to read.
``jawLeft``/``jawRight`` and ``mouthLeft``/``mouthRight`` are directions, not sides of the
face: mirroring them would cancel the motion, so they are not twins.

Signals: ``dragged`` while a slider moves under the mouse (or a key), ``released`` when the
user lets go; programmatic changes (presets, live input, reset) emit ``set_programmatically``
once per change of the whole vector instead of 52 times.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QGridLayout, QGroupBox, QLabel, QSlider, QVBoxLayout, QWidget

from facestudio.faces.arkit import BLENDSHAPE_INDEX, BLENDSHAPE_NAMES, NUM_BLENDSHAPES

REGIONS = (("Eyes", ("eye",)), ("Brows", ("brow",)), ("Jaw", ("jaw",)), ("Mouth", ("mouth",)),
           ("Cheeks & nose", ("cheek", "nose")), ("Tongue", ("tongue",)))
DIRECTIONS = {"jaw", "mouth"}        # jawLeft, mouthLeft: a direction, not a side
SCALE = 100                          # slider steps per unit weight


def twin(name: str) -> str | None:
    """The other side's blendshape of a Left/Right pair, else None."""
    for side, other in (("Left", "Right"), ("Right", "Left")):
        if name.endswith(side) and name[:-len(side)] not in DIRECTIONS:
            mirrored = name[:-len(side)] + other
            return mirrored if mirrored in BLENDSHAPE_INDEX else None
    return None


def region_of(name: str) -> str:
    return next(title for title, prefixes in REGIONS if name.startswith(prefixes))


def _pretty(stem: str) -> str:
    """"mouthSmile" -> "Smile" (the region is the group's title)."""
    for prefix in ("eye", "brow", "jaw", "mouth", "cheek", "nose", "tongue"):
        if stem.startswith(prefix) and len(stem) > len(prefix):
            return stem[len(prefix):]
    return stem[0].upper() + stem[1:]


class ExpressionSliders(QWidget):
    dragged = Signal()
    released = Signal()
    set_programmatically = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.mirror = True
        self.sliders: dict[str, QSlider] = {}
        self._values: dict[str, QLabel] = {}
        self._syncing = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for title, _ in REGIONS:
            names = [n for n in BLENDSHAPE_NAMES if region_of(n) == title]
            layout.addWidget(self._group(title, names))
        layout.addStretch(1)

    def _group(self, title: str, names: list[str]) -> QGroupBox:
        box = QGroupBox(title)
        grid = QGridLayout(box)
        grid.setHorizontalSpacing(8)
        grid.setVerticalSpacing(2)
        row = 0
        placed: set[str] = set()
        for name in names:
            if name in placed:
                continue
            other = twin(name)
            if other is not None:
                left, right = (name, other) if name.endswith("Left") else (other, name)
                grid.addWidget(self._name_label(_pretty(left[:-4])), row, 0)
                self._add(grid, left, row, 1, "L")
                self._add(grid, right, row, 4, "R")
                placed |= {left, right}
            else:
                grid.addWidget(self._name_label(_pretty(name)), row, 0)
                self._add(grid, name, row, 1, "")
                placed.add(name)
            row += 1
        grid.setColumnStretch(2, 1)
        grid.setColumnStretch(5, 1)
        return box

    @staticmethod
    def _name_label(text: str) -> QLabel:
        label = QLabel(text)
        label.setMinimumWidth(90)        # the same column width in every group, so sliders line up
        return label

    def _add(self, grid: QGridLayout, name: str, row: int, col: int, side: str) -> None:
        slider = QSlider(Qt.Orientation.Horizontal)
        slider.setRange(0, SCALE)
        slider.setObjectName(name)
        slider.setToolTip(name)
        value = QLabel("0.00")
        value.setObjectName("stats")
        value.setMinimumWidth(32)
        side_label = QLabel(side)
        side_label.setObjectName("hint")
        grid.addWidget(side_label, row, col)
        grid.addWidget(slider, row, col + 1)
        grid.addWidget(value, row, col + 2)
        slider.valueChanged.connect(lambda v, n=name: self._changed(n, v))
        slider.sliderReleased.connect(self.released)
        self.sliders[name] = slider
        self._values[name] = value

    def _changed(self, name: str, value: int) -> None:
        self._values[name].setText(f"{value / SCALE:.2f}")
        if self._syncing:
            return
        other = twin(name)
        if self.mirror and other is not None:
            self._syncing = True
            self.sliders[other].setValue(value)
            self._syncing = False
        self.dragged.emit()

    def is_dragging(self) -> bool:
        return any(s.isSliderDown() for s in self.sliders.values())

    def weights(self) -> np.ndarray:
        """(52,) float32 in ARKit order."""
        return np.array([self.sliders[n].value() / SCALE for n in BLENDSHAPE_NAMES], dtype=np.float32)

    def set_weights(self, weights: np.ndarray | dict[str, float]) -> None:
        """Set every slider (a dict leaves unnamed ones at 0); mirroring does not apply."""
        if isinstance(weights, dict):
            vec = np.zeros(NUM_BLENDSHAPES, np.float32)
            for name, w in weights.items():
                vec[BLENDSHAPE_INDEX[name]] = w
        else:
            vec = np.asarray(weights, np.float32).reshape(NUM_BLENDSHAPES)
        self._syncing = True
        for name, w in zip(BLENDSHAPE_NAMES, vec):
            self.sliders[name].setValue(int(round(float(np.clip(w, 0.0, 1.0)) * SCALE)))
        self._syncing = False
        self.set_programmatically.emit()

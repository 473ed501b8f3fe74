"""Screenshots of every workflow step, for docs and for checking the GUI by eye.

``QWidget.grab()`` does not capture the VTK render window (it is drawn by OpenGL, outside
Qt's backing store, and comes out black or stale), so the viewport's own rendering is
painted over its place in the grab.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QPoint
from PySide6.QtGui import QPainter, QPixmap
from PySide6.QtWidgets import QApplication

from facestudio.gui.imaging import rgb_to_qimage
from facestudio.gui.main_window import STEPS, MainWindow


def grab_window(window: MainWindow) -> QPixmap:
    """The window as the user sees it, 3D viewport included."""
    QApplication.processEvents()
    pixmap = window.grab()
    plotter = window.viewport.plotter
    if plotter is not None:
        plotter.render()
        widget = plotter.interactor
        rgb = plotter.screenshot(return_img=True)
        image = rgb_to_qimage(rgb).scaled(widget.width(), widget.height())
        painter = QPainter(pixmap)
        painter.drawImage(widget.mapTo(window, QPoint(0, 0)), image)
        painter.end()
    return pixmap


def save_screenshots(window: MainWindow, out_dir: str | Path) -> list[Path]:
    """One PNG per workflow step (``01-capture.png`` ...); returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    current = window.nav.currentRow()
    paths = []
    for n, step in enumerate(STEPS, 1):
        window.show_step(step)
        path = out / f"{n:02d}-{step.lower()}.png"
        if not grab_window(window).save(str(path)):
            raise OSError(f"could not write {path}")
        paths.append(path)
    window.nav.setCurrentRow(current)
    return paths

"""Screenshots of every workflow step, for docs and for checking the GUI by eye.

``QWidget.grab()`` does not capture the VTK render window (it is drawn by OpenGL, outside
Qt's backing store, and comes out black or stale), so the viewport's own rendering is
painted over its place in the grab.

The Library is shown with real content: the screenshot waits for the panel's background
read of the library, then shows a fused segment (mesh in the viewport, quality report) and,
in a second picture, a take. Train waits for its run list and preview render; Generate for
a generated mesh, then applies the "surprise" preset (the expression the tour's library
records besides neutral: a model moves a face only in ways its training data showed) and
waits for that mesh.
"""

from __future__ import annotations

from pathlib import Path

import time
from collections.abc import Callable

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


def _wait(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Run the event loop until ``condition`` holds (background jobs deliver through it)."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.01)


def _library_views(window: MainWindow) -> list[tuple[str, Callable[[], None]]]:
    """(file suffix, how to get there): a fused segment first, then a take, when there are."""
    panel = window.library_panel
    _wait(lambda: panel.listing is not None and not panel.is_scanning())
    listing = panel.listing or {"segments": [], "takes": []}
    views: list[tuple[str, Callable[[], None]]] = []
    if listing["segments"]:
        views.append(("", lambda: panel.select(listing["segments"][0]["path"])))
    if listing["takes"]:
        views.append(("-take" if views else "", lambda: panel.select(listing["takes"][0]["path"])))
    return views or [("", lambda: None)]


def _train_views(window: MainWindow) -> list[tuple[str, Callable[[], None]]]:
    """The Train page once its runs are listed and the newest autodecoder run's preview is rendered."""
    panel = window.train_panel
    _wait(lambda: panel.runs is not None and not panel.is_reading())
    _wait(lambda: panel._preview_job is None)
    return [("", lambda: None)]


def _generate_views(window: MainWindow) -> list[tuple[str, Callable[[], None]]]:
    """The Generate page with a preset applied, once its final-quality mesh is in the viewport."""
    panel = window.generate_panel
    _wait(lambda: panel.runs is not None and not panel.is_reading())
    if not panel.runs:
        return [("", lambda: None)]
    _wait(lambda: panel.result is not None or panel.banner.kind() == "error", timeout_s=120)
    if panel.result is None:
        return [("", lambda: None)]
    preset = next((i for i in range(panel.preset_combo.count()) if panel.preset_combo.itemData(i) == "surprise"),
                  None)
    if preset is not None:
        shown = panel.result
        panel._preset_chosen(preset)
        _wait(lambda: panel.result is not shown and not panel.worker.busy(), timeout_s=120)
    return [("", lambda: None)]


VIEWS = {"Library": _library_views, "Train": _train_views, "Generate": _generate_views}


def save_screenshots(window: MainWindow, out_dir: str | Path) -> list[Path]:
    """One PNG per workflow step (``01-capture.png`` ...); returns the paths written.

    The Library gets ``02-library.png`` (a segment) and ``02-library-take.png`` (a take).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    current = window.nav.currentRow()
    paths = []
    for n, step in enumerate(STEPS, 1):
        window.show_step(step)
        views = VIEWS[step](window) if step in VIEWS else [("", lambda: None)]
        for suffix, select in views:
            select()
            path = out / f"{n:02d}-{step.lower()}{suffix}.png"
            if not grab_window(window).save(str(path)):
                raise OSError(f"could not write {path}")
            paths.append(path)
    window.nav.setCurrentRow(current)
    return paths

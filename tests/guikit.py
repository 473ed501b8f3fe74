"""The real main window for GUI tests, and the check that it leaves no thread behind."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def main_window(qtbot, library: Path, **kwargs) -> Iterator:
    """Open FaceStudio's window on ``library``; on exit close it and wait until every thread it
    started (jobs, streams, zeroconf, device servers, trainers) has ended, daemons included."""
    from facestudio.gui.main_window import MainWindow

    threads_before = set(threading.enumerate())
    win = MainWindow(library, interfaces=["127.0.0.1"], detect_compute=False, **kwargs)
    qtbot.addWidget(win)
    win.resize(1400, 900)
    win.show()
    qtbot.waitUntil(lambda: win.viewport.plotter is not None, timeout=90_000)
    yield win
    win.close()

    def leftovers() -> list[str]:
        return [t.name for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    qtbot.waitUntil(lambda: not leftovers(), timeout=90_000)

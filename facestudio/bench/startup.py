"""`facestudio bench startup`: seconds from launching `facestudio` to its window on screen.

Each run is a fresh process (interpreter start and imports included, as a user sees it)
that prints "shown" at the main window's first paint and "ready" when the deferred start-up
work (the VTK viewport, whose imports take seconds) is done. Baseline in
the same run: a bare PySide6 QMainWindow, the floor any Qt app pays. Needs a display; with
none, a virtual one (Xvfb) is started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

_BARE_QT = ("from PySide6.QtCore import QTimer\nfrom PySide6.QtWidgets import QApplication, QMainWindow\n"
            "app = QApplication([]); w = QMainWindow(); w.show()\n"
            "QTimer.singleShot(0, lambda: (print('shown', flush=True), app.quit())); app.exec()\n")


def _times(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Seconds from launch to each marker line the process prints ("shown", "ready")."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    marks = {line.strip(): time.perf_counter() - t0 for line in proc.stdout}
    proc.wait(timeout=30)
    if "shown" not in marks:
        raise RuntimeError(f"{cmd[:4]} exited ({proc.returncode}) without showing a window")
    return marks


def bench_startup(runs: int = 5) -> dict[str, Any]:
    display = None
    if not os.environ.get("DISPLAY"):
        try:
            from pyvirtualdisplay import Display   # comes with the test extras (pytest-xvfb)
        except ImportError:
            raise OSError("no display: run under X (or xvfb-run), or install PyVirtualDisplay "
                          "and Xvfb") from None

        display = Display(visible=False, size=(1600, 1000)).start()
    try:
        with tempfile.TemporaryDirectory(prefix="facestudio-startup-") as lib:
            env = {**os.environ, "FACESTUDIO_HOME": lib}
            app_cmd = [sys.executable, "-m", "facestudio", "gui", "--startup-probe"]
            bare_cmd = [sys.executable, "-c", _BARE_QT]
            _times(app_cmd, env)                               # warm the file cache once
            app_marks = [_times(app_cmd, env) for _ in range(runs)]
            bare = [_times(bare_cmd, env)["shown"] for _ in range(runs)]
    finally:
        if display is not None:
            display.stop()
    app = [m["shown"] for m in app_marks]
    ready = [m.get("ready", float("nan")) for m in app_marks]
    return {"benchmark": "startup", "runs": runs,
            "window_shown_median_s": round(float(np.median(app)), 3),
            "window_shown_max_s": round(max(app), 3),
            "viewport_ready_median_s": round(float(np.median(ready)), 3),
            "bare_qt_window_median_s": round(float(np.median(bare)), 3),
            "ratio_to_bare_qt": round(float(np.median(app) / np.median(bare)), 2),
            "goal_s": 2.0}

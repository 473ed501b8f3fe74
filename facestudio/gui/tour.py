"""`facestudio gui --screenshots DIR`: drive the real app through every panel and save PNGs.

Without a library it builds a temporary one the way a new user would: synthetic takes
from the virtual device's renderer (fused into segments), a live virtual device paired
with its PIN, and a tiny autodecoder + diffusion model trained on those segments for about a
minute, so every panel shows real content.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from PySide6.QtWidgets import QApplication

from facestudio.gui.app import apply_look
from facestudio.gui.main_window import MainWindow
from facestudio.gui.screenshots import _wait, save_screenshots
from facestudio.paths import face_model_for


def _fill_library(root: Path, face_model: str | None) -> None:
    from facestudio.dataset.evaluate import record_synthetic_take
    from facestudio.library.operations import fuse_into_library

    take = record_synthetic_take(root / "takes" / "ana" / "expressions-01", 120, 12,
                                 face_model=face_model, seed=1, subject="ana", take="expressions-01")
    fuse_into_library(root, take)
    record_synthetic_take(root / "takes" / "ben" / "neutral-01", 48, 12, face_model=face_model,
                          seed=2, subject="ben", take="neutral-01")


def _train_models(root: Path, face_model: str | None, autodecoder_steps: int = 120,
                  diffusion_steps: int = 200) -> None:
    """A tiny autodecoder and diffusion model on the fused segments, through the core trainers
    (about a minute on two cores): enough for the Train page's curves and preview and for a
    recognisable head on the Generate page, not for a good face."""
    from facestudio.dataset.segment import find_segments
    from facestudio.gui.model_runs import gui_threads, new_run_dir
    from facestudio.models.config import load_config, with_face_model
    from facestudio.models.diffusion_config import load_diffusion_config
    from facestudio.models.train_autodecoder import train_autodecoder
    from facestudio.models.train_diffusion import train_diffusion

    config = with_face_model(load_config("tiny"), face_model)   # the rig registers the expressions
    config.train.num_threads = gui_threads()
    config.train.checkpoint_every = autodecoder_steps // 2
    autodecoder = new_run_dir(root, "autodecoder")
    train_autodecoder(find_segments(root / "datasets"), autodecoder, config, "cpu", autodecoder_steps)
    diffusion = load_diffusion_config("tiny")
    diffusion.train.num_threads = gui_threads()
    train_diffusion(autodecoder, new_run_dir(root, "diffusion"), diffusion, "cpu", diffusion_steps)


def run_screenshot_tour(out_dir: str | Path, library: str | None = None,
                        face_model: str | None = None) -> list[Path]:
    with tempfile.TemporaryDirectory(prefix="facestudio-tour-") as tmp:
        root = Path(library) if library else Path(tmp)
        face_model = face_model_for(root, face_model)
        if library is None:
            _fill_library(root, face_model)
            _train_models(root, face_model)
        app = QApplication.instance() or QApplication([])
        apply_look(app)
        window = MainWindow(root, interfaces=["127.0.0.1"],
                            virtual_source=_source(face_model))
        window.resize(1600, 1000)
        window.show()
        try:
            _wait(lambda: window.viewport.plotter is not None)
            capture = window.capture
            capture.add_virtual_device()

            def listed():
                ids = {d.info.device_id for d in capture._virtual.values()}
                return next((d for d in capture._devices if d.device_id in ids), None)
            _wait(lambda: listed() is not None, timeout_s=120)
            device = listed()
            if device is None:
                raise RuntimeError("the virtual device did not appear in the device list within "
                                   f"120 s: {capture.banner.text()}")
            capture.connect_with_pin(device, capture._virtual[device.device_id].pin)
            _wait(lambda: capture._client is not None and capture._client.stats.frames > 20,
                  timeout_s=120)
            _wait(lambda: False, timeout_s=1.0)      # let the previews and point cloud update
            return save_screenshots(window, out_dir)
        finally:
            window.close()


def _source(face_model: str | None):
    from facestudio.gui.capture_panel import synthetic_source

    return synthetic_source(face_model)

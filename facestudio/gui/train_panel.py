"""Journey step 3 (PRODUCT.md): train the autodecoder, then the diffusion model, in the background.

Each stage calls the same core function as `facestudio train ...` (train_autodecoder /
train_diffusion) in a job whose cancel event is the trainer's stop event, so Pause and Stop
end the run after the current step with a checkpoint, and closing the window does the same.
Runs live in LIBRARY/models/<stage>/<run>; the page lists them on every visit, so a run
started yesterday (or from the CLI) can be resumed from its newest checkpoint.

Pause holds the run: one click on Resume continues it. Stop ends the session and frees the
page for a new run; the run stays in the list and can still be resumed later.

Only one training job runs at a time: both stages compete for the same cores, and the torch
thread count is process-wide. New runs use every core but one (``train.num_threads``), so
the GUI thread keeps a core (REFERENCE.md sec. 5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (QComboBox, QFormLayout, QGridLayout, QGroupBox, QHBoxLayout, QLabel,
                               QProgressBar, QPushButton, QScrollArea, QSpinBox, QVBoxLayout, QWidget)

from facestudio.gui.imaging import rgb_to_qimage
from facestudio.gui.loss_plot import LossPlot
from facestudio.gui.model_runs import RunInfo, gui_threads, new_run_dir
from facestudio.gui.pages import Banner, hint, page_header
from facestudio.gui.workers import Job, Jobs
from facestudio.settings import current_settings, with_settings_vgg19

TITLES = {"autodecoder": "1 · Autodecoder", "diffusion": "2 · Diffusion model"}
PURPOSE = {
    "autodecoder": "Learns one latent volume per fused segment and a decoder from it to the expression, "
                   "as a deformation of the person's neutral scan (radiance presets: a colored 3D field).",
    "diffusion": "Learns to generate those latent volumes from a person's neutral face and an expression.",
}
PREVIEW_SIZE = 128


def _eta(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class StageBox(QGroupBox):
    """The controls, progress, loss curve (and for stage 1, preview) of one training stage."""

    def __init__(self, kind: str, parent: QWidget | None = None):
        super().__init__(TITLES[kind], parent)
        self.kind = kind
        self.run_combo = QComboBox()
        self.run_combo.setToolTip("Runs in the library (newest first). Resume continues the selected "
                                  "run from its newest checkpoint; Start always begins a new run.")
        self.source_combo = QComboBox()          # diffusion: which autodecoder run to learn from
        self.source_combo.setToolTip("The trained autodecoder whose latents this model learns")
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(["tiny", "paper"])
        self.preset_combo.setToolTip("tiny: minutes on a laptop CPU · paper: the paper's sizes, for GPUs")
        self.device_combo = QComboBox()
        self.device_combo.addItem("auto")
        self.device_combo.setToolTip("auto picks CUDA, then Apple MPS, then the CPU")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 10_000_000)
        self.steps_spin.setSingleStep(100)
        self.steps_spin.setToolTip("Train until this step (a resumed run continues up to it)")

        self.start_button = QPushButton("Start")
        self.start_button.setObjectName("primary")
        self.start_button.setToolTip("Start a new run with this preset")
        self.pause_button = QPushButton("Pause")
        self.pause_button.setToolTip("Stop after the current step and keep a checkpoint; Resume continues")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("End this training session after the current step (a checkpoint is "
                                    "kept: select the run later and Resume to continue)")
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue the selected run from its newest checkpoint")

        self.progress = QProgressBar()
        self.progress.setObjectName("fuseProgress")
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.status = QLabel("Idle")
        self.status.setObjectName("stats")
        self.plot = LossPlot()
        self.preview = QLabel("no preview yet")
        self.preview.setObjectName("thumb")
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.setFixedSize(PREVIEW_SIZE + 8, PREVIEW_SIZE + 8)
        self.preview_caption = QLabel("")
        self.preview_caption.setObjectName("hint")
        self.preview_caption.setWordWrap(True)
        self.preview_caption.setFixedWidth(PREVIEW_SIZE + 8)

        form = QFormLayout()
        form.addRow("Run", self.run_combo)
        if kind == "diffusion":
            form.addRow("Autodecoder", self.source_combo)
        settings = QHBoxLayout()
        for label, widget in (("Preset", self.preset_combo), ("Device", self.device_combo),
                              ("Steps", self.steps_spin)):
            settings.addWidget(QLabel(label))
            settings.addWidget(widget, 1)
        form.addRow(settings)
        buttons = QHBoxLayout()
        for button in (self.start_button, self.pause_button, self.stop_button, self.resume_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        grid = QGridLayout()
        grid.addWidget(self.plot, 0, 0, 2, 1)
        if kind == "autodecoder":
            grid.addWidget(self.preview, 0, 1)
            grid.addWidget(self.preview_caption, 1, 1, Qt.AlignmentFlag.AlignTop)
        grid.setColumnStretch(0, 1)

        layout = QVBoxLayout(self)
        layout.addWidget(hint(PURPOSE[kind]))
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addLayout(grid, 1)

    def selected_run(self) -> RunInfo | None:
        return self.run_combo.currentData()

    def set_preview(self, rgb: np.ndarray, caption: str) -> None:
        self.preview.setPixmap(QPixmap.fromImage(rgb_to_qimage(rgb)).scaled(
            PREVIEW_SIZE, PREVIEW_SIZE, Qt.AspectRatioMode.KeepAspectRatio,
            Qt.TransformationMode.SmoothTransformation))
        self.preview_caption.setText(caption)


class TrainPanel(QWidget):
    notice = Signal(str)               # one line of news for the status bar

    def __init__(self, library: Path, jobs: Jobs, parent: QWidget | None = None):
        super().__init__(parent)
        self.library = Path(library)
        self.jobs = jobs
        self.runs: dict[str, list[RunInfo]] | None = None   # None until the first read
        self._presets: dict[str, dict[str, int]] = {}
        self._read_job: Job | None = None
        self._read_again = False
        self._preview_job: Job | None = None
        self._job: Job | None = None                  # the training job (one at a time)
        self._job_kind = ""
        self._job_run: Path | None = None
        self._stop_mode = ""                           # "pause" or "stop" while stopping
        self._paused: dict[str, str | None] = {"autodecoder": None, "diffusion": None}
        self._select_after_read: dict[str, str] = {}
        self._closed = False
        self._preferred_device = current_settings().device

        self.banner = Banner()
        self.stages = {kind: StageBox(kind) for kind in ("autodecoder", "diffusion")}
        for kind, box in self.stages.items():
            box.start_button.clicked.connect(lambda _=False, k=kind: self.start(k))
            box.resume_button.clicked.connect(lambda _=False, k=kind: self.resume(k))
            box.pause_button.clicked.connect(lambda _=False: self.pause())
            box.stop_button.clicked.connect(lambda _=False, k=kind: self.stop(k))
            box.run_combo.currentIndexChanged.connect(lambda _=0, k=kind: self._run_selected(k))
            box.preset_combo.currentTextChanged.connect(lambda _="", k=kind: self._preset_changed(k))
            box.source_combo.currentIndexChanged.connect(lambda _=0: self._update_buttons())

        content = QWidget()
        column = QVBoxLayout(content)
        column.setContentsMargins(0, 0, 0, 0)
        for box in self.stages.values():
            column.addWidget(box, 1)
        scroll = QScrollArea()
        scroll.setObjectName("detailsArea")
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(content)
        self.summary_label = hint("Reading the runs in the library…")
        header = page_header("Train", self.summary_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(14, 12, 14, 12)
        layout.addLayout(header)
        layout.addWidget(self.banner)
        layout.addWidget(scroll, 1)
        self._update_buttons()

    # ------------------------------------------------------------------ messages
    def show_message(self, text: str, kind: str = "info") -> None:
        self.banner.show_message(text, kind)
        self.notice.emit(text)

    # ------------------------------------------------------------------ reading the runs
    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        if not event.spontaneous():
            self.refresh()

    def refresh(self) -> None:
        """Read both stages' runs, the presets and the usable devices in the background."""
        if self._closed:
            return
        if self._read_job is not None:
            self._read_again = True
            return
        library = self.library

        def read(_job: Job) -> dict[str, Any]:
            from facestudio.gui import model_runs

            return {"runs": {k: model_runs.list_runs(library, k) for k in model_runs.KINDS},
                    "presets": model_runs.preset_steps(), "devices": model_runs.available_devices()}

        self._read_job = self.jobs.start("read training runs", read, on_success=self._read,
                                         on_error=self._read_failed)

    def apply_settings(self) -> None:
        """The compute device saved in Settings becomes each stage's choice."""
        self._preferred_device = current_settings().device
        for box in self.stages.values():
            box.device_combo.setCurrentText(self._preferred_device)

    def is_reading(self) -> bool:
        return self._read_job is not None

    def _read(self, result: dict[str, Any]) -> None:
        self._read_job = None
        first = self.runs is None
        self.runs, self._presets = result["runs"], result["presets"]
        for kind, box in self.stages.items():
            if box.device_combo.count() != len(result["devices"]):
                current = box.device_combo.currentText()
                box.device_combo.clear()
                box.device_combo.addItems(result["devices"])
                box.device_combo.setCurrentText(self._preferred_device if first else current)
            self._fill_runs(kind, self._select_after_read.pop(kind, None))
            if first:
                self._preset_changed(kind)
        done = {k: sum(r.step is not None for r in v) for k, v in self.runs.items()}
        self.summary_label.setText(f"{done['autodecoder']} autodecoder and {done['diffusion']} diffusion "
                                   f"run(s) in {self.library / 'models'}")
        if self._read_again:
            self._read_again = False
            self.refresh()

    def _read_failed(self, exc: Exception) -> None:
        self._read_job = None
        self.show_message(f"Could not read the training runs: {exc}", "error")

    def _fill_runs(self, kind: str, select: str | None) -> None:
        box = self.stages[kind]
        # Keep the user's choice; on the first read show the newest run (the one most likely to resume).
        if select is None and box.run_combo.count() == 0 and self.runs[kind]:
            select = self.runs[kind][0].path
        keep = select or (box.selected_run().path if box.selected_run() else None)
        box.run_combo.blockSignals(True)
        box.run_combo.clear()
        box.run_combo.addItem("New run (Start)", None)
        for info in self.runs[kind]:
            box.run_combo.addItem(info.label(), info)
            if info.path == keep:
                box.run_combo.setCurrentIndex(box.run_combo.count() - 1)
        box.run_combo.blockSignals(False)
        if kind == "diffusion":
            source = box.source_combo.currentData()
            box.source_combo.blockSignals(True)
            box.source_combo.clear()
            for info in self.runs["autodecoder"]:
                if info.step is not None:
                    box.source_combo.addItem(info.label(), info.path)
                    if info.path == source:
                        box.source_combo.setCurrentIndex(box.source_combo.count() - 1)
            box.source_combo.blockSignals(False)
        self._run_selected(kind)

    def _run_selected(self, kind: str) -> None:
        """Show the selected run's loss history (and stage 1's preview); offer Resume."""
        box = self.stages[kind]
        info = box.selected_run()
        if self._job is None or self._job_kind != kind:
            box.plot.set_points(info.losses if info else [])
            if info is not None:
                box.steps_spin.setValue(max(info.max_steps, (info.step or 0) + 1))
                box.status.setText(f"Run {info.name}: " + (f"checkpoint at step {info.step:,}"
                                   if info.step is not None else "no checkpoint yet"))
                box.progress.setValue(int(100 * (info.step or 0) / max(info.max_steps, 1)))
            else:
                self._preset_changed(kind)
                box.status.setText("Idle")
                box.progress.setValue(0)
            if kind == "autodecoder" and info is not None and info.step is not None:
                self._start_preview(info)
        self._update_buttons()

    def _preset_changed(self, kind: str) -> None:
        box = self.stages[kind]
        steps = self._presets.get(kind, {}).get(box.preset_combo.currentText())
        if steps and box.selected_run() is None:
            box.steps_spin.setValue(steps)

    def _start_preview(self, info: RunInfo) -> None:
        if self._preview_job is not None or self._closed:
            return
        path = info.path

        def render(_job: Job) -> tuple[np.ndarray, str]:
            from facestudio.gui.model_runs import render_preview

            return render_preview(Path(path), PREVIEW_SIZE), f"{info.name}, step {info.step:,}, object 0"

        self._preview_job = self.jobs.start("render preview", render, on_success=self._preview_done,
                                            on_error=self._preview_failed)

    def _preview_done(self, result: tuple[np.ndarray, str]) -> None:
        self._preview_job = None
        self.stages["autodecoder"].set_preview(result[0], f"Preview · {result[1]}")

    def _preview_failed(self, exc: Exception) -> None:
        self._preview_job = None
        self.stages["autodecoder"].preview_caption.setText(f"No preview: {exc}")

    # ------------------------------------------------------------------ buttons
    def _update_buttons(self) -> None:
        running = self._job is not None
        stopping = running and self._job.cancel.is_set()
        for kind, box in self.stages.items():
            mine = running and self._job_kind == kind
            info = box.selected_run()
            paused = self._paused[kind] is not None
            can_start = not running and not paused and (kind == "autodecoder" or box.source_combo.count() > 0)
            box.start_button.setEnabled(can_start)
            box.resume_button.setEnabled(not running and info is not None and info.step is not None)
            box.pause_button.setEnabled(mine and not stopping)
            box.stop_button.setEnabled((mine and not stopping) or (paused and not running))
            for widget in (box.run_combo, box.source_combo, box.preset_combo, box.device_combo, box.steps_spin):
                widget.setEnabled(not mine)
            box.resume_button.setObjectName("primary" if paused else "")
            box.resume_button.style().unpolish(box.resume_button)
            box.resume_button.style().polish(box.resume_button)
            if kind == "diffusion" and box.source_combo.count() == 0:
                box.start_button.setToolTip("Train an autodecoder first: the diffusion model learns its latents")
            else:
                box.start_button.setToolTip("Start a new run with this preset")

    def is_training(self) -> bool:
        return self._job is not None

    def start(self, kind: str) -> None:
        """A new run of ``kind`` with the chosen preset, device and step count."""
        if self._job is not None:
            return
        box = self.stages[kind]
        preset, device, steps = box.preset_combo.currentText(), box.device_combo.currentText(), box.steps_spin.value()
        run_dir = new_run_dir(self.library, kind)
        library = self.library
        source = box.source_combo.currentData()
        if kind == "diffusion" and not source:
            self.show_message("Train an autodecoder first: the diffusion model learns its latents.", "error")
            return

        def train(job: Job) -> dict[str, Any]:
            if kind == "autodecoder":
                from facestudio.dataset.segment import find_segments
                from facestudio.models.config import load_config, with_face_model
                from facestudio.paths import face_model_for

                root = library / "datasets"
                segments = find_segments(root) if root.exists() else []
                if not segments:
                    raise ValueError("there are no fused segments to train on: record takes and fuse "
                                     "them in the Library first")
                config = with_face_model(with_settings_vgg19(load_config(preset)), face_model_for(library, None))
                config.train.num_threads = gui_threads()
                return _train(job, kind, run_dir, dict(segments=segments, config=config, device=device,
                                                       max_steps=steps, resume=False))
            from facestudio.models.diffusion_config import load_diffusion_config

            config = load_diffusion_config(preset)
            config.train.num_threads = gui_threads()
            return _train(job, kind, run_dir, dict(autodecoder_run=Path(source), config=config, device=device,
                                                   max_steps=steps, resume=False))

        box.plot.set_points([])
        if kind == "autodecoder":
            box.preview.setPixmap(QPixmap())
            box.preview.setText("no preview yet")
            box.preview_caption.setText("")
        self._launch(kind, run_dir, train, f"Starting a new {preset} run {run_dir.name}…")

    def resume(self, kind: str) -> None:
        """Continue the selected run from its newest checkpoint, up to the Steps value."""
        box = self.stages[kind]
        info = box.selected_run()
        if self._job is not None or info is None or info.step is None:
            return
        steps, device = box.steps_spin.value(), box.device_combo.currentText()
        if steps <= info.step:
            self.show_message(f"Run {info.name} is already at step {info.step:,}: raise Steps above that "
                              "to train it further.", "info")
            return
        run_dir = Path(info.path)
        source = "segments" if kind == "autodecoder" else "autodecoder_run"   # the run's own, on resume
        args = {source: None, "config": None, "device": device, "max_steps": steps, "resume": True}
        self._launch(kind, run_dir, lambda job: _train(job, kind, run_dir, args),
                     f"Resuming {info.name} from step {info.step:,}…")

    def _launch(self, kind: str, run_dir: Path, fn, text: str) -> None:
        self._paused[kind] = None
        self._stop_mode = ""
        self._job_kind, self._job_run = kind, run_dir
        self.banner.hide()
        self.stages[kind].status.setText(text)
        self._job = self.jobs.start(f"train {kind}", fn, on_success=self._trained, on_error=self._train_failed,
                                    on_progress=self._progress)
        self._update_buttons()

    def pause(self) -> None:
        self._request_stop("pause")

    def stop(self, kind: str) -> None:
        if self._job is not None and self._job_kind == kind:
            self._request_stop("stop")
        elif self._paused[kind] is not None:
            self._paused[kind] = None
            self.stages[kind].status.setText("Stopped. Select the run and Resume to continue it later.")
            self._update_buttons()

    def _request_stop(self, mode: str) -> None:
        if self._job is None or self._job.cancel.is_set():
            return
        self._stop_mode = mode
        self._job.cancel.set()
        self.stages[self._job_kind].status.setText(
            ("Pausing" if mode == "pause" else "Stopping") + " after the current step…")
        self._update_buttons()

    # ------------------------------------------------------------------ training results
    def _progress(self, data: dict[str, Any]) -> None:
        box = self.stages[self._job_kind]
        if "preview" in data:
            box.set_preview(data["preview"], f"Preview · step {data['step']:,}, object 0")
            return
        p = data
        if p.get("phase") == "registering":
            box.progress.setValue(int(100 * p["done"] / max(p["total"], 1)))
            box.progress.setFormat(f"registering {p['done']} / {p['total']}")
            box.status.setText(f"Registering each expression onto its neutral scan: {p['done']}/{p['total']}")
            return
        box.progress.setValue(int(100 * p["step"] / max(p["total_steps"], 1)))
        box.progress.setFormat(f"{p['step']:,} / {p['total_steps']:,}  (%p%)")
        if not self._job.cancel.is_set():
            box.status.setText(f"step {p['step']:,}/{p['total_steps']:,}  loss {p['loss']:.4f}  "
                               f"{p['steps_per_s']:.2f} steps/s  ETA {_eta(p['eta_s'])}")
        box.plot.add_point(int(p["step"]), float(p["loss"]))

    def _trained(self, summary: dict[str, Any]) -> None:
        kind = self._job_kind
        box = self.stages[kind]
        step = summary["step"]
        if summary["stopped_early"] and self._stop_mode == "pause":
            self._paused[kind] = summary["run"]
            text = f"Paused at step {step:,} (checkpoint saved). Resume continues from there."
        elif summary["stopped_early"]:
            text = f"Stopped at step {step:,} (checkpoint saved). Select the run and Resume to continue later."
        else:
            loss = "" if summary["loss"] is None else f", loss {summary['loss']:.4f}"
            text = (f"Trained to step {step:,} in {summary['seconds']:.0f} s{loss} "
                    f"({summary['device']}, {summary['threads']} threads).")
        box.status.setText(text)
        self.show_message(f"{TITLES[kind]}: {text}", "success")
        self._select_after_read[kind] = summary["run"]
        self._train_ended()

    def _train_failed(self, exc: Exception) -> None:
        kind = self._job_kind
        self.stages[kind].status.setText("Failed")
        self.show_message(f"{TITLES[kind]} training failed: {exc}", "error")
        if self._job_run is not None and self._job_run.exists():
            self._select_after_read[kind] = str(self._job_run)
        self._train_ended()

    def _train_ended(self) -> None:
        self._job = None
        self._update_buttons()
        self.refresh()

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        """The window closes: start nothing more (the window's Jobs stop the running ones)."""
        self._closed = True


def _train(job: Job, kind: str, run_dir: Path, args: dict[str, Any]) -> dict[str, Any]:
    """Run one stage's trainer in this job's thread; progress dicts (and stage-1 previews) go to the GUI.

    A stage-1 preview is rendered whenever the trainer has written a new checkpoint, and once at
    the end, so its cost follows the run's own checkpoint interval.
    """
    from facestudio.gui.model_runs import render_preview
    from facestudio.models.runs import Run

    seen: dict[str, Any] = {"checkpoint": None}

    def preview() -> None:
        latest = Run(run_dir).latest_checkpoint()
        if latest is not None and latest != seen["checkpoint"]:
            seen["checkpoint"] = latest
            step = int(latest.name.rsplit("_", 1)[-1])
            job.report({"preview": render_preview(run_dir, PREVIEW_SIZE), "step": step})

    def progress(p: dict[str, Any]) -> None:
        job.report(dict(p))
        if kind == "autodecoder":
            preview()

    if kind == "autodecoder":
        from facestudio.models.train_autodecoder import train_autodecoder

        summary = train_autodecoder(run_dir=run_dir, progress_cb=progress, stop_event=job.cancel, **args)
        preview()
        return summary
    from facestudio.models.train_diffusion import train_diffusion

    return train_diffusion(run_dir=run_dir, progress_cb=progress, stop_event=job.cancel, **args)

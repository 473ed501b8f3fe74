"""Journey step 4 (PRODUCT.md): a person, an expression on 52 sliders, the avatar in the viewport.

The page calls the core's :class:`facestudio.generation.generate.Generator` - what
`facestudio generate` uses - off the GUI thread:

* loading a diffusion run and preparing a person (their fused neutral scan, which a deformation
  model moves; for a radiance model a neutral segment it never saw is encoded first, up to a
  minute) run as jobs;
* meshes come from one :class:`LatestWorker`: while a slider moves, requests at preview quality
  (few sampler steps, the fixed seed) are debounced by ~100 ms and only the newest is served;
  letting go asks for final quality. Every Generator call holds one lock, since the model is
  not meant to be used from two threads at once.

Meshes arrive as numpy arrays and become VTK data on the GUI thread; the camera is never reset
after the first mesh, so the view stays where the user put it. Live input (Live Link Face on
UDP) moves the sliders like a hand would.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QGridLayout, QGroupBox,
                               QHBoxLayout, QLabel, QProgressBar, QPushButton, QScrollArea, QSpinBox,
                               QVBoxLayout, QWidget)

from facestudio.capture.livelink import DEFAULT_PORT, LiveLinkFrame
from facestudio.gui.expression_sliders import ExpressionSliders
from facestudio.gui.latest_worker import LatestWorker
from facestudio.gui.live_input import LiveInput
from facestudio.gui.mesh_layer import MeshLayer
from facestudio.gui.model_runs import Person, RunInfo
from facestudio.gui.pages import Banner, hint, page_header
from facestudio.gui.viewport import Viewport
from facestudio.gui.workers import Job, Jobs
from facestudio.settings import current_settings

DEBOUNCE_MS = 100
MESH_FILTER = "PLY mesh (*.ply);;OBJ mesh (*.obj);;STL mesh (*.stl);;glTF binary (*.glb)"


@dataclass(frozen=True)
class Request:
    generator: Any
    person: str
    weights: np.ndarray
    seed: int
    steps: int
    guidance: float
    quality: str            # "preview" or "final"


class GeneratePanel(QWidget):
    notice = Signal(str)
    mesh_shown = Signal(str)          # "preview" / "final": a generated mesh is in the viewport

    def __init__(self, library: Path, jobs: Jobs, viewport: Viewport, parent: QWidget | None = None):
        super().__init__(parent)
        self.library = Path(library)
        self.jobs = jobs
        self.viewport = viewport
        self.mesh = MeshLayer(viewport, "generated-mesh")
        self.generator: Any = None
        self.person: Person | None = None         # prepared (its latent is known)
        self.result: tuple[Request, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
        self.shown_mesh = None                    # the pyvista mesh in the viewport
        self._title = ""
        self.runs: list[RunInfo] | None = None
        self.people: list[Person] = []
        self._lock = threading.Lock()             # one Generator call at a time
        self._read_job: Job | None = None
        self._load_job: Job | None = None
        self._person_job: Job | None = None
        self._export_job: Job | None = None
        self._camera = None                       # kept while the page is hidden
        self._closed = False
        self.worker = LatestWorker(self._generate, "generate-mesh")
        self.worker.signals.succeeded.connect(self._generated)
        self.worker.signals.failed.connect(self._generate_failed)
        self.worker.signals.idle.connect(self._worker_idle)
        self.live = LiveInput(self)
        self.live.frame.connect(self._live_frame)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self._debounced)
        self._build()
        self._update_controls()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.banner = Banner()
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("A trained diffusion run (Train page, or `facestudio train`)")
        self.model_combo.currentIndexChanged.connect(self._model_selected)
        self.person_combo = QComboBox()
        self.person_combo.setToolTip("Neutral segments in the library, also of people the model never saw: "
                                     "the avatar is their fused neutral scan with the expression.")
        self.person_combo.activated.connect(self._person_selected)
        self.busy = QProgressBar()
        self.busy.setObjectName("fuseProgress")
        self.busy.setRange(0, 0)
        self.busy.setMaximumHeight(14)
        self.busy.setTextVisible(False)
        self.busy.hide()
        self.state_label = QLabel("")
        self.state_label.setObjectName("stats")
        source = QGroupBox("Model and person")
        form = QGridLayout(source)
        form.addWidget(QLabel("Model"), 0, 0)
        form.addWidget(self.model_combo, 0, 1)
        form.addWidget(QLabel("Person"), 1, 0)
        form.addWidget(self.person_combo, 1, 1)
        form.addWidget(self.busy, 2, 0, 1, 2)
        form.addWidget(self.state_label, 3, 0, 1, 2)
        form.setColumnStretch(1, 1)

        self.preset_combo = QComboBox()
        self.preset_combo.addItem("Preset…", None)
        self.preset_combo.setToolTip("Expression presets from resources/presets/expressions")
        self.preset_combo.activated.connect(self._preset_chosen)
        self.mirror_check = QCheckBox("Mirror L/R")
        self.mirror_check.setChecked(True)
        self.mirror_check.setToolTip("Moving a left slider moves its right twin, and back")
        self.mirror_check.toggled.connect(lambda on: setattr(self.sliders, "mirror", on))
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip("All sliders to 0 (the person's neutral face)")
        self.reset_button.clicked.connect(lambda: self.sliders.set_weights(np.zeros(52, np.float32)))
        self.sliders = ExpressionSliders()
        self.sliders.dragged.connect(self._debounce.start)
        self.sliders.released.connect(self._released)
        self.sliders.set_programmatically.connect(self._set_programmatically)
        scroll = QScrollArea()
        scroll.setObjectName("detailsArea")
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(self.sliders)
        expression = QGroupBox("Expression (ARKit blendshapes)")
        ex = QVBoxLayout(expression)
        row = QHBoxLayout()
        row.addWidget(self.preset_combo, 1)
        row.addWidget(self.mirror_check)
        row.addWidget(self.reset_button)
        ex.addLayout(row)
        ex.addWidget(scroll, 1)

        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setToolTip("The sampler's starting noise: the same seed gives the same face")
        self.preview_steps = QSpinBox()
        self.preview_steps.setRange(1, 256)
        self.preview_steps.setToolTip("Sampler steps while dragging (fast)")
        self.final_steps = QSpinBox()
        self.final_steps.setRange(1, 256)
        self.final_steps.setToolTip("Sampler steps when a slider is released (final quality)")
        self.guidance_spin = QDoubleSpinBox()
        self.guidance_spin.setRange(0.0, 20.0)
        self.guidance_spin.setSingleStep(0.5)
        self.guidance_spin.setToolTip("Classifier-free guidance weight (1 = the conditional model alone)")
        for spin in (self.seed_spin, self.final_steps, self.guidance_spin):
            spin.editingFinished.connect(lambda: self.request("final"))
        self.export_button = QPushButton("Export mesh…")
        self.export_button.setToolTip("Save the generated mesh as PLY, OBJ, STL or GLB (vertex colors "
                                      "except STL)")
        self.export_button.clicked.connect(self._export_clicked)
        self.screenshot_button = QPushButton("Screenshot…")
        self.screenshot_button.setToolTip("Save the 3D viewport as a PNG image")
        self.screenshot_button.clicked.connect(self._screenshot_clicked)
        self.live_check = QCheckBox("Live input")
        self.live_check.setToolTip("Drive the sliders from Live Link Face (iPhone/iPad face tracking) "
                                   "sending to this computer's UDP port")
        self.live_check.toggled.connect(self._live_toggled)
        self.port_spin = QSpinBox()
        self.port_spin.setRange(1, 65535)
        self.port_spin.setValue(DEFAULT_PORT)
        self.port_spin.setToolTip("UDP port Live Link Face sends to (its default is 11111)")
        self.live_label = QLabel("")
        self.live_label.setObjectName("hint")
        output = QGroupBox("Output")
        out = QGridLayout(output)
        for col, (label, widget) in enumerate((("Seed", self.seed_spin), ("Preview steps", self.preview_steps),
                                               ("Final steps", self.final_steps),
                                               ("Guidance", self.guidance_spin))):
            out.addWidget(QLabel(label), 0, 2 * col)
            out.addWidget(widget, 0, 2 * col + 1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.export_button)
        buttons.addWidget(self.screenshot_button)
        buttons.addStretch(1)
        buttons.addWidget(self.live_check)
        buttons.addWidget(QLabel("port"))
        buttons.addWidget(self.port_spin)
        out.addLayout(buttons, 1, 0, 1, 8)
        out.addWidget(self.live_label, 2, 0, 1, 8)

        self.summary_label = hint("Reading the trained models…")
        header = page_header("Generate", self.summary_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(14, 12, 14, 12)
        layout.addLayout(header)
        layout.addWidget(self.banner)
        layout.addWidget(source)
        layout.addWidget(expression, 1)
        layout.addWidget(output)

    # ------------------------------------------------------------------ messages and state
    def show_message(self, text: str, kind: str = "info") -> None:
        self.banner.show_message(text, kind)
        self.notice.emit(text)

    def _update_controls(self) -> None:
        ready = self.generator is not None and self.person is not None
        loading = self._load_job is not None or self._person_job is not None
        self.busy.setVisible(loading or self.worker.busy())
        self.person_combo.setEnabled(self.generator is not None and self._person_job is None)
        for widget in (self.sliders, self.preset_combo, self.mirror_check, self.reset_button, self.seed_spin,
                       self.preview_steps, self.final_steps, self.guidance_spin):
            widget.setEnabled(ready)
        self.live_check.setEnabled(ready or self.live.is_running())
        self.port_spin.setEnabled(not self.live.is_running())
        self.export_button.setEnabled(self.result is not None and self._export_job is None)
        self.screenshot_button.setEnabled(self.shown_mesh is not None)

    # ------------------------------------------------------------------ visibility
    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        if event.spontaneous():
            return
        self.refresh()
        if self.shown_mesh is not None and self.mesh.show(self.shown_mesh, self._title):
            if self._camera is not None:
                self.viewport.plotter.camera_position = self._camera
                self.viewport.render()

    def hideEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().hideEvent(event)
        if not event.spontaneous() and self.viewport.plotter is not None and self.mesh.points():
            self._camera = self.viewport.plotter.camera_position
            self.mesh.hide()

    # ------------------------------------------------------------------ models and people
    def refresh(self) -> None:
        """List the diffusion runs (with a checkpoint) and the expression presets in the background."""
        if self._closed or self._read_job is not None:
            return
        library = self.library

        def read(_job: Job) -> dict[str, Any]:
            from facestudio.generation.presets import preset_names
            from facestudio.gui.model_runs import list_runs

            return {"runs": [r for r in list_runs(library, "diffusion") if r.step is not None],
                    "presets": preset_names()}

        self._read_job = self.jobs.start("read models", read, on_success=self._read, on_error=self._read_failed)

    def is_reading(self) -> bool:
        return self._read_job is not None

    def _read(self, result: dict[str, Any]) -> None:
        self._read_job = None
        self.runs = result["runs"]
        if self.preset_combo.count() == 1:
            for name in result["presets"]:
                self.preset_combo.addItem(name.replace("_", " "), name)
        current = self.model_combo.currentData()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for info in self.runs:
            self.model_combo.addItem(info.label(), info)
            if current is not None and info.path == current.path:
                self.model_combo.setCurrentIndex(self.model_combo.count() - 1)
        self.model_combo.blockSignals(False)
        if not self.runs:
            self.summary_label.setText("No trained diffusion model yet: train both stages on the Train page.")
        else:
            self.summary_label.setText(f"{len(self.runs)} diffusion model(s) in {self.library / 'models'}")
        selected = self.model_combo.currentData()
        if selected is not None and (self.generator is None or Path(self.generator.run_dir) != Path(selected.path)):
            self._model_selected()

    def _read_failed(self, exc: Exception) -> None:
        self._read_job = None
        self.show_message(f"Could not read the trained models: {exc}", "error")

    def _model_selected(self) -> None:
        info: RunInfo | None = self.model_combo.currentData()
        if info is None or self._closed or self._load_job is not None:
            return
        library, path = self.library, Path(info.path)

        def load(_job: Job) -> tuple[Any, list[Person]]:
            import torch

            from facestudio.generation.generate import Generator
            from facestudio.gui.model_runs import gui_threads, people
            from facestudio.models.train_autodecoder import resolve_device

            torch.set_num_threads(gui_threads())
            with self._lock:
                generator = Generator(path, str(resolve_device(current_settings().device)))
            return generator, people(library, [str(p) for p in generator.autodecoder.segment_paths])

        self.generator, self.person, self.result = None, None, None
        self.state_label.setText(f"Loading {info.name}…")
        self._load_job = self.jobs.start("load generator", load, on_success=self._loaded,
                                         on_error=self._load_failed)
        self._update_controls()

    def _loaded(self, result: tuple[Any, list[Person]]) -> None:
        self._load_job = None
        self.generator, self.people = result
        q = self.generator.quality
        self.preview_steps.setValue(q["preview"].steps)
        self.final_steps.setValue(q["final"].steps)
        self.guidance_spin.setValue(self.generator.config.sampling.guidance)
        self.person_combo.clear()
        new = "  (new)" if self.generator.deformation else "  (new: encoded first)"
        for person in self.people:
            self.person_combo.addItem(person.name + ("" if person.known else new), person)
        self.state_label.setText(f"Model at step {self.generator.step:,} · pick a person"
                                 if self.people else "No fused segments in the library to take a person from.")
        self._update_controls()
        if self.people:
            self._person_selected(0)

    def _load_failed(self, exc: Exception) -> None:
        self._load_job = None
        self.state_label.setText("")
        self.show_message(f"Could not load the model: {exc}", "error")
        self._update_controls()

    def select_person(self, path: str | Path) -> None:
        """Pick the person whose neutral segment is ``path`` (as choosing it in the list does)."""
        for i in range(self.person_combo.count()):
            if Path(self.person_combo.itemData(i).path) == Path(path):
                self.person_combo.setCurrentIndex(i)
                self._person_selected(i)
                return
        raise ValueError(f"{path} is not among the people listed")

    def _person_selected(self, index: int) -> None:
        person: Person | None = self.person_combo.itemData(index)
        if person is None or self.generator is None or self._person_job is not None:
            return
        generator = self.generator

        def prepare(_job: Job) -> Person:
            with self._lock:
                generator.person_identity(person.path)
            return person

        self.person = None
        if person.known:
            text = f"Preparing {person.name}…"
        elif generator.deformation:
            text = (f"Preparing {person.name}: the model never saw this person; reading their fused neutral scan "
                    "and fitting the face model to it (seconds)…")
        else:
            text = f"Encoding {person.name}: the model never saw this person (up to a minute)…"
        self.state_label.setText(text)
        self._person_job = self.jobs.start("prepare person", prepare, on_success=self._person_ready,
                                           on_error=self._person_failed)
        self._update_controls()

    def _person_ready(self, person: Person) -> None:
        self._person_job = None
        if self.generator is None:
            return
        self.person = person
        self.state_label.setText(f"{person.name} · model step {self.generator.step:,}")
        self._update_controls()
        self.request("final")

    def _person_failed(self, exc: Exception) -> None:
        self._person_job = None
        self.state_label.setText("")
        self.show_message(f"Could not prepare this person: {exc}", "error")
        self._update_controls()

    # ------------------------------------------------------------------ generation
    def request(self, quality: str) -> None:
        """Ask for a mesh of the current sliders at ``quality`` (the newest request wins)."""
        if self.generator is None or self.person is None or self._closed:
            return
        steps = self.preview_steps.value() if quality == "preview" else self.final_steps.value()
        self.worker.submit(Request(self.generator, self.person.path, self.sliders.weights(), self.seed_spin.value(),
                                   steps, self.guidance_spin.value(), quality))
        self._update_controls()

    def _debounced(self) -> None:
        self.request("preview" if self.sliders.is_dragging() or self.live.is_running() else "final")

    def _released(self) -> None:
        self._debounce.stop()
        self.request("final")

    def _set_programmatically(self) -> None:
        if self.live.is_running():
            self._debounce.start()
        else:
            self._debounce.stop()
            self.request("final")

    def _generate(self, req: Request) -> tuple[np.ndarray, np.ndarray, np.ndarray]:   # worker thread
        with self._lock:
            return req.generator.generate(req.person, req.weights, req.seed, req.steps, req.guidance,
                                          quality=req.quality)

    def _generated(self, req: Request, mesh: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        if req.generator is not self.generator or self.person is None or req.person != self.person.path:
            return          # a model or person the user has left
        import pyvista as pv

        vertices, triangles, colors = mesh
        poly = pv.PolyData(np.asarray(vertices, np.float32),
                           np.hstack([np.full((len(triangles), 1), 3), triangles]).astype(np.int64).ravel())
        poly.point_data["RGB"] = np.asarray(colors, np.uint8)
        self.result = (req, mesh)
        self.shown_mesh = poly
        self._title = (f"Generated · {self.person.name} · {req.quality} ({req.steps} steps) · "
                       f"{poly.n_points:,} vertices")
        if self.isVisible():
            self.mesh.show(poly, self._title)
        self._update_controls()
        self.mesh_shown.emit(req.quality)

    def _generate_failed(self, req: Request, exc: Exception) -> None:
        if req.generator is self.generator:
            self.show_message(f"Could not generate the mesh: {exc}", "error")

    def _worker_idle(self) -> None:
        self._update_controls()

    def _preset_chosen(self, index: int) -> None:
        name = self.preset_combo.itemData(index)
        self.preset_combo.setCurrentIndex(0)
        if name is None:
            return
        from facestudio.generation.presets import load_preset

        try:
            weights = load_preset(name)
        except ValueError as exc:
            self.show_message(str(exc), "error")
            return
        self.sliders.set_weights(weights)
        if self.person is not None:
            self.state_label.setText(f"{self.person.name} · model step {self.generator.step:,} · "
                                     f"preset: {name.replace('_', ' ')}")

    # ------------------------------------------------------------------ export and screenshot
    def _default_name(self, suffix: str) -> Path:
        person = self.person.subject if self.person else "face"
        return self.library / "exports" / f"{person}-{time.strftime('%Y%m%d-%H%M%S')}{suffix}"

    def _export_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export generated mesh", str(self._default_name(".ply")),
                                              MESH_FILTER)
        if path:
            self.export_mesh(Path(path))

    def export_mesh(self, path: Path) -> None:
        """Write the mesh on screen to ``path`` (PLY/OBJ/STL/GLB by suffix) in the background."""
        if self.result is None or self._export_job is not None:
            return
        vertices, triangles, colors = self.result[1]

        def export(_job: Job) -> str:
            from facestudio.export.mesh import write_mesh_arrays

            return str(write_mesh_arrays(vertices, triangles, colors, path))

        self._export_job = self.jobs.start("export mesh", export, on_success=self._exported,
                                           on_error=self._export_failed)
        self._update_controls()

    def is_exporting(self) -> bool:
        return self._export_job is not None

    def _exported(self, path: str) -> None:
        self._export_job = None
        self.show_message(f"Exported the mesh to {path}", "success")
        self._update_controls()

    def _export_failed(self, exc: Exception) -> None:
        self._export_job = None
        self.show_message(f"Could not export the mesh: {exc}", "error")
        self._update_controls()

    def _screenshot_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save screenshot", str(self._default_name(".png")),
                                              "PNG image (*.png)")
        if path:
            self.save_screenshot(Path(path))

    def save_screenshot(self, path: Path) -> None:
        """The viewport as a PNG (GUI thread: VTK renders it)."""
        if self.viewport.plotter is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.viewport.plotter.screenshot(str(path))
        except (OSError, ValueError, RuntimeError) as exc:
            self.show_message(f"Could not save the screenshot: {exc}", "error")
            return
        self.show_message(f"Saved the viewport to {path}", "success")

    # ------------------------------------------------------------------ live input
    def _live_toggled(self, on: bool) -> None:
        if on and not self.live.is_running():
            try:
                self.live.start(self.port_spin.value())
            except OSError as exc:
                self.live_check.setChecked(False)
                self.show_message(f"Could not listen on UDP port {self.port_spin.value()}: {exc}", "error")
                return
            self.live_label.setText(f"Listening for Live Link Face on UDP port {self.live.receiver.port}…")
        elif not on and self.live.is_running():
            self.live.stop()
            self.live_label.setText("")
            self.request("final")
        self._update_controls()

    def _live_frame(self, frame: LiveLinkFrame) -> None:
        """Sliders follow the phone's face; while it sees none they keep the last face shown."""
        source = frame.subject or frame.device_id
        packets = f"{self.live.receiver.received:,} packets"
        if frame.blendshapes is None:
            self.live_label.setText(f"Live: {source} · no face tracked, sliders hold the last "
                                    f"expression · {packets}")
            return
        self.live_label.setText(f"Live: {source} · {frame.fps:.0f} fps · {packets}")
        self.sliders.set_weights(frame.blendshapes)

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        """Stop the UDP receiver and the mesh worker (jobs are ended by the window)."""
        self._closed = True
        self._debounce.stop()
        self.live.stop()
        self.worker.close()

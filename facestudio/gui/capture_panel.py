"""The Capture panel: find devices, pair, watch live RGB-D, record guided takes.

Threads: zeroconf calls back on its own thread (marshalled here by ``_devices_found``);
pairing, starting virtual devices and recording run as :class:`~facestudio.gui.workers.Jobs`;
the preview is pulled from a :class:`LatestFrame` by a GUI-thread timer, so decoding and
all VTK updates happen on the GUI thread and a slow GUI only ever skips preview frames,
never recorded ones.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QImage, QPainter, QPixmap
from PySide6.QtWidgets import (QComboBox, QFormLayout, QGridLayout, QGroupBox,
                               QHBoxLayout, QInputDialog, QLabel, QLineEdit, QListWidget,
                               QListWidgetItem, QMessageBox, QProgressBar, QPushButton, QSpinBox,
                               QVBoxLayout, QWidget)

from facestudio.capture.discovery import DeviceBrowser, DiscoveredDevice
from facestudio.capture.pairing import PairingError
from facestudio.capture.receiver import DeviceClient, DeviceError, LatestFrame
from facestudio.capture.recorder import RecordRequest, record_take
from facestudio.capture.prompts import HEAD_MOTION_HINT, PROMPTS
from facestudio.gui.imaging import backproject, bgr_to_qimage, colorize_depth
from facestudio.gui.recording import next_take_name
from facestudio.gui.pages import Banner
from facestudio.gui.viewport import Viewport
from facestudio.gui.workers import Job, Jobs
from facestudio.paths import face_model_for, take_dir

log = logging.getLogger(__name__)

PREVIEW_INTERVAL_MS = 33        # ~30 Hz: the device's frame rate
CLOUD_INTERVAL_S = 0.25         # the point cloud is heavier: a few Hz is enough to follow a head
STATS_INTERVAL_S = 0.5
STREAM_FPS = 30

#: Makes the frame source for "Add virtual device" (tests pass a fast replay source).
SourceFactory = Callable[[int], Any]


class ImageView(QWidget):
    """Shows one image scaled to fit, aspect kept, with a caption until the first image."""

    def __init__(self, caption: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("imageView")
        self.caption = caption
        self._pixmap = QPixmap()
        self.setMinimumSize(200, 150)

    def pixmap(self) -> QPixmap:
        return self._pixmap

    def set_image(self, image: QImage) -> None:
        self._pixmap = QPixmap.fromImage(image)
        self.update()

    def clear(self) -> None:
        self._pixmap = QPixmap()
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(320, 240)

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.fillRect(self.rect(), Qt.GlobalColor.black)
        if self._pixmap.isNull():
            p.setPen(Qt.GlobalColor.gray)
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, f"{self.caption}\nno stream")
            return
        size = self._pixmap.size().scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio)
        x, y = (self.width() - size.width()) / 2, (self.height() - size.height()) / 2
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        p.drawPixmap(QRectF(x, y, size.width(), size.height()), self._pixmap,
                     QRectF(self._pixmap.rect()))
        p.setPen(Qt.GlobalColor.white)
        p.drawText(QRectF(x + 6, y + 4, size.width(), 20), self.caption)


class CapturePanel(QWidget):
    """Devices, pairing, live preview and take recording (PRODUCT.md, journey step 1)."""

    device_changed = Signal(str)            # "Virtual iPad (127.0.0.1:5000)" or "" when none
    _devices_found = Signal(list)           # emitted on zeroconf's thread, handled on ours

    def __init__(self, library: Path, jobs: Jobs, viewport: Viewport, *,
                 interfaces: list[str] | None = None,
                 virtual_source: SourceFactory | None = None,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.library = library
        self.jobs = jobs
        self.viewport = viewport
        self.interfaces = interfaces
        self._virtual_source = virtual_source or synthetic_source(None)
        self._browser: DeviceBrowser | None = None
        self._virtual: dict[str, Any] = {}          # device_id -> VirtualDevice started here
        self._devices: list[DiscoveredDevice] = []
        self._client: DeviceClient | None = None
        self._connected: DiscoveredDevice | None = None
        self._preview: LatestFrame | None = None
        self._connect_job: Job | None = None
        self._record_job: Job | None = None
        self._last_cloud = 0.0
        self._last_stats = 0.0
        self._take_name_edited = False
        self._done_prompts: set[tuple[str, str]] = set()   # (subject, expression) recorded
        self._shut_down = False

        self._timer = QTimer(self)
        self._timer.setInterval(PREVIEW_INTERVAL_MS)
        self._timer.timeout.connect(self._poll)
        self._devices_found.connect(self._set_devices)
        self._build()
        self._update_buttons()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.banner = Banner()

        devices = QGroupBox("Devices")
        self.device_list = QListWidget()
        self.device_list.setObjectName("deviceList")
        self.device_list.setMinimumHeight(96)
        self.device_list.setMaximumHeight(140)
        self.device_list.itemSelectionChanged.connect(self._update_buttons)
        self.device_list.itemDoubleClicked.connect(lambda _item: self.connect_selected())
        self.empty_hint = QLabel("Looking for devices on the network… Start the FaceStudio "
                                 "capture app on the iPad, or add a virtual device.")
        self.empty_hint.setObjectName("hint")
        self.empty_hint.setWordWrap(True)
        self.add_virtual_button = QPushButton("Add virtual device")
        self.add_virtual_button.setToolTip("Start a synthetic face that streams exactly like an iPad")
        self.add_virtual_button.clicked.connect(self.add_virtual_device)
        self.remove_virtual_button = QPushButton("Stop virtual device")
        self.remove_virtual_button.clicked.connect(self.stop_selected_virtual_device)
        self.connect_button = QPushButton("Connect…")
        self.connect_button.setObjectName("primary")
        self.connect_button.clicked.connect(self.connect_selected)
        self.disconnect_button = QPushButton("Disconnect")
        self.disconnect_button.clicked.connect(lambda: self.close_connection(None))
        row = QHBoxLayout()
        for b in (self.add_virtual_button, self.remove_virtual_button):
            row.addWidget(b)
        row.addStretch(1)
        row.addWidget(self.disconnect_button)
        row.addWidget(self.connect_button)
        box = QVBoxLayout(devices)
        box.addWidget(self.device_list)
        box.addWidget(self.empty_hint)
        box.addLayout(row)

        preview = QGroupBox("Live preview")
        self.color_view = ImageView("Color")
        self.depth_view = ImageView("Depth")
        self.stats_label = QLabel("Not connected")
        self.stats_label.setObjectName("stats")
        self.stats_label.setWordWrap(True)     # a long line must not widen the panel
        grid = QGridLayout(preview)
        grid.addWidget(self.color_view, 0, 0)
        grid.addWidget(self.depth_view, 0, 1)
        grid.addWidget(self.stats_label, 1, 0, 1, 2)
        grid.setRowStretch(0, 1)

        record = QGroupBox("Record a take")
        self.subject_edit = QLineEdit("subject01")
        self.subject_edit.setToolTip("Letters, digits, space, '_', '-' or '.'; becomes a folder name")
        self.subject_edit.textChanged.connect(self._prompt_or_subject_changed)
        self.prompt_list = QListWidget()
        self.prompt_list.setObjectName("promptList")
        self.prompt_list.setFlow(QListWidget.Flow.LeftToRight)
        self.prompt_list.setWrapping(True)
        self.prompt_list.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.prompt_list.setSpacing(3)
        self.prompt_list.setFixedHeight(68)
        for label, instruction in ((p.label, p.instruction) for p in PROMPTS):
            item = QListWidgetItem(label.replace("_", " "))
            item.setData(Qt.ItemDataRole.UserRole, label)
            item.setToolTip(instruction)
            self.prompt_list.addItem(item)
        self.prompt_list.currentRowChanged.connect(self._prompt_or_subject_changed)
        self.instruction_label = QLabel()
        self.instruction_label.setObjectName("instruction")
        self.instruction_label.setWordWrap(True)
        self.take_edit = QLineEdit()
        self.take_edit.textEdited.connect(self._take_edited)
        self.length_spin = QSpinBox()
        self.length_spin.setRange(1, 3600)
        self.length_spin.setValue(5)
        self.length_unit = QComboBox()
        self.length_unit.addItems(["seconds", "frames"])
        length = QHBoxLayout()
        length.addWidget(self.length_spin)
        length.addWidget(self.length_unit)
        length.addStretch(1)
        self.record_button = QPushButton("● Record")
        self.record_button.setObjectName("record")
        self.record_button.clicked.connect(self.start_recording)
        self.stop_button = QPushButton("■ Stop")
        self.stop_button.clicked.connect(self.stop_recording)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        self.progress.setValue(0)
        buttons = QHBoxLayout()
        buttons.addWidget(self.record_button)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.progress, 1)
        form = QFormLayout(record)
        form.addRow("Subject", self.subject_edit)
        form.addRow("Expression", self.prompt_list)
        form.addRow("", self.instruction_label)
        form.addRow("Take", self.take_edit)
        form.addRow("Length", length)
        form.addRow(buttons)

        layout = QVBoxLayout(self)
        layout.addWidget(self.banner)
        layout.addWidget(devices)
        layout.addWidget(preview, 1)
        layout.addWidget(record)
        self.prompt_list.setCurrentRow(0)

    # ------------------------------------------------------------------ messages
    def show_message(self, text: str, kind: str = "info") -> None:
        """An inline banner (info / success / error): non-blocking news such as a saved take."""
        self.banner.show_message(text, kind)

    # ------------------------------------------------------------------ discovery
    def start_discovery(self) -> None:
        """Browse mDNS for capture devices (after the window is shown: opening sockets takes time)."""
        if self._browser is None:
            self._browser = DeviceBrowser(self.interfaces, on_change=self._devices_found.emit)
            self._set_devices(self._browser.devices())

    def _set_devices(self, devices: list[DiscoveredDevice]) -> None:
        selected = self.selected_device()
        self._devices = devices
        self.device_list.clear()
        for device in devices:
            item = QListWidgetItem(self._describe(device))
            item.setData(Qt.ItemDataRole.UserRole, device)
            item.setToolTip(self._tooltip(device))
            self.device_list.addItem(item)
            if selected is not None and device.device_id == selected.device_id:
                item.setSelected(True)
        if self.device_list.count() and not self.device_list.selectedItems():
            self.device_list.item(0).setSelected(True)
        self.empty_hint.setVisible(not devices)
        self._update_buttons()

    def _describe(self, device: DiscoveredDevice) -> str:
        tags = []
        if self._connected is not None and device.device_id == self._connected.device_id:
            tags.append("● connected")
        virtual = self._virtual.get(device.device_id)
        if virtual is not None:
            tags.append(f"virtual · PIN {virtual.pin}")
        line2 = f"{device.model or device.sensor} · {device.address}"
        return f"{device.name}{'   ' + '  ·  '.join(tags) if tags else ''}\n{line2}"

    def _tooltip(self, device: DiscoveredDevice) -> str:
        lines = [f"{device.name} ({device.model})", f"address {device.address}",
                 f"sensor {device.sensor}, protocol v{device.protocol}, id {device.device_id}"]
        virtual = self._virtual.get(device.device_id)
        if virtual is not None:
            lines.append(f"Started by this app. Its PIN is {virtual.pin}.")
        else:
            lines.append("Type the 6-digit PIN shown on the device to pair.")
        return "\n".join(lines)

    def selected_device(self) -> DiscoveredDevice | None:
        items = self.device_list.selectedItems()
        return items[0].data(Qt.ItemDataRole.UserRole) if items else None

    # ------------------------------------------------------------------ virtual devices
    def add_virtual_device(self) -> None:
        """Start an in-process virtual device; it shows up in the list through mDNS like an iPad."""
        seed = len(self._virtual)
        factory, interfaces = self._virtual_source, self.interfaces or ["127.0.0.1"]

        def start(job: Job):
            from facestudio.capture.virtual_device import VirtualDevice

            device = VirtualDevice(factory(seed), name=f"Virtual iPad {seed + 1}",
                                   host="127.0.0.1", advertise=True, interfaces=interfaces)
            if job.cancel.is_set():
                device.close()
                return None
            return device

        self.add_virtual_button.setEnabled(False)
        self.show_message("Starting a virtual device…")
        self.jobs.start("start virtual device", start, on_success=self._virtual_started,
                        on_error=self._virtual_failed)

    def _virtual_started(self, device: Any) -> None:
        self.add_virtual_button.setEnabled(True)
        if device is None:
            return
        if self._shut_down:         # finished while the window was closing
            device.close()
            return
        self._virtual[device.info.device_id] = device
        self.show_message(f"{device.info.name} is running on {device.address[0]}:"
                          f"{device.address[1]}. Its PIN is {device.pin}. Select it and click "
                          "Connect.")
        self._set_devices(self._devices)

    def _virtual_failed(self, exc: Exception) -> None:
        self.add_virtual_button.setEnabled(True)
        self.show_message(f"Could not start the virtual device: {exc}", "error")

    def stop_selected_virtual_device(self) -> None:
        """Stop a virtual device started here (what an iPad leaving the network looks like)."""
        device = self.selected_device()
        virtual = self._virtual.pop(device.device_id, None) if device is not None else None
        if virtual is not None:
            virtual.close()
            self._set_devices(self._devices)

    # ------------------------------------------------------------------ connecting
    def connect_selected(self) -> None:
        device = self.selected_device()
        if device is None or self._connect_job is not None:
            return
        virtual = self._virtual.get(device.device_id)
        pin, ok = QInputDialog.getText(
            self, "Pair with device",
            f"Type the 6-digit PIN shown on {device.name}"
            + (" (a virtual device shows it in the device list)" if virtual else "") + ":",
            QLineEdit.EchoMode.Normal, "")
        if not ok:
            return
        pin = pin.strip()
        if not (len(pin) == 6 and pin.isdigit()):
            QMessageBox.warning(self, "Invalid PIN", "The PIN is the 6 digits the device shows.")
            return
        self.connect_with_pin(device, pin)

    def connect_with_pin(self, device: DiscoveredDevice, pin: str) -> None:
        """Pair and start the live preview in the background (the PIN dialog's second half)."""
        if self._client is not None:
            self.close_connection(None)

        def pair(job: Job):
            client = DeviceClient(device.host, device.port, pin)
            try:
                client.connect()
                preview = client.subscribe(LatestFrame())
                # Ground truth is asked for now: a take recorded later from this stream stores it.
                client.start(fps=STREAM_FPS, ground_truth=True)
            except BaseException:
                client.close()
                raise
            if job.cancel.is_set():
                client.close()
                return None
            return device, client, preview

        self.show_message(f"Pairing with {device.name} at {device.address}…")
        self._connect_job = self.jobs.start(f"connect {device.name}", pair,
                                            on_success=self._connected_ok,
                                            on_error=self._connect_failed)
        self._update_buttons()

    def _connected_ok(self, result: tuple | None) -> None:
        self._connect_job = None
        if result is None:
            return
        if self._shut_down:         # paired while the window was closing
            result[1].close()
            return
        self._connected, self._client, self._preview = result
        self.viewport.clear_cloud(f"Live depth · {self._connected.name}")
        self._timer.start()
        self.show_message(f"Connected to {self._connected.name}: encrypted, streaming.", "success")
        self.device_changed.emit(f"{self._connected.name} ({self._connected.address})")
        self._set_devices(self._devices)

    def _connect_failed(self, exc: Exception) -> None:
        self._connect_job = None
        self._update_buttons()
        if isinstance(exc, PairingError):
            title, text = "Pairing failed", str(exc)
        elif isinstance(exc, DeviceError):
            title, text = "Could not connect", str(exc)
        else:
            title, text = "Could not connect", f"Unexpected error: {exc}"
        self.show_message(f"{title}: {text}", "error")
        QMessageBox.warning(self, title, text)

    def close_connection(self, reason: str | None) -> None:
        """Close the stream; ``reason`` says why when it was not the user's choice."""
        if self._client is None:
            return
        self._timer.stop()
        if self._record_job is not None:
            self._record_job.cancel.set()
        name = self._connected.name if self._connected else "device"
        self._client.close()
        self._client = self._preview = self._connected = None
        self.color_view.clear()
        self.depth_view.clear()
        self.stats_label.setText("Not connected")
        self.viewport.clear_cloud()
        self.device_changed.emit("")
        if reason:
            self.show_message(f"Lost {name}: {reason}", "error")
        else:
            self.show_message(f"Disconnected from {name}.")
        self._set_devices(self._devices)

    # ------------------------------------------------------------------ preview
    def _poll(self) -> None:
        """Show the newest frame (GUI thread; frames that arrived meanwhile are skipped)."""
        client = self._client
        if client is None:
            return
        if client.error or not client.streaming:
            self.close_connection(client.error or "the device stopped streaming")
            return
        frame = self._preview.take()
        if not self.isVisible():         # another panel owns the viewport; save the CPU
            return
        now = time.monotonic()
        if now - self._last_stats >= STATS_INTERVAL_S:
            self._last_stats = now
            self.stats_label.setText(_format_stats(client.stats.as_dict()))
        if frame is None:
            return
        try:
            color = frame.color()
            depth = frame.depth_m()
        except ValueError as exc:        # a corrupt frame: skip it, keep streaming
            log.warning("preview: %s", exc)
            return
        self.color_view.set_image(bgr_to_qimage(color))
        if depth is None:
            return
        self.depth_view.set_image(bgr_to_qimage(colorize_depth(depth)))
        if now - self._last_cloud >= CLOUD_INTERVAL_S:
            self._last_cloud = now
            points, colors = backproject(depth, frame.depth_intrinsics or frame.color_intrinsics,
                                         color)
            self.viewport.show_cloud(points, colors,
                                     f"Live depth · {self._connected.name} · {len(points):,} points")

    # ------------------------------------------------------------------ recording
    def current_expression(self) -> str:
        item = self.prompt_list.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item else "neutral"

    def _prompt_or_subject_changed(self) -> None:
        instruction = {p.label: p.instruction for p in PROMPTS}.get(self.current_expression(), "")
        self.instruction_label.setText(f"{instruction} {HEAD_MOTION_HINT}")
        if not self._take_name_edited:
            self.take_edit.setText(next_take_name(self.library, self.subject_edit.text().strip(),
                                                  self.current_expression()))
        self._mark_done_prompts()

    def _take_edited(self, text: str) -> None:
        self._take_name_edited = bool(text)

    def _mark_done_prompts(self) -> None:
        subject = self.subject_edit.text().strip()
        for row in range(self.prompt_list.count()):
            item = self.prompt_list.item(row)
            label = item.data(Qt.ItemDataRole.UserRole)
            done = (subject, label) in self._done_prompts
            item.setText(("✓ " if done else "") + label.replace("_", " "))

    def start_recording(self) -> None:
        if self._client is None or self._record_job is not None:
            return
        subject, take = self.subject_edit.text().strip(), self.take_edit.text().strip()
        try:
            path = take_dir(self.library, subject, take)
        except ValueError as exc:
            self.show_message(str(exc), "error")
            return
        if path.exists():
            self.show_message(f"A take named {take!r} already exists for {subject}; "
                              "choose another take name.", "error")
            return
        amount = self.length_spin.value()
        by_frames = self.length_unit.currentText() == "frames"
        request = RecordRequest(subject, take, self.current_expression(),
                                frames=amount if by_frames else None,
                                seconds=None if by_frames else float(amount))
        client = self._client

        def record(job: Job):
            return record_take(client, path, request, stop=job.cancel,
                               progress=job.report, fps=STREAM_FPS)

        self._set_progress_state("recording")
        self.progress.setRange(0, amount)
        self.progress.setValue(0)
        self.progress.setFormat("recording… %v / %m " + ("frames" if by_frames else "s"))
        self.show_message(f"Recording {subject} / {take} ({request.expression})…")
        self._record_job = self.jobs.start(f"record {subject}/{take}", record,
                                           on_success=self._recorded, on_error=self._record_failed,
                                           on_progress=self._record_progress)
        self._update_buttons()

    def _set_progress_state(self, state: str) -> None:
        """recording (red), done (green) or failed: the stylesheet colours the bar by it."""
        self.progress.setProperty("state", state)
        self.progress.style().unpolish(self.progress)
        self.progress.style().polish(self.progress)

    def stop_recording(self) -> None:
        if self._record_job is not None:
            self._record_job.cancel.set()

    def _record_progress(self, p: dict) -> None:
        done = p["frames"] if p.get("target_frames") else int(p["elapsed_s"])
        self.progress.setValue(min(done, self.progress.maximum()))
        self.progress.setFormat(f"recording… {p['frames']} frames, {p['elapsed_s']:.1f} s")

    def _recorded(self, result: dict) -> None:
        self._record_job = None
        request_subject = self.subject_edit.text().strip()
        self._set_progress_state("done" if result["status"] == "complete" else "failed")
        self.progress.setValue(self.progress.maximum())
        self.progress.setFormat(f"{result['frames']} frames saved")
        if result["status"] == "complete":
            self._done_prompts.add((request_subject, self.current_expression()))
            self.show_message(f"Saved take with {result['frames']} frames "
                              f"({result['device_skipped']} skipped by the device) "
                              f"to {result['path']}", "success")
            self._advance_prompt()
        else:
            self.show_message(f"Take ended early and was saved as incomplete with "
                              f"{result['frames']} frames to {result['path']}: "
                              f"{result['message']}", "error")
        self._take_name_edited = False
        self._prompt_or_subject_changed()
        self._update_buttons()

    def _advance_prompt(self) -> None:
        row = self.prompt_list.currentRow()
        if row + 1 < self.prompt_list.count():
            self.prompt_list.setCurrentRow(row + 1)

    def _record_failed(self, exc: Exception) -> None:
        self._record_job = None
        self._set_progress_state("failed")
        self.progress.setFormat("failed")
        self.show_message(f"Recording failed: {exc}", "error")
        self._update_buttons()

    # ------------------------------------------------------------------ state
    def _update_buttons(self) -> None:
        device = self.selected_device()
        connected = self._client is not None
        recording = self._record_job is not None
        busy = self._connect_job is not None
        self.connect_button.setEnabled(device is not None and not busy and not recording and not (
            connected and self._connected and device.device_id == self._connected.device_id))
        self.disconnect_button.setEnabled(connected and not recording)
        self.remove_virtual_button.setEnabled(
            device is not None and device.device_id in self._virtual and not recording)
        self.record_button.setEnabled(connected and not recording)
        self.stop_button.setEnabled(recording)
        for w in (self.subject_edit, self.take_edit, self.prompt_list, self.length_spin,
                  self.length_unit):
            w.setEnabled(not recording)

    def shutdown(self) -> None:
        """Stop previews, the stream, discovery and virtual devices (jobs are already ended)."""
        self._shut_down = True
        self._timer.stop()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._browser is not None:
            self._browser.close()
            self._browser = None
        for device in self._virtual.values():
            device.close()
        self._virtual.clear()


def synthetic_source(face_model: str | None, library: Path | None = None) -> SourceFactory:
    """The real virtual device's source: a rendered synthetic face.

    The face is the given ICT model, else one imported into the library with
    `facestudio facemodel import-ict`, else the built-in procedural head.
    """
    face_model = face_model_for(library, face_model) if library is not None else face_model

    def make(seed: int):
        from facestudio.capture.virtual_device import SyntheticFrameSource

        return SyntheticFrameSource(face_model, seed=seed)
    return make



def _format_stats(s: dict[str, float]) -> str:
    """One line of link numbers; a value not measured yet (None/NaN) shows as '–'."""
    def num(key: str, fmt: str) -> str:
        value = s.get(key)
        return fmt.format(value) if isinstance(value, (int, float)) and math.isfinite(value) else "–"
    return (f"{num('fps', '{:.1f}')} fps  ·  latency p95 {num('latency_p95_ms', '{:.0f}')} ms  ·  "
            f"{num('bandwidth_mbps', '{:.1f}')} Mbit/s  ·  skipped {num('device_skipped', '{:d}')} "
            f"on device, {num('preview_skipped', '{:d}')} in preview  ·  "
            f"{num('frames', '{:d}')} frames")

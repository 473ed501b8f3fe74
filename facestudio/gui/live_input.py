"""Live Link Face input for the Generate page: UDP packets -> the newest blendshape vector.

The receiver calls back on its own thread at the phone's rate (60 fps). Only the newest
frame matters for sliders, so the callback just stores it (one reference assignment, atomic
under the GIL) and a GUI-thread timer picks it up at a rate the generator can follow.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QTimer, Signal

from facestudio.capture.livelink import LiveLinkFrame, LiveLinkReceiver

POLL_MS = 50


class LiveInput(QObject):
    frame = Signal(object)          # the newest LiveLinkFrame, on the GUI thread

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.receiver: LiveLinkReceiver | None = None
        self._newest: LiveLinkFrame | None = None
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._poll)

    def start(self, port: int, host: str = "0.0.0.0") -> None:
        """Listen on UDP ``port`` (OSError when it is taken)."""
        self.stop()
        self.receiver = LiveLinkReceiver(self._store, host=host, port=port)
        self._timer.start()

    def _store(self, frame: LiveLinkFrame) -> None:   # receiver thread
        self._newest = frame

    def _poll(self) -> None:
        frame, self._newest = self._newest, None
        if frame is not None:
            self.frame.emit(frame)

    def is_running(self) -> bool:
        return self.receiver is not None

    def stop(self) -> None:
        self._timer.stop()
        if self.receiver is not None:
            self.receiver.close()
            self.receiver = None
        self._newest = None

"""One background thread that serves only the newest request: what slider dragging needs.

While the user drags, requests arrive faster than a mesh can be generated. Queueing them
would make the avatar lag further and further behind the slider; instead a new request
replaces the one still waiting, and the thread always works on the most recent state.
Results and errors come back as signals of an object created on the GUI thread, so the
callbacks run there (REFERENCE.md sec. 5).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from PySide6.QtCore import QObject, Signal

log = logging.getLogger(__name__)


class _Signals(QObject):
    succeeded = Signal(object, object)     # request, result
    failed = Signal(object, object)        # request, exception
    idle = Signal()                        # nothing waits or runs any more


class LatestWorker:
    """``fn(request)`` on a daemon thread (started on first use); a new request replaces a waiting one."""

    def __init__(self, fn: Callable[[Any], Any], name: str):
        self.signals = _Signals()
        self._fn = fn
        self._name = name
        self._cv = threading.Condition()
        self._pending: Any = None
        self._has_pending = False
        self._running = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, request: Any) -> None:
        with self._cv:
            if self._closed:
                return
            self._pending, self._has_pending = request, True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name=self._name)
                self._thread.start()
            self._cv.notify()

    def busy(self) -> bool:
        with self._cv:
            return self._running or self._has_pending

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._has_pending and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                request, self._pending, self._has_pending = self._pending, None, False
                self._running = True
            try:
                result = self._fn(request)
            except Exception as exc:  # noqa: BLE001 - shown to the user by the GUI
                log.debug("%s failed", self._name, exc_info=True)
                self.signals.failed.emit(request, exc)
            else:
                self.signals.succeeded.emit(request, result)
            with self._cv:
                self._running = False
                done = not self._has_pending
            if done:
                self.signals.idle.emit()

    def close(self, timeout: float = 30.0) -> None:
        """Drop what waits, let the running request finish, end the thread."""
        with self._cv:
            self._closed = True
            self._pending, self._has_pending = None, False
            self._cv.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("%s did not finish within %.0f s", self._name, timeout)

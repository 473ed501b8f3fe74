"""Background jobs for the GUI: blocking core calls on plain threads, results as Qt signals.

The core API is blocking and Qt-free (connect, pair, record a take, start a device). A job
runs one such call on a daemon thread; its signals object is created on the GUI thread, so
everything it emits (plain data: dicts, results, exceptions) is delivered to GUI-side slots
through queued connections and no widget or VTK object is ever touched off the GUI thread.
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Any, Callable

from PySide6.QtCore import QObject, Signal

log = logging.getLogger(__name__)


class _JobSignals(QObject):
    progress = Signal(object)
    succeeded = Signal(object)
    failed = Signal(object)
    ended = Signal(int)  # the job's id


class Job:
    """One running call. ``fn(job)`` may call :meth:`report` and should honour :attr:`cancel`."""

    def __init__(self, job_id: int, name: str, fn: Callable[["Job"], Any]):
        self.id, self.name = job_id, name
        self.cancel = threading.Event()
        self.signals = _JobSignals()
        self._fn = fn
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"job-{name}")

    def report(self, data: Any) -> None:
        self.signals.progress.emit(data)

    def _run(self) -> None:
        try:
            result = self._fn(self)
        except Exception as exc:  # noqa: BLE001 - handed to the GUI, which shows it to the user
            log.debug("job %s failed", self.name, exc_info=True)
            self.signals.failed.emit(exc)
        else:
            self.signals.succeeded.emit(result)
        finally:
            self.signals.ended.emit(self.id)


class Jobs(QObject):
    """Starts jobs, knows which are running (for the status bar) and ends them at shutdown."""

    changed = Signal(list)  # names of the running jobs

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._running: dict[int, Job] = {}
        self._ids = itertools.count()

    def start(self, name: str, fn: Callable[[Job], Any], *,
              on_success: Callable[[Any], None] | None = None,
              on_error: Callable[[Exception], None] | None = None,
              on_progress: Callable[[Any], None] | None = None) -> Job:
        """Run ``fn`` in the background; the callbacks must be methods of GUI-thread QObjects."""
        job = Job(next(self._ids), name, fn)
        if on_progress is not None:
            job.signals.progress.connect(on_progress)
        if on_success is not None:
            job.signals.succeeded.connect(on_success)
        if on_error is not None:
            job.signals.failed.connect(on_error)
        job.signals.ended.connect(self._ended)
        self._running[job.id] = job
        job.thread.start()
        self.changed.emit(self.names())
        return job

    def _ended(self, job_id: int) -> None:
        if self._running.pop(job_id, None) is not None:
            self.changed.emit(self.names())

    def names(self) -> list[str]:
        return [job.name for job in self._running.values()]

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel every job and wait for its thread, so nothing outlives the window."""
        jobs = list(self._running.values())
        for job in jobs:
            job.cancel.set()
        for job in jobs:
            job.thread.join(timeout)
            if job.thread.is_alive():
                log.warning("background job %r did not finish within %.0f s", job.name, timeout)
        self._running.clear()

"""Logging set-up shared by the CLI and the GUI: a rotating file always, the console by -v."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

from facestudio.paths import log_dir

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def log_file() -> Path:
    """Where the app and every command log (the GUI's log viewer reads it)."""
    return log_dir() / "facestudio.log"


def setup_logging(verbosity: int = 0, log_path: Path | None = None) -> Path | None:
    """Log everything >= INFO to a rotating file; the console shows WARNING, -v INFO, -vv DEBUG.

    Returns the log file path, or None when the log folder is not writable (the app still runs).
    """
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    for handler in list(root.handlers):
        if getattr(handler, "_facestudio", False):
            root.removeHandler(handler)
    console = logging.StreamHandler()
    console.setLevel([logging.WARNING, logging.INFO, logging.DEBUG][min(verbosity, 2)])
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    console._facestudio = True  # type: ignore[attr-defined]
    root.addHandler(console)
    try:
        path = log_path or log_file()
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=5_000_000, backupCount=3,
                                                       encoding="utf-8")
    except OSError as exc:
        logging.getLogger(__name__).warning("file logging disabled: %s", exc)
        return None
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler._facestudio = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    return path

"""What the Library panel shows, read off the GUI thread: the catalog plus thumbnails.

:func:`scan_library` runs as a background job. It syncs the catalog (the same calls as
`facestudio library list`), reads the trash, and decodes a thumbnail and the reader's facts
(fps, completion message) for each take and segment it has not seen before. Everything it
returns is plain data (dicts, numpy arrays), so the GUI thread only builds widgets from it.

Thumbnails and facts are keyed by the files' modification stamps, so a refresh decodes only
what changed: a library of hundreds of takes stays quick to reopen.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facestudio.capture.take import FRAMES, MANIFEST, TakeError, TakeReader
from facestudio.dataset.segment import SEGMENT_FILE, Segment, SegmentError
from facestudio.library.catalog import Catalog

log = logging.getLogger(__name__)

THUMB_SIZE = (160, 120)      # width, height: 4:3 like the capture's color frames


def stamp_key(folder: Path, *files: str) -> str:
    """Identifies one version of a take or segment: its path and its files' mtimes and sizes."""
    parts = [str(folder)]
    for name in files:
        try:
            st = (folder / name).stat()
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append("-")
    return "|".join(parts)


def take_key(path: str | Path) -> str:
    return stamp_key(Path(path), MANIFEST, FRAMES)


def segment_key(path: str | Path) -> str:
    return stamp_key(Path(path), SEGMENT_FILE)


def fit_thumbnail(bgr: np.ndarray) -> np.ndarray:
    """Scale into THUMB_SIZE keeping the aspect, centred on black (square crops get bars)."""
    w, h = THUMB_SIZE
    scale = min(w / bgr.shape[1], h / bgr.shape[0])
    size = (max(1, round(bgr.shape[1] * scale)), max(1, round(bgr.shape[0] * scale)))
    small = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    out = np.zeros((h, w, 3), np.uint8)
    x, y = (w - size[0]) // 2, (h - size[1]) // 2
    out[y:y + size[1], x:x + size[0]] = small
    return out


def _take_facts(path: Path) -> dict[str, Any]:
    """The reader's summary (fps, completion message, problems) and the first color frame."""
    try:
        reader = TakeReader(path)
        info = reader.info()
        thumb = fit_thumbnail(reader.frame(0).color()) if len(reader) else None
    except (TakeError, OSError, ValueError) as exc:   # the catalog row says what is wrong
        log.warning("library: cannot read take %s: %s", path, exc)
        return {"info": None, "thumb": None}
    return {"info": info, "thumb": thumb}


def _segment_facts(path: Path) -> dict[str, Any]:
    """The first training view of the segment, as the user's thumbnail of it."""
    try:
        segment = Segment(path)
        thumb = fit_thumbnail(segment.load_view(0)[0][..., ::-1]) if len(segment) else None
    except (SegmentError, OSError, ValueError) as exc:   # the catalog row says what is wrong
        log.warning("library: cannot read segment %s: %s", path, exc)
        return {"thumb": None}
    return {"thumb": thumb}


def scan_library(root: Path, known: set[str], cancel: threading.Event) -> dict[str, Any]:
    """Sync the catalog and list it; ``facts`` holds only keys not in ``known``.

    Returns ``{"listing": Catalog.list(), "trash": Catalog.list_trash(), "keys": {path: key},
    "facts": {key: {...}}}``.
    """
    catalog = Catalog(root)
    catalog.sync()
    listing = catalog.list()
    trash = catalog.list_trash()
    keys: dict[str, str] = {}
    facts: dict[str, dict[str, Any]] = {}
    items = [(t["path"], take_key, _take_facts) for t in listing["takes"]]
    items += [(s["path"], segment_key, _segment_facts) for s in listing["segments"]]
    for path, key_of, read in items:
        if cancel.is_set():
            break
        key = keys[path] = key_of(path)
        if key not in known:
            facts[key] = read(Path(path))
    return {"listing": listing, "trash": trash, "keys": keys, "facts": facts}


def models_by_segment(models: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Segment name (SUBJECT/TAKE/segNN-LABEL) -> the training runs that used it."""
    used: dict[str, list[str]] = {}
    for m in models:
        for name in m["segments"]:
            used.setdefault(name, []).append(f"{m['kind']}/{m['name']}")
    return used

"""Takes: recorded capture sessions on disk (docs/formats.md, "Take", is the normative text).

A take is a folder holding ``manifest.json``, one ``frames.jsonl`` line per frame and the
per-frame payload files (``color/``, ``depth/``, ``confidence/``, ``mesh/``) plus optional
``attachments/``.
Crash safety comes from ordering, not from fsync per frame: a frame's files are written
first and its jsonl line last, so a killed recorder leaves at most one frame's files without
a line (an orphan that :func:`recover_take` deletes) or one half-written last line (which
readers ignore). The manifest is only ever replaced atomically, so it is always whole.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import stat
import time
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from facestudio.capture.frame import DEPTH_CODECS, DEPTH_DTYPES, EncodedDepth, Frame, Intrinsics
from facestudio.faces.arkit import NUM_BLENDSHAPES

from facestudio.storage import try_lock, writing

log = logging.getLogger(__name__)

FORMAT_NAME = "facestudio-take"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FRAMES = "frames.jsonl"
ATTACHMENTS = "attachments"
STATUSES = ("recording", "complete", "incomplete")

_DATA_DIRS = ("color", "depth", "confidence", "mesh")
# Keys the writer owns; callers may not set them through manifest_fields or close(extra=...).
_RESERVED = frozenset({"format", "version", "status", "created", "closed", "recovered", "frames",
                       "first_index", "last_index", "duration_s", "skipped", "message"})
# Relative paths inside a take: no absolute paths, no "..", no hidden files.
_REL_PATH = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*")
_ATTACHMENT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")


class TakeError(Exception):
    """A take on disk is missing, unreadable or not in a format this version understands."""


# --------------------------------------------------------------------------- helpers


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


def _json_default(obj: Any) -> Any:
    """Let numpy scalars/arrays (common in intrinsics and ground truth) serialise as JSON."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(obj: Any, indent: int | None = None) -> str:
    """Strict JSON (no NaN/Infinity tokens) so tools in any language can read takes."""
    return json.dumps(obj, default=_json_default, allow_nan=False, indent=indent,
                      separators=None if indent else (",", ":"))


def _fsync_dir(path: Path) -> None:
    """Make renames/creations in ``path`` durable (POSIX; Windows cannot open directories)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` so that readers and crashes see either the old or the new bytes."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with writing(path):
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)   # e.g. a full disk: leave no partial .tmp behind
        raise
    _fsync_dir(path.parent)


def _summary(count: int, first: int | None, last: int | None,
             t_first: float | None, t_last: float | None) -> dict[str, Any]:
    """The manifest's frame statistics; ``skipped`` counts device indices never delivered."""
    if count == 0 or first is None or last is None or t_first is None or t_last is None:
        return {"frames": 0, "first_index": None, "last_index": None, "duration_s": 0.0,
                "skipped": 0}
    return {"frames": count, "first_index": first, "last_index": last,
            "duration_s": t_last - t_first, "skipped": last - first + 1 - count}


def _try_lock(fileobj: Any) -> bool:
    """Take the recorder's exclusive lock on frames.jsonl; False if another holder has it
    (True where locks are unavailable, e.g. Windows: recover_take cannot detect a live
    recorder there)."""
    return try_lock(fileobj.fileno()) is not False


def _read_manifest(take: Path) -> dict[str, Any]:
    path = take / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TakeError(f"{path}: missing; {take} is not a take folder (or it was never "
                        "started)") from None
    except OSError as exc:
        raise TakeError(f"{path}: cannot read ({exc})") from exc
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise TakeError(f"{path}: corrupt, not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise TakeError(f"{path}: corrupt, expected a JSON object, found {type(manifest).__name__}")
    if manifest.get("format") != FORMAT_NAME:
        raise TakeError(f"{path}: not a FaceStudio take (format is {manifest.get('format')!r}, "
                        f"expected {FORMAT_NAME!r})")
    version = manifest.get("version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise TakeError(f"{path}: unsupported take format version {version!r} (this FaceStudio "
                        f"reads version {FORMAT_VERSION}; a newer FaceStudio may read it)")
    if manifest.get("status") not in STATUSES:
        raise TakeError(f"{path}: invalid status {manifest.get('status')!r} "
                        f"(expected one of {', '.join(STATUSES)})")
    return manifest


# --------------------------------------------------------------------------- writer


class TakeWriter:
    """Records frames into a new take folder. One thread at a time; not a reader.

    Appends only write to the page cache (no fsync per frame) so they keep up with 60 fps;
    :meth:`close` makes everything durable and records the final status.
    """

    def __init__(self, path: str | os.PathLike[str],
                 manifest_fields: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        fields = dict(manifest_fields or {})
        clash = sorted(_RESERVED & fields.keys())
        if clash:
            raise ValueError(f"manifest_fields may not set {', '.join(clash)}: the take writer "
                             "owns them")
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise FileExistsError(f"cannot record a take into {self.path}: it already exists "
                                  "and is not an empty folder")
        self._manifest: dict[str, Any] = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
                                          "status": "recording", "created": _iso(time.time()),
                                          **fields}
        manifest_bytes = _dumps(self._manifest, indent=2).encode()  # fail before touching disk
        with writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / "color").mkdir()
            self._dirs = {"color"}
            # frames.jsonl exists before the manifest, so a manifest always has a frames file.
            self._jsonl = open(self.path / FRAMES, "ab", buffering=0)
            try:
                _try_lock(self._jsonl)
                _atomic_write(self.path / MANIFEST, manifest_bytes)
            except BaseException:
                self._jsonl.close()
                raise
        self._jsonl_size = 0
        self._count = 0
        self._first: int | None = None
        self._last: int | None = None
        self._t_first: float | None = None
        self._t_last: float | None = None
        self._closed = False

    def __len__(self) -> int:
        return self._count

    def __enter__(self) -> TakeWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._closed:
            return
        if exc is None:
            self.close()
            return
        try:
            self.close("incomplete", message=f"recording failed: {type(exc).__name__}: {exc}")
        except OSError as close_error:
            # A full disk cannot take the final manifest either: keep the error that
            # explains why recording stopped; the take stays "recording" until
            # `facestudio take recover` closes it (its frames are all readable).
            log.error("could not close take %s after %s: %s", self.path, type(exc).__name__,
                      close_error)

    def append(self, frame: Frame, received: float | None = None) -> None:
        """Store one frame; ``received`` is the desktop's receive time (Unix seconds).

        Raises ValueError for a non-increasing index or malformed frame data, before any
        file is written.
        """
        if self._closed:
            raise RuntimeError(f"take {self.path} is closed")
        index = frame.index
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"frame index must be a non-negative integer, got {index!r}")
        index = int(index)
        if self._last is not None and index <= self._last:
            raise ValueError(f"frame index {index} does not increase (last written index is "
                             f"{self._last})")
        timestamp = float(frame.timestamp)
        if not math.isfinite(timestamp):
            raise ValueError(f"frame {index}: timestamp {timestamp} is not finite")
        jpeg = bytes(frame.color_jpeg)
        if not jpeg.startswith(b"\xff\xd8"):
            raise ValueError(f"frame {index}: color data is not a JPEG (no FFD8 start marker)")

        name = f"{index:06d}"
        files: list[tuple[str, bytes]] = [(f"color/{name}.jpg", jpeg)]
        meta: dict[str, Any] = {
            "index": index, "timestamp": timestamp,
            "received": None if received is None else float(received),
            "color": {"file": files[0][0], "bytes": len(jpeg),
                      "intrinsics": frame.color_intrinsics.to_dict()},
            "depth": None, "head_pose": None, "blendshapes": None, "face_mesh": None,
            "ground_truth": None,
        }
        if frame.depth is not None:
            d = frame.depth
            if d.dtype not in DEPTH_DTYPES or d.codec not in DEPTH_CODECS or d.width <= 0 \
                    or d.height <= 0:
                raise ValueError(f"frame {index}: unsupported depth {d.width}x{d.height} "
                                 f"{d.dtype}/{d.codec}")
            data = bytes(d.data)
            files.append((f"depth/{name}.depth", data))
            meta["depth"] = {"file": files[-1][0], "bytes": len(data), "width": int(d.width),
                             "height": int(d.height), "dtype": d.dtype, "codec": d.codec,
                             "intrinsics": None if frame.depth_intrinsics is None
                             else frame.depth_intrinsics.to_dict()}
        if frame.depth_confidence is not None:
            conf = np.asarray(frame.depth_confidence)
            if frame.depth is None or conf.shape != (frame.depth.height, frame.depth.width) \
                    or conf.dtype != np.uint8:
                raise ValueError(f"frame {index}: depth_confidence must be uint8 of the depth's "
                                 f"size, got {conf.dtype} {conf.shape}")
            data = zlib.compress(np.ascontiguousarray(conf).tobytes(), 6)
            files.append((f"confidence/{name}.conf", data))
            meta["depth"]["confidence"] = {"file": files[-1][0], "bytes": len(data)}
        if frame.head_pose is not None:
            meta["head_pose"] = self._as_list(frame.head_pose, 16, np.float64, "head_pose", index)
        if frame.blendshapes is not None:
            meta["blendshapes"] = self._as_list(frame.blendshapes, NUM_BLENDSHAPES, np.float32,
                                               "blendshapes", index)
        if frame.face_mesh is not None:
            mesh = np.ascontiguousarray(frame.face_mesh)
            if mesh.dtype.hasobject:
                raise ValueError(f"frame {index}: face_mesh must be a numeric array")
            buf = io.BytesIO()
            np.save(buf, mesh, allow_pickle=False)
            files.append((f"mesh/{name}.npy", buf.getvalue()))
            meta["face_mesh"] = {"file": files[-1][0], "bytes": len(files[-1][1])}
        if frame.ground_truth is not None:
            if not isinstance(frame.ground_truth, dict):
                raise ValueError(f"frame {index}: ground_truth must be a dict")
            meta["ground_truth"] = frame.ground_truth
        try:
            line = (_dumps(meta) + "\n").encode()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"frame {index}: metadata is not storable as strict JSON "
                             f"(NaN/inf and non-JSON objects are rejected): {exc}") from exc

        written: list[Path] = []
        try:
            for rel, data in files:
                folder = rel.split("/", 1)[0]
                if folder not in self._dirs:
                    (self.path / folder).mkdir(exist_ok=True)
                    self._dirs.add(folder)
                written.append(self.path / rel)
                with writing(written[-1]), open(written[-1], "wb") as f:
                    f.write(data)
            # The line goes last: its presence promises that all the frame's files are whole.
            view = memoryview(line)
            with writing(self.path / FRAMES):
                while view:  # unbuffered: write() may take only part of the line
                    view = view[self._jsonl.write(view):]
        except OSError:
            # E.g. disk full (a StorageError): undo this frame so the take stays consistent.
            os.ftruncate(self._jsonl.fileno(), self._jsonl_size)
            for path in written:
                path.unlink(missing_ok=True)
            raise
        self._jsonl_size += len(line)
        self._count += 1
        if self._first is None:
            self._first, self._t_first = index, timestamp
        self._last, self._t_last = index, timestamp

    @staticmethod
    def _as_list(value: Any, n: int, dtype: type, what: str, index: int) -> list[float]:
        arr = np.asarray(value, dtype=dtype)
        if arr.size != n:
            raise ValueError(f"frame {index}: {what} needs {n} values, got shape {arr.shape}")
        return arr.reshape(n).tolist()

    def add_attachment(self, name: str, arrays: Mapping[str, np.ndarray]) -> Path:
        """Atomically store named arrays as ``attachments/{name}.npz`` (replacing any old one).

        Meant for data too big for a jsonl line, e.g. synthetic ground-truth meshes.
        """
        if self._closed:
            raise RuntimeError(f"take {self.path} is closed")
        if not _ATTACHMENT_NAME.fullmatch(name):
            raise ValueError(f"attachment name {name!r} must be 1-128 of [A-Za-z0-9_.-], not "
                             "starting with '.'")
        clean: dict[str, np.ndarray] = {}
        for key, value in arrays.items():
            arr = np.asarray(value)
            if arr.dtype.hasobject:
                raise ValueError(f"attachment {name}: array {key!r} must be numeric, not object")
            clean[key] = arr
        folder = self.path / ATTACHMENTS
        buf = io.BytesIO()
        np.savez(buf, **clean)
        target = folder / f"{name}.npz"
        with writing(target):
            folder.mkdir(exist_ok=True)
            _atomic_write(target, buf.getvalue())
        return target

    def close(self, status: str = "complete", message: str | None = None,
              extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Make every file durable and rewrite the manifest with the final status.

        ``extra`` adds caller fields (e.g. recorder statistics) to the manifest. Returns the
        final manifest.
        """
        if self._closed:
            raise RuntimeError(f"take {self.path} is already closed")
        if status not in ("complete", "incomplete"):
            raise ValueError(f"close status must be 'complete' or 'incomplete', not {status!r}")
        extra = dict(extra or {})
        clash = sorted(_RESERVED & extra.keys())
        if clash:
            raise ValueError(f"close extra may not set {', '.join(clash)}")
        self._closed = True
        try:
            with writing(self.path):
                os.fsync(self._jsonl.fileno())
                for folder in sorted(self._dirs):
                    with os.scandir(self.path / folder) as it:
                        for entry in it:
                            fd = os.open(entry.path, os.O_RDWR)
                            try:
                                os.fsync(fd)
                            finally:
                                os.close(fd)
                    _fsync_dir(self.path / folder)
                _fsync_dir(self.path)
                self._manifest.update(extra)
                self._manifest.update(status=status, closed=_iso(time.time()), message=message,
                                      **_summary(self._count, self._first, self._last,
                                                 self._t_first, self._t_last))
                _atomic_write(self.path / MANIFEST, _dumps(self._manifest, indent=2).encode())
        finally:
            self._jsonl.close()  # also releases the recorder lock
        return dict(self._manifest)


# --------------------------------------------------------------------------- reader


class _LineError(ValueError):
    """A frames.jsonl line that parses as JSON but does not follow the schema."""


@dataclass(frozen=True)
class _FileRef:
    rel: str
    size: int


@dataclass(frozen=True)
class _Entry:
    """One validated frames.jsonl line; every field is safe to use without re-checking."""

    line: int
    raw: bytes  # the line itself: re-parsing it is the cheapest safe deep copy
    index: int
    timestamp: float
    color: _FileRef
    color_intrinsics: Intrinsics
    depth: _FileRef | None
    depth_shape: tuple[int, int, str, str] | None  # width, height, dtype, codec
    depth_intrinsics: Intrinsics | None
    confidence: _FileRef | None
    head_pose: np.ndarray | None
    blendshapes: np.ndarray | None
    mesh: _FileRef | None

    def files(self) -> list[_FileRef]:
        return [f for f in (self.color, self.depth, self.confidence, self.mesh) if f is not None]


def _int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _LineError(f"{what} must be an integer >= {minimum}, got {value!r:.40}")
    return value


def _float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _LineError(f"{what} must be a number, got {value!r:.40}")
    try:
        out = float(value)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out):
        raise _LineError(f"{what} must be finite, got {value!r:.40}")
    return out


def _vector(value: Any, n: int, dtype: type, what: str) -> np.ndarray | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != n:
        raise _LineError(f"{what} must be null or a list of {n} numbers")
    arr = np.array([_float(v, what) for v in value], dtype=np.float64)
    with np.errstate(over="ignore"):
        out = arr.astype(dtype)
    if not np.isfinite(out).all():
        raise _LineError(f"{what} has values out of range")
    return out


def _intrinsics(value: Any, what: str) -> Intrinsics:
    if not isinstance(value, dict):
        raise _LineError(f"{what} must be an object with fx, fy, cx, cy, width, height")
    return Intrinsics(*(_float(value.get(k), f"{what}.{k}") for k in ("fx", "fy", "cx", "cy")),
                      _int(value.get("width"), f"{what}.width", 1),
                      _int(value.get("height"), f"{what}.height", 1))


def _file_ref(value: Any, what: str) -> _FileRef:
    if not isinstance(value, dict):
        raise _LineError(f"{what} must be an object with file and bytes")
    rel = value.get("file")
    if not isinstance(rel, str) or len(rel) > 255 or not _REL_PATH.fullmatch(rel):
        raise _LineError(f"{what}.file must be a relative path inside the take, got {rel!r:.60}")
    return _FileRef(rel, _int(value.get("bytes"), f"{what}.bytes", 0))


def _parse_entry(obj: Any, raw: bytes, line: int) -> _Entry:
    if not isinstance(obj, dict):
        raise _LineError("not a JSON object")
    color_ref = _file_ref(obj.get("color"), "color")  # checks that "color" is an object
    color_intr = _intrinsics(obj["color"].get("intrinsics"), "color.intrinsics")
    depth = obj.get("depth")
    depth_ref: _FileRef | None = None
    depth_shape: tuple[int, int, str, str] | None = None
    depth_intr: Intrinsics | None = None
    confidence: _FileRef | None = None
    if depth is not None:
        depth_ref = _file_ref(depth, "depth")
        dtype, codec = depth.get("dtype"), depth.get("codec")
        if not isinstance(dtype, str) or dtype not in DEPTH_DTYPES \
                or not isinstance(codec, str) or codec not in DEPTH_CODECS:
            raise _LineError(f"depth encoding must be dtype in {sorted(DEPTH_DTYPES)} and codec "
                             f"in {list(DEPTH_CODECS)}")
        depth_shape = (_int(depth.get("width"), "depth.width", 1),
                       _int(depth.get("height"), "depth.height", 1),
                       dtype, codec)
        if depth.get("intrinsics") is not None:
            depth_intr = _intrinsics(depth["intrinsics"], "depth.intrinsics")
        if depth.get("confidence") is not None:
            confidence = _file_ref(depth["confidence"], "depth.confidence")
    head_pose = _vector(obj.get("head_pose"), 16, np.float64, "head_pose")
    received = obj.get("received")
    if received is not None:
        _float(received, "received")
    if obj.get("ground_truth") is not None and not isinstance(obj["ground_truth"], dict):
        raise _LineError("ground_truth must be null or an object")
    mesh = obj.get("face_mesh")
    return _Entry(
        line=line, raw=raw, index=_int(obj.get("index"), "index", 0),
        timestamp=_float(obj.get("timestamp"), "timestamp"),
        color=color_ref, color_intrinsics=color_intr,
        depth=depth_ref, depth_shape=depth_shape, depth_intrinsics=depth_intr,
        confidence=confidence,
        head_pose=None if head_pose is None else head_pose.reshape(4, 4),
        blendshapes=_vector(obj.get("blendshapes"), NUM_BLENDSHAPES, np.float32, "blendshapes"),
        mesh=None if mesh is None else _file_ref(mesh, "face_mesh"))


class TakeReader:
    """Read-only view of a take, also of one still being recorded or left by a crash.

    Opening validates the manifest (TakeError if unusable) and every frames.jsonl line;
    frames that cannot be used are skipped and described in :attr:`problems`, so one bad
    frame never costs the rest of the take.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.manifest: dict[str, Any] = _read_manifest(self.path)
        self.problems: list[str] = []
        frames_path = self.path / FRAMES
        try:
            data = frames_path.read_bytes()
        except OSError as exc:
            raise TakeError(f"{frames_path}: cannot read the frame list ({exc})") from exc
        self._entries = self._scan(data)
        recorded = self.manifest.get("frames")
        if self.status != "recording" and isinstance(recorded, int) \
                and recorded != len(self._entries):
            self.problems.append(f"{MANIFEST} records {recorded} frames but "
                                 f"{len(self._entries)} are readable")

    def _scan(self, data: bytes) -> list[_Entry]:
        entries: list[_Entry] = []
        lines = data.split(b"\n")
        last = max((n for n, raw in enumerate(lines) if raw.strip()), default=-1)
        previous: int | None = None
        for n, raw in enumerate(lines):
            if not raw.strip():
                continue
            where = f"{FRAMES} line {n + 1}"
            try:
                obj = json.loads(raw)
            except (ValueError, RecursionError) as exc:
                if n == last:
                    self.problems.append(f"{where}: incomplete last line ignored (the recording "
                                         "was interrupted while writing it)")
                else:
                    self.problems.append(f"{where}: corrupt JSON, frame skipped ({exc})")
                continue
            try:
                entry = _parse_entry(obj, raw, n + 1)
            except _LineError as exc:
                self.problems.append(f"{where}: invalid frame record, skipped ({exc})")
                continue
            if previous is not None and entry.index <= previous:
                self.problems.append(f"{where}: frame index {entry.index} does not increase "
                                     f"(previous {previous}), skipped")
                continue
            bad = self._check_files(entry)
            if bad:
                self.problems.append(f"{where} (frame {entry.index}): {bad}, frame skipped")
                continue
            previous = entry.index
            entries.append(entry)
        return entries

    def _check_files(self, entry: _Entry) -> str | None:
        for ref in entry.files():
            try:
                st = os.stat(self.path / ref.rel)
            except FileNotFoundError:
                return f"{ref.rel} is missing"
            except OSError as exc:
                return f"{ref.rel} is unreadable ({exc.strerror})"
            if not stat.S_ISREG(st.st_mode):
                return f"{ref.rel} is not a regular file"
            if st.st_size != ref.size:
                return f"{ref.rel} has {st.st_size} bytes, expected {ref.size}"
        return None

    @property
    def status(self) -> str:
        return str(self.manifest["status"])

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def indices(self) -> tuple[int, ...]:
        """Device frame indices of the readable frames, increasing (gaps = skipped frames)."""
        return tuple(e.index for e in self._entries)

    def metadata(self, i: int) -> dict[str, Any]:
        """The i-th readable frame's jsonl record (a copy), without touching its files."""
        return dict(json.loads(self._entries[i].raw))

    def _load(self, ref: _FileRef, index: int) -> bytes:
        path = self.path / ref.rel
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TakeError(f"{path} (frame {index}): cannot read ({exc})") from exc
        if len(data) != ref.size:
            raise TakeError(f"{path} (frame {index}): has {len(data)} bytes, expected {ref.size}")
        return data

    def frame(self, i: int) -> Frame:
        """The i-th readable frame (position, not device index) with its payload loaded."""
        e = self._entries[i]
        depth = None
        if e.depth is not None and e.depth_shape is not None:
            width, height, dtype, codec = e.depth_shape
            depth = EncodedDepth(self._load(e.depth, e.index), width, height, dtype, codec)
        confidence = None
        if e.confidence is not None and e.depth_shape is not None:
            confidence = self._confidence(e.confidence, e.depth_shape[:2], e.index)
        mesh = None
        if e.mesh is not None:
            try:
                mesh = np.load(io.BytesIO(self._load(e.mesh, e.index)), allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise TakeError(f"{self.path / e.mesh.rel} (frame {e.index}): not a valid .npy "
                                f"array ({exc})") from exc
        return Frame(
            index=e.index, timestamp=e.timestamp, color_jpeg=self._load(e.color, e.index),
            color_intrinsics=e.color_intrinsics, depth=depth, depth_intrinsics=e.depth_intrinsics,
            head_pose=None if e.head_pose is None else e.head_pose.copy(),
            blendshapes=None if e.blendshapes is None else e.blendshapes.copy(),
            face_mesh=mesh, ground_truth=json.loads(e.raw).get("ground_truth"),
            depth_confidence=confidence)

    def _confidence(self, ref: _FileRef, size: tuple[int, int], index: int) -> np.ndarray:
        """A confidence file: zlib of ``height * width`` uint8 levels, row-major."""
        width, height = size
        try:
            raw = zlib.decompressobj().decompress(self._load(ref, index), width * height + 1)
        except zlib.error as exc:
            raise TakeError(f"{self.path / ref.rel} (frame {index}): corrupt ({exc})") from exc
        if len(raw) != width * height:
            raise TakeError(f"{self.path / ref.rel} (frame {index}): holds {len(raw)} levels, "
                            f"the depth map has {width * height}")
        return np.frombuffer(raw, np.uint8).reshape(height, width).copy()

    def iter_frames(self) -> Iterator[Frame]:
        for i in range(len(self._entries)):
            yield self.frame(i)

    def timestamps(self) -> np.ndarray:
        """(N,) float64 device timestamps in seconds."""
        return np.array([e.timestamp for e in self._entries], dtype=np.float64)

    def blendshapes(self) -> np.ndarray:
        """(N, 52) float32 ARKit weights; NaN rows where a frame has none."""
        out = np.full((len(self._entries), NUM_BLENDSHAPES), np.nan, dtype=np.float32)
        for row, e in zip(out, self._entries):
            if e.blendshapes is not None:
                row[:] = e.blendshapes
        return out

    def head_poses(self) -> np.ndarray:
        """(N, 4, 4) float64 head-to-camera transforms; NaN matrices where absent."""
        out = np.full((len(self._entries), 4, 4), np.nan, dtype=np.float64)
        for mat, e in zip(out, self._entries):
            if e.head_pose is not None:
                mat[:] = e.head_pose
        return out

    def attachment_names(self) -> list[str]:
        folder = self.path / ATTACHMENTS
        if not folder.is_dir():
            return []
        return sorted(p.name[:-4] for p in folder.iterdir()
                      if p.name.endswith(".npz") and _ATTACHMENT_NAME.fullmatch(p.name[:-4]))

    def attachment(self, name: str) -> dict[str, np.ndarray]:
        """The arrays of ``attachments/{name}.npz``."""
        if not _ATTACHMENT_NAME.fullmatch(name):
            raise TakeError(f"invalid attachment name {name!r}")
        path = self.path / ATTACHMENTS / f"{name}.npz"
        if not path.is_file():
            raise TakeError(f"{path}: no such attachment (this take has: "
                            f"{', '.join(self.attachment_names()) or 'none'})")
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise TakeError(f"{path}: corrupt attachment ({exc})") from exc

    def info(self) -> dict[str, Any]:
        """A JSON-serialisable summary for the library, the CLI and the GUI."""
        m = self.manifest
        ts = self.timestamps()
        summary = _summary(len(self._entries), self.indices[0] if self._entries else None,
                           self.indices[-1] if self._entries else None,
                           float(ts[0]) if len(ts) else None, float(ts[-1]) if len(ts) else None)
        duration = summary["duration_s"]
        first_depth = next((e for e in self._entries if e.depth_shape is not None), None)
        first = self._entries[0] if self._entries else None
        return {
            "path": str(self.path), "subject": m.get("subject"), "take": m.get("take"),
            "labels": m.get("labels"), "device": m.get("device"), "created": m.get("created"),
            "status": self.status, "complete": self.complete, "message": m.get("message"),
            "frames": len(self._entries), "duration_s": duration,
            "fps": (len(ts) - 1) / duration if len(ts) > 1 and duration > 0 else None,
            "skipped": summary["skipped"],
            "has_depth": sum(e.depth is not None for e in self._entries),
            "has_confidence": sum(e.confidence is not None for e in self._entries),
            "color_resolution": None if first is None else
            [first.color_intrinsics.width, first.color_intrinsics.height],
            "depth_resolution": None if first_depth is None or first_depth.depth_shape is None
            else list(first_depth.depth_shape[:2]),
            "attachments": self.attachment_names(), "size_bytes": self._size_bytes(),
            "problems": list(self.problems),
        }

    def _size_bytes(self) -> int:
        total = 0
        for root, _dirs, names in os.walk(self.path):
            for name in names:
                try:
                    total += os.stat(os.path.join(root, name)).st_size
                except OSError:
                    pass  # deleted while we walked (e.g. recovery running): not part of the take
        return total


# --------------------------------------------------------------------------- recovery


def _repair_jsonl(path: Path) -> None:
    """Drop a garbled last line and terminate a whole-but-unterminated one; fsync."""
    with open(path, "r+b") as f:
        if not _try_lock(f):
            raise TakeError(f"{path}: the take is still being recorded by a running process")
        data = f.read()
        body = data.rstrip(b" \t\r\n")
        start = body.rfind(b"\n") + 1
        last = body[start:]
        if last:
            try:
                json.loads(last)
                whole = True
            except (ValueError, RecursionError):
                whole = False
            keep = len(body) + 1 if whole else start
            if whole and not data[len(body):].startswith(b"\n"):
                f.seek(len(body))
                f.write(b"\n")
            f.truncate(keep)
        else:
            f.truncate(0)
        f.flush()
        os.fsync(f.fileno())


def recover_take(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Close a take whose recorder died (manifest still "recording"); returns its info().

    Marks it "incomplete" with the count of readable frames, deletes payload files that no
    valid frame line refers to (the frame in flight when the process died) and leftover
    ``.tmp`` files, and truncates a garbled last jsonl line. Running it again, or on a take
    that was closed normally, changes nothing.
    """
    take = Path(path)
    manifest = _read_manifest(take)
    if manifest["status"] != "recording":
        return TakeReader(take).info()
    _repair_jsonl(take / FRAMES)
    reader = TakeReader(take)
    used = {ref.rel for e in reader._entries for ref in e.files()}
    removed = 0
    for folder in (*_DATA_DIRS, ATTACHMENTS, "."):
        directory = take / folder
        if not directory.is_dir():
            continue
        for entry in os.scandir(directory):
            rel = entry.name if folder == "." else f"{folder}/{entry.name}"
            orphan = folder in _DATA_DIRS and rel not in used
            if entry.is_file(follow_symlinks=False) and (orphan or entry.name.endswith(".tmp")):
                os.unlink(entry.path)
                removed += 1
        _fsync_dir(directory)
    ts = reader.timestamps()
    manifest.update(status="incomplete", recovered=_iso(time.time()),
                    message=f"recording stopped unexpectedly (the recorder ended without "
                            f"closing the take); recovered {len(reader)} frames, removed "
                            f"{removed} partial files",
                    **_summary(len(reader), reader.indices[0] if len(reader) else None,
                               reader.indices[-1] if len(reader) else None,
                               float(ts[0]) if len(ts) else None,
                               float(ts[-1]) if len(ts) else None))
    _atomic_write(take / MANIFEST, _dumps(manifest, indent=2).encode())
    return TakeReader(take).info()

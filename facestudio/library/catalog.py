"""The library catalog: a SQLite index over the library folder, never the source of truth.

Everything the catalog says can be recomputed from the files (``rebuild``), so a lost or
corrupt ``catalog.sqlite`` costs a rescan, never data. What it buys is a fast, queryable
list for the GUI and CLI without opening every take.

Layout it indexes (paths stored relative to the library root, ``/`` separators):

    LIBRARY/takes/SUBJECT/TAKE/manifest.json              takes (docs/formats.md, "Take")
    LIBRARY/datasets/SUBJECT/TAKE/segNN-LABEL/segment.json fused segments (dataset/segment.py)
    LIBRARY/models/KIND/RUN/config.toml                    training runs (models/runs.py); the
        segments used come from RUN/segments.json ({"names": ["SUBJECT/TAKE/segNN-LABEL", ...]}),
        the newest checkpoint from RUN/checkpoints/latest
    LIBRARY/trash/STAMP-SUBJECT-TAKE/                      deleted takes: trash.json, take/,
        datasets/

Concurrency: the database runs in WAL mode and every call opens its own short-lived
connection, so a GUI and CLI processes (or threads) can read while one writes. Every write is
one ``BEGIN IMMEDIATE`` transaction; the folder scanning that feeds it happens before, so
the write lock is held only for the row updates.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from facestudio.capture.take import MANIFEST, FRAMES, TakeError, TakeReader
from facestudio.dataset.segment import SEGMENT_FILE, Segment, SegmentError
from facestudio.paths import check_name, take_dir
from facestudio.storage import disk_problem, writing

CATALOG_FILE = "catalog.sqlite"
SCHEMA_VERSION = 1
TAKES, DATASETS, MODELS, TRASH = "takes", "datasets", "models", "trash"
RUN_CONFIG, RUN_SEGMENTS, RUN_LATEST = "config.toml", "segments.json", "checkpoints/latest"
TRASH_INFO = "trash.json"
SOURCES = ("capture", "record3d", "stray")

_TABLES = ("model_segments", "models", "segments", "takes", "subjects", "schema_version")
_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE subjects (name TEXT PRIMARY KEY);
CREATE TABLE takes (
    id INTEGER PRIMARY KEY,
    subject TEXT NOT NULL REFERENCES subjects(name) ON DELETE CASCADE,
    take TEXT NOT NULL,
    path TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,            -- manifest status, or 'unreadable'
    frames INTEGER NOT NULL,
    duration_s REAL NOT NULL,
    labels TEXT NOT NULL,            -- JSON list of strings
    source TEXT NOT NULL,            -- capture | record3d | stray
    created TEXT,
    size_bytes INTEGER NOT NULL,
    problem TEXT,                    -- why it is unreadable, or the reader's first problem
    signature TEXT NOT NULL,         -- file stamps: unchanged means sync skips it
    UNIQUE (subject, take));
CREATE TABLE segments (
    id INTEGER PRIMARY KEY,
    subject TEXT NOT NULL REFERENCES subjects(name) ON DELETE CASCADE,
    take TEXT NOT NULL,
    segment_id TEXT NOT NULL,
    path TEXT NOT NULL UNIQUE,
    label TEXT,
    blendshapes TEXT,                -- JSON list of 52 floats
    views INTEGER NOT NULL,
    quality TEXT NOT NULL,           -- JSON object (the segment's quality report)
    problem TEXT,
    signature TEXT NOT NULL);
CREATE INDEX segments_by_take ON segments (subject, take);
CREATE TABLE models (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,              -- the folder under models/: autodecoder, diffusion, ...
    created TEXT NOT NULL,           -- when config.toml was written (the run started)
    checkpoint TEXT,                 -- newest complete checkpoint, e.g. step_00001000
    problem TEXT,
    signature TEXT NOT NULL);
CREATE TABLE model_segments (
    model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    segment TEXT NOT NULL,           -- SUBJECT/TAKE/segNN-LABEL
    PRIMARY KEY (model_id, segment));
"""


class CatalogError(ValueError):
    """The catalog cannot be used as asked (a ValueError, so the CLI reports it plainly)."""


@dataclass
class _Plan:
    """Rows to (re)write and paths to drop, computed from disk before the write transaction."""

    takes: list[dict[str, Any]] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    drop: dict[str, set[str]] = field(default_factory=lambda: {"takes": set(), "segments": set(),
                                                                 "models": set()})
    unchanged: dict[str, int] = field(default_factory=lambda: {"takes": 0, "segments": 0,
                                                                 "models": 0})

    def summary(self) -> dict[str, dict[str, int]]:
        return {kind: {"indexed": len(getattr(self, kind)), "unchanged": self.unchanged[kind],
                       "removed": len(self.drop[kind])} for kind in ("takes", "segments", "models")}


def _is_name(name: str) -> bool:
    try:
        check_name("name", name)
    except ValueError:
        return False
    return True


def _stamp(*paths: Path) -> str:
    """Cheap change detector: size and mtime of the files a row was computed from."""
    parts = []
    for p in paths:
        try:
            st = p.stat()
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append("-")
    return "/".join(parts)


def _subdirs(folder: Path) -> list[Path]:
    """Child folders with library-safe names (hidden staging folders and strays excluded)."""
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and _is_name(p.name))
    except OSError:
        return []


def _take_row(subject: str, take: str, path: Path, rel: str) -> dict[str, Any]:
    signature = _stamp(path / MANIFEST, path / FRAMES)
    row: dict[str, Any] = {"subject": subject, "take": take, "path": rel, "signature": signature,
                           "status": "unreadable", "frames": 0, "duration_s": 0.0, "labels": [],
                           "source": "capture", "created": None, "size_bytes": 0, "problem": None}
    try:
        reader = TakeReader(path)
        info = reader.info()
    except (TakeError, OSError) as exc:
        row["problem"] = str(exc)
        return row
    manifest = reader.manifest
    labels = manifest.get("labels")
    if not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        expression = manifest.get("expression")
        labels = [expression] if isinstance(expression, str) and expression else []
    source = manifest.get("source")
    row.update(status=info["status"], frames=info["frames"], duration_s=info["duration_s"],
               labels=labels, source=source if source in SOURCES else "capture",
               created=info["created"] if isinstance(info["created"], str) else None,
               size_bytes=info["size_bytes"],
               problem=info["problems"][0] if info["problems"] else None)
    return row


def _segment_row(subject: str, take: str, path: Path, rel: str) -> dict[str, Any]:
    row: dict[str, Any] = {"subject": subject, "take": take, "segment_id": path.name, "path": rel,
                           "label": None, "blendshapes": None, "views": 0, "quality": {},
                           "problem": None, "signature": _stamp(path / SEGMENT_FILE)}
    try:
        info = Segment(path).info
    except SegmentError as exc:
        row["problem"] = str(exc)
        return row
    row.update(label=info.label, blendshapes=info.blendshapes, views=len(info.views),
               quality=info.quality)
    return row


def _model_row(path: Path, rel: str) -> dict[str, Any]:
    files = (path / RUN_CONFIG, path / RUN_SEGMENTS, path / RUN_LATEST)
    row: dict[str, Any] = {"path": rel, "kind": rel.split("/")[1], "checkpoint": None,
                           "created": "", "segments": [], "problem": None,
                           "signature": _stamp(*files)}
    with contextlib.suppress(OSError):
        row["created"] = datetime.fromtimestamp(files[0].stat().st_mtime, timezone.utc) \
            .isoformat(timespec="seconds")
    with contextlib.suppress(OSError, UnicodeDecodeError):
        row["checkpoint"] = files[2].read_text(encoding="utf-8").strip() or None
    try:
        names = json.loads(files[1].read_text(encoding="utf-8")).get("names")
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise ValueError("'names' is not a list of segment names")
        row["segments"] = sorted(set(names))
    except FileNotFoundError:
        row["problem"] = f"{files[1]} is missing (the run never started training)"
    except (OSError, ValueError, AttributeError, RecursionError) as exc:
        row["problem"] = f"{files[1]}: unreadable ({exc})"
    return row


def _rmdir_empty(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents up to (not including) ``stop`` while they are empty."""
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Catalog:
    """The index of one library folder; safe to use from many threads and processes.

    Opening a library that has no (usable) catalog yet indexes the whole folder once.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.db_path = self.root / CATALOG_FILE
        with writing(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
        self._ensure_schema()

    # ------------------------------------------------------------------ database plumbing

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA foreign_keys = ON")
        return con

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction on a fresh connection: IMMEDIATE for writers, a snapshot for readers.

        SQLite failures (locked for longer than the timeout, full or read-only disk, corrupt
        file) become CatalogError naming the database; the SQLite error is the ``__cause__``.
        """
        with self._sqlite_errors(), contextlib.closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield con
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    @contextlib.contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise CatalogError(self._describe(exc)) from exc

    def _describe(self, exc: sqlite3.Error) -> str:
        """A full or read-only disk in the words every other writer uses (facestudio.storage)."""
        name = getattr(exc, "sqlite_errorname", "")
        code = None
        if name == "SQLITE_FULL":
            code = errno.ENOSPC
        elif name.startswith("SQLITE_READONLY") or (
                name == "SQLITE_CANTOPEN" and not os.access(self.root, os.W_OK)):
            code = errno.EROFS
        return disk_problem(code, self.db_path, str(exc)) or f"{self.db_path}: {exc}"

    def _ensure_schema(self) -> None:
        """Create the schema on first use; rebuild from disk a new, old or unreadable catalog.

        A file SQLite calls corrupt is moved aside (``catalog.sqlite.corrupt-STAMP``) rather
        than repaired: it is only an index, and the folder it indexes is intact. Other SQLite
        errors (a lock, permissions) leave it alone.
        """
        try:
            refill = self._create_or_check()
        except CatalogError as exc:
            cause = exc.__cause__
            if not isinstance(cause, sqlite3.DatabaseError) or not (
                    getattr(cause, "sqlite_errorname", "") in ("SQLITE_NOTADB", "SQLITE_CORRUPT")
                    or "not a database" in str(cause) or "malformed" in str(cause)):
                raise
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            for suffix in ("", "-wal", "-shm"):
                old = Path(f"{self.db_path}{suffix}")
                if old.exists():
                    os.replace(old, old.with_name(f"{old.name}.corrupt-{stamp}"))
            refill = self._create_or_check()
        if refill:
            self.sync()

    def _create_or_check(self) -> bool:
        """Make the schema current; True when rows must be (re)filled from disk.

        The common case (current schema) only reads, so opening a catalog never waits for
        a writer.
        """
        with self._transaction(write=False) as con:
            if self._version(con) == SCHEMA_VERSION:
                return False
        with self._sqlite_errors(), contextlib.closing(self._connect()) as con:
            con.execute("PRAGMA journal_mode = WAL")  # persistent; not possible in a transaction
        with self._transaction(write=True) as con:
            version = self._version(con)
            if version == SCHEMA_VERSION:  # another process created it meanwhile
                return False
            if version is not None and version > SCHEMA_VERSION:
                raise CatalogError(
                    f"{self.db_path} was written by a newer FaceStudio (catalog schema {version}, "
                    f"this version knows {SCHEMA_VERSION}); update FaceStudio, or delete that "
                    "file to re-index the library with this version (no data is lost)")
            self._recreate(con)
        return True

    @staticmethod
    def _version(con: sqlite3.Connection) -> int | None:
        if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchone() is None:
            return None
        row = con.execute("SELECT version FROM schema_version").fetchone()
        return None if row is None else int(row[0])

    @staticmethod
    def _recreate(con: sqlite3.Connection) -> None:
        for table in _TABLES:
            con.execute(f"DROP TABLE IF EXISTS {table}")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                con.execute(statement)
        con.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))

    # ------------------------------------------------------------------ indexing

    def _plan(self, known: dict[str, dict[str, str]], scope: tuple[str, str] | None) -> _Plan:
        """Compare the folders (all, or one subject/take) with the known row signatures."""
        plan = _Plan()
        found: dict[str, set[str]] = {"takes": set(), "segments": set(), "models": set()}

        def consider(kind: str, rel: str, signature: str, make: Any) -> None:
            found[kind].add(rel)
            if known[kind].get(rel) == signature:
                plan.unchanged[kind] += 1
            else:
                getattr(plan, kind).append(make())

        for kind, base in (("takes", TAKES), ("segments", DATASETS)):
            for subject_dir in _subdirs(self.root / base):
                if scope and subject_dir.name != scope[0]:
                    continue
                for take_path in _subdirs(subject_dir):
                    if scope and take_path.name != scope[1]:
                        continue
                    subject, take = subject_dir.name, take_path.name
                    if kind == "takes":
                        if (take_path / MANIFEST).is_file():
                            rel = f"{base}/{subject}/{take}"
                            consider(kind, rel, _stamp(take_path / MANIFEST, take_path / FRAMES),
                                     lambda: _take_row(subject, take, take_path, rel))
                        continue
                    for seg in _subdirs(take_path):
                        if (seg / SEGMENT_FILE).is_file():
                            rel = f"{base}/{subject}/{take}/{seg.name}"
                            consider(kind, rel, _stamp(seg / SEGMENT_FILE),
                                     lambda: _segment_row(subject, take, seg, rel))
        if scope is None:
            for kind_dir in _subdirs(self.root / MODELS):
                for run in _subdirs(kind_dir):
                    if (run / RUN_CONFIG).is_file():
                        rel = f"{MODELS}/{kind_dir.name}/{run.name}"
                        consider("models", rel, _stamp(*(run / f for f in (
                            RUN_CONFIG, RUN_SEGMENTS, RUN_LATEST))), lambda: _model_row(run, rel))
        for kind in found:
            if scope is not None and kind == "models":
                continue
            in_scope = known[kind] if scope is None else {
                rel for rel in known[kind] if rel.split("/")[1:3] == list(scope)}
            plan.drop[kind] = set(in_scope) - found[kind]
        return plan

    def _known(self) -> dict[str, dict[str, str]]:
        with self._transaction(write=False) as con:
            return {kind: {r["path"]: r["signature"]
                           for r in con.execute(f"SELECT path, signature FROM {kind}")}
                    for kind in ("takes", "segments", "models")}

    @staticmethod
    def _apply(con: sqlite3.Connection, plan: _Plan) -> None:
        for kind in ("takes", "segments", "models"):
            for rel in plan.drop[kind] | {r["path"] for r in getattr(plan, kind)}:
                con.execute(f"DELETE FROM {kind} WHERE path = ?", (rel,))
        for row in plan.takes + plan.segments:
            con.execute("INSERT OR IGNORE INTO subjects (name) VALUES (?)", (row["subject"],))
        for r in plan.takes:
            con.execute(
                "INSERT INTO takes (subject, take, path, status, frames, duration_s, labels, "
                "source, created, size_bytes, problem, signature) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (r["subject"], r["take"], r["path"], r["status"], r["frames"], r["duration_s"],
                 json.dumps(r["labels"]), r["source"], r["created"], r["size_bytes"],
                 r["problem"], r["signature"]))
        for r in plan.segments:
            con.execute(
                "INSERT INTO segments (subject, take, segment_id, path, label, blendshapes, views, "
                "quality, problem, signature) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (r["subject"], r["take"], r["segment_id"], r["path"], r["label"],
                 None if r["blendshapes"] is None else json.dumps(r["blendshapes"]),
                 r["views"], json.dumps(r["quality"], default=str), r["problem"], r["signature"]))
        for r in plan.models:
            cur = con.execute("INSERT INTO models (path, kind, created, checkpoint, problem, "
                              "signature) VALUES (?,?,?,?,?,?)",
                              (r["path"], r["kind"], r["created"], r["checkpoint"], r["problem"],
                               r["signature"]))
            con.executemany("INSERT INTO model_segments (model_id, segment) VALUES (?, ?)",
                            [(cur.lastrowid, s) for s in r["segments"]])
        con.execute("DELETE FROM subjects WHERE name NOT IN "
                    "(SELECT subject FROM takes UNION SELECT subject FROM segments)")

    def sync(self) -> dict[str, dict[str, int]]:
        """Bring the catalog up to date with the folder; rows whose files are unchanged are skipped.

        Returns per kind (takes, segments, models) how many rows were indexed, left unchanged
        and removed.
        """
        plan = self._plan(self._known(), None)
        with self._transaction(write=True) as con:
            self._apply(con, plan)
        return plan.summary()

    def index_take(self, subject: str, take: str) -> dict[str, Any]:
        """(Re)index one take and its segments, e.g. right after a capture or import finished."""
        folder = take_dir(self.root, subject, take)
        if not (folder / MANIFEST).is_file():
            raise CatalogError(f"no take {subject}/{take} in {self.root} ({folder} has no {MANIFEST})")
        plan = self._plan(self._known(), (subject, take))
        with self._transaction(write=True) as con:
            self._apply(con, plan)
        return self.take(subject, take)

    def rebuild(self) -> dict[str, dict[str, int]]:
        """Drop every row and re-index the whole folder, in one transaction.

        Readers see the old rows until the new ones are committed.
        """
        plan = self._plan({"takes": {}, "segments": {}, "models": {}}, None)
        with self._transaction(write=True) as con:
            self._recreate(con)
            self._apply(con, plan)
        return plan.summary()

    # ------------------------------------------------------------------ queries

    @staticmethod
    def _take_dict(root: Path, r: sqlite3.Row) -> dict[str, Any]:
        return {"subject": r["subject"], "take": r["take"], "path": str(root / r["path"]),
                "status": r["status"], "frames": r["frames"], "duration_s": r["duration_s"],
                "labels": json.loads(r["labels"]), "source": r["source"], "created": r["created"],
                "size_bytes": r["size_bytes"], "segments": r["segments"], "problem": r["problem"]}

    @staticmethod
    def _segment_dict(root: Path, r: sqlite3.Row) -> dict[str, Any]:
        return {"name": f"{r['subject']}/{r['take']}/{r['segment_id']}", "subject": r["subject"],
                "take": r["take"], "segment_id": r["segment_id"], "path": str(root / r["path"]),
                "label": r["label"], "views": r["views"],
                "blendshapes": None if r["blendshapes"] is None else json.loads(r["blendshapes"]),
                "quality": json.loads(r["quality"]), "problem": r["problem"]}

    _TAKES_SQL = ("SELECT t.*, (SELECT COUNT(*) FROM segments s WHERE s.subject = t.subject "
                  "AND s.take = t.take) AS segments FROM takes t")

    def take(self, subject: str, take: str) -> dict[str, Any]:
        """One take's row; CatalogError if it is not indexed."""
        with self._transaction(write=False) as con:
            row = con.execute(self._TAKES_SQL + " WHERE subject = ? AND take = ?",
                              (subject, take)).fetchone()
        if row is None:
            raise CatalogError(f"take {subject}/{take} is not in the catalog of {self.root}")
        return self._take_dict(self.root, row)

    def list(self, subject: str | None = None) -> dict[str, Any]:
        """Everything indexed (optionally one subject's), as plain JSON-ready dicts.

        One read transaction, so the lists are consistent with each other even while
        another process writes.
        """
        where, args = ("WHERE subject = ?", (subject,)) if subject else ("", ())
        with self._transaction(write=False) as con:
            takes = con.execute(f"{self._TAKES_SQL} {where.replace('subject', 't.subject')} "
                                "ORDER BY t.subject, t.take", args).fetchall()
            segments = con.execute(f"SELECT * FROM segments {where} ORDER BY subject, take, "
                                   "segment_id", args).fetchall()
            subjects = con.execute(
                "SELECT s.name, (SELECT COUNT(*) FROM takes t WHERE t.subject = s.name) AS takes, "
                "(SELECT COUNT(*) FROM segments g WHERE g.subject = s.name) AS segments, "
                "(SELECT COALESCE(SUM(frames), 0) FROM takes t WHERE t.subject = s.name) AS frames "
                f"FROM subjects s {where.replace('subject', 's.name')} ORDER BY s.name",
                args).fetchall()
            models = con.execute("SELECT * FROM models ORDER BY path").fetchall()
            used = {}
            for m in models:
                used[m["id"]] = [r[0] for r in con.execute(
                    "SELECT segment FROM model_segments WHERE model_id = ? ORDER BY segment",
                    (m["id"],))]
        return {
            "library": str(self.root),
            "subjects": [dict(r) for r in subjects],
            "takes": [self._take_dict(self.root, r) for r in takes],
            "segments": [self._segment_dict(self.root, r) for r in segments],
            "models": [{"name": m["path"].split("/", 2)[2], "path": str(self.root / m["path"]),
                        "kind": m["kind"], "created": m["created"], "checkpoint": m["checkpoint"],
                        "segments": used[m["id"]], "problem": m["problem"]} for m in models],
        }

    # ------------------------------------------------------------------ trash

    def delete_take(self, subject: str, take: str) -> dict[str, Any]:
        """Move a take and its derived datasets to the trash and drop their rows.

        The datasets move first and the take last: a crash in between leaves a take without
        fused data (valid; fuse again), never fused data pointing at a vanished take.
        """
        source = take_dir(self.root, subject, take)
        if not (source / MANIFEST).is_file():
            raise CatalogError(f"no take {subject}/{take} in {self.root}")
        try:
            status = json.loads((source / MANIFEST).read_text(encoding="utf-8")).get("status")
        except (OSError, ValueError, AttributeError):
            status = None
        if status == "recording":
            raise CatalogError(f"take {subject}/{take} is still being recorded (or its recorder "
                               f"crashed: run `facestudio take recover {source}` first)")
        datasets = self.root / DATASETS / subject / take
        deleted = datetime.now(timezone.utc)
        trash = self.root / TRASH
        trash.mkdir(exist_ok=True)
        base = f"{deleted.strftime('%Y%m%dT%H%M%SZ')}-{subject}-{take}"
        entry, n = trash / base, 1
        while True:
            try:
                entry.mkdir()
                break
            except FileExistsError:
                n += 1
                entry = trash / f"{base}-{n}"
        try:
            frames = self.take(subject, take)["frames"]
        except CatalogError:
            frames = None
        _write_json(entry / TRASH_INFO, {"subject": subject, "take": take, "frames": frames,
                                         "deleted": deleted.isoformat(timespec="seconds")})
        moves = [(datasets, entry / DATASETS)] if datasets.is_dir() else []
        moves.append((source, entry / "take"))
        done: list[tuple[Path, Path]] = []
        try:
            for src, dst in moves:
                os.rename(src, dst)
                done.append((src, dst))
        except OSError as exc:
            for src, dst in reversed(done):
                os.rename(dst, src)
            shutil.rmtree(entry, ignore_errors=True)
            raise OSError(f"could not move take {subject}/{take} to the trash: {exc}") from exc
        _rmdir_empty(source.parent, self.root / TAKES)
        _rmdir_empty(datasets.parent, self.root / DATASETS)
        with self._transaction(write=True) as con:
            con.execute("DELETE FROM segments WHERE subject = ? AND take = ?", (subject, take))
            con.execute("DELETE FROM takes WHERE subject = ? AND take = ?", (subject, take))
            con.execute("DELETE FROM subjects WHERE name NOT IN "
                        "(SELECT subject FROM takes UNION SELECT subject FROM segments)")
        return {"deleted": f"{subject}/{take}", "trash": entry.name, "path": str(entry),
                "datasets_moved": bool(moves[:-1])}

    def _trash_entry(self, name: str) -> tuple[Path, dict[str, Any]]:
        if not _is_name(name):
            raise CatalogError(f"invalid trash entry name {name!r}")
        entry = self.root / TRASH / name
        try:
            info = json.loads((entry / TRASH_INFO).read_text(encoding="utf-8"))
            check_name("subject", info["subject"])
            check_name("take", info["take"])
        except FileNotFoundError:
            raise CatalogError(f"no trash entry {name!r} in {self.root / TRASH}") from None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise CatalogError(f"{entry / TRASH_INFO}: unreadable trash record ({exc!r})") from None
        return entry, info

    def list_trash(self) -> list[dict[str, Any]]:
        """Deleted takes that can be restored, oldest first."""
        out = []
        for entry in _subdirs(self.root / TRASH):
            try:
                _, info = self._trash_entry(entry.name)
            except CatalogError as exc:
                out.append({"name": entry.name, "path": str(entry), "problem": str(exc)})
                continue
            out.append({"name": entry.name, "path": str(entry), "subject": info["subject"],
                        "take": info["take"], "frames": info.get("frames"),
                        "deleted": info.get("deleted"), "has_take": (entry / "take").is_dir(),
                        "has_datasets": (entry / DATASETS).is_dir(), "problem": None})
        return out

    def restore(self, name: str) -> dict[str, Any]:
        """Move a trash entry back where it came from and index it again.

        Refuses (changing nothing) when a take of the same name exists again. The take moves
        first, so an interrupted restore is finished by running it again.
        """
        entry, info = self._trash_entry(name)
        subject, take = info["subject"], info["take"]
        moves = [(entry / "take", take_dir(self.root, subject, take)),
                 (entry / DATASETS, self.root / DATASETS / subject / take)]
        for src, dst in moves:
            if src.exists() and dst.exists():
                raise CatalogError(f"cannot restore {name}: {dst} exists again (delete or rename "
                                   "that take first)")
        for src, dst in moves:
            if src.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.rename(src, dst)
        (entry / TRASH_INFO).unlink()
        entry.rmdir()
        self.index_take(subject, take)
        return {"restored": f"{subject}/{take}", "path": str(moves[0][1]), "trash": name}


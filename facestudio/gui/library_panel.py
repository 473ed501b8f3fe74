"""The Library panel: subjects -> takes -> segments; fuse, inspect, export, trash, restore.

It calls the core exactly as the CLI does (``Catalog``, ``fuse_take``, the exporters), each
call as a :class:`~facestudio.gui.workers.Jobs` job: the catalog sync and thumbnails
(:mod:`facestudio.gui.library_scan`), fusion (cancellable, with progress here and in the
status bar), delete/restore and exports. Only reading a segment's PLY for the viewport
happens on the GUI thread, because VTK objects must be made there.

The panel re-reads the library whenever it is shown, so a take just recorded in Capture (or
imported or fused from the CLI) appears when the user comes here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QImage, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QDialog, QFileDialog, QGroupBox, QHBoxLayout,
                               QHeaderView, QLabel, QListWidget, QListWidgetItem, QMessageBox,
                               QProgressBar, QPushButton, QScrollArea, QSplitter, QStackedWidget,
                               QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from facestudio.gui.imaging import bgr_to_qimage
from facestudio.gui.library_details import (labels_text, segment_html, segment_status,
                                            take_html, take_status)
from facestudio.gui.library_scan import THUMB_SIZE, models_by_segment, scan_library
from facestudio.gui.mesh_layer import MeshLayer, read_mesh
from facestudio.gui.pages import Banner
from facestudio.gui.viewport import Viewport
from facestudio.gui.workers import Job, Jobs

ICON_SIZE = QSize(64, 48)
ROLE = Qt.ItemDataRole.UserRole
COLUMNS = ("Name", "Expression", "Frames", "Status")
MESH_FILTERS = {"PLY with vertex colors (*.ply)": ".ply", "OBJ with vertex colors (*.obj)": ".obj",
                "STL, geometry only (*.stl)": ".stl", "glTF binary (*.glb)": ".glb"}


class LibraryPanel(QWidget):
    """Journey step 2 (PRODUCT.md): the takes on disk, their fusion and their exports."""

    fuse_progress = Signal(int)        # percent of the running fusion; -1 when none runs
    notice = Signal(str)               # one line of news for the status bar
    capture_requested = Signal()       # the empty state's "Go to Capture"

    def __init__(self, library: Path, jobs: Jobs, viewport: Viewport,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.library = library
        self.jobs = jobs
        self.mesh = MeshLayer(viewport, "library-mesh")
        self.listing: dict[str, Any] | None = None
        self.trash: list[dict[str, Any]] = []
        self._keys: dict[str, str] = {}                  # path -> version key (library_scan)
        self._facts: dict[str, dict[str, Any]] = {}      # version key -> thumbnail, reader facts
        self._models: dict[str, list[str]] = {}          # segment name -> runs that used it
        self._fused_labels: dict[tuple[str, str], list[str]] = {}   # (subject, take) -> labels
        self._scan_job: Job | None = None
        self._scan_again = False
        self._fuse_job: Job | None = None
        self._fuse_take: dict[str, Any] | None = None
        self._fuse_text = ""
        self._task_job: Job | None = None                 # delete, restore or export
        self._select_next: str | None = None              # path to select after the next scan
        self._shown_mesh: str | None = None
        self._closed = False                              # the window is closing: start nothing
        self.trash_dialog = TrashDialog(self)
        self.trash_dialog.restore_requested.connect(self.restore)
        self._build()
        self._show_details(None)

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.banner = Banner()

        title = QLabel("Library")
        title.setObjectName("pageTitle")
        self.summary_label = QLabel("Reading the library…")
        self.summary_label.setObjectName("hint")
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("Read the library folder again (takes recorded, imported "
                                       "or fused from the command line appear)")
        self.refresh_button.clicked.connect(self.refresh)
        self.trash_button = QPushButton("Trash")
        self.trash_button.setToolTip("Deleted takes, which can be restored")
        self.trash_button.clicked.connect(self.show_trash)
        header = QHBoxLayout()
        header.addWidget(title)
        header.addSpacing(12)
        header.addWidget(self.summary_label, 1, Qt.AlignmentFlag.AlignBottom)
        header.addWidget(self.refresh_button)
        header.addWidget(self.trash_button)

        self.tree = QTreeWidget()
        self.tree.setObjectName("libraryTree")
        self.tree.setColumnCount(len(COLUMNS))
        self.tree.setHeaderLabels(COLUMNS)
        self.tree.setIconSize(ICON_SIZE)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.tree.header().setStretchLastSection(False)
        self.tree.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for col in range(1, len(COLUMNS)):
            self.tree.header().setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.itemSelectionChanged.connect(self._selection_changed)

        self.details = QGroupBox("Details")
        self.details_pages = QStackedWidget()
        self.hint_label = QLabel("Select a take to see its recording and fuse it, or a fused "
                                 "segment to see its mesh in the viewport and its quality report.")
        self.hint_label.setObjectName("hint")
        self.hint_label.setWordWrap(True)
        self.hint_label.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.details_pages.addWidget(self.hint_label)
        self.details_pages.addWidget(self._build_take_page())
        self.details_pages.addWidget(self._build_segment_page())
        box = QVBoxLayout(self.details)
        box.addWidget(self.details_pages)

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.tree)
        splitter.addWidget(self.details)
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 0)
        splitter.setChildrenCollapsible(False)
        splitter.setSizes([420, 340])

        self.content = QStackedWidget()
        self.content.addWidget(self._build_empty_state())
        self.content.addWidget(splitter)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(14, 12, 14, 12)
        layout.addLayout(header)
        layout.addWidget(self.banner)
        layout.addWidget(self.content, 1)

    def _build_empty_state(self) -> QWidget:
        page = QWidget()
        heading = QLabel("Your library is empty")
        heading.setObjectName("emptyTitle")
        text = QLabel(
            "<p>Takes you record appear here, grouped by subject. Record one in "
            "<b>Capture</b>: connect an iPad, or click <i>Add virtual device</i> to stream a "
            "synthetic face, then press <b>Record</b>.</p>"
            "<p>Captures from Record3D (.r3d) or Stray Scanner can be imported with<br>"
            "<code>facestudio import FILE.r3d --subject NAME --take NAME</code></p>"
            f"<p>Library folder: <code>{self.library}</code></p>")
        text.setWordWrap(True)
        text.setTextFormat(Qt.TextFormat.RichText)
        text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.go_capture_button = QPushButton("Go to Capture")
        self.go_capture_button.setObjectName("primary")
        self.go_capture_button.clicked.connect(self.capture_requested)
        row = QHBoxLayout()
        row.addWidget(self.go_capture_button)
        row.addStretch(1)
        layout = QVBoxLayout(page)
        layout.setContentsMargins(8, 40, 8, 8)
        layout.addWidget(heading)
        layout.addWidget(text)
        layout.addLayout(row)
        layout.addStretch(1)
        self.empty_text = text
        return page

    @staticmethod
    def _info_area() -> tuple[QScrollArea, QLabel, QLabel]:
        """Thumbnail on the left, scrollable rich text on the right."""
        thumb = QLabel()
        thumb.setObjectName("thumb")
        thumb.setFixedSize(*THUMB_SIZE)
        thumb.setAlignment(Qt.AlignmentFlag.AlignCenter)
        text = QLabel()
        text.setWordWrap(True)
        text.setTextFormat(Qt.TextFormat.RichText)
        text.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        inner = QWidget()
        row = QHBoxLayout(inner)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(thumb, 0, Qt.AlignmentFlag.AlignTop)
        row.addWidget(text, 1)
        area = QScrollArea()
        area.setObjectName("detailsArea")
        area.setWidgetResizable(True)
        area.setFrameShape(QScrollArea.Shape.NoFrame)
        area.setWidget(inner)
        return area, thumb, text

    def _build_take_page(self) -> QWidget:
        page = QWidget()
        area, self.take_thumb, self.take_text = self._info_area()
        self.fuse_button = QPushButton("Fuse")
        self.fuse_button.setObjectName("primary")
        self.fuse_button.setToolTip("Masks, head pose, expression segments, TSDF mesh and training "
                                    "views (replaces a previous fusion of this take)")
        self.fuse_button.clicked.connect(self.fuse_selected)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel_fusion)
        self.delete_button = QPushButton("Delete take…")
        self.delete_button.setObjectName("danger")
        self.delete_button.clicked.connect(self.delete_selected)
        self.fuse_progress_bar = QProgressBar()
        self.fuse_progress_bar.setObjectName("fuseProgress")
        self.fuse_progress_bar.setRange(0, 100)
        self.fuse_progress_bar.setTextVisible(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.fuse_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.fuse_progress_bar, 1)
        buttons.addStretch(0)       # keeps the buttons compact while no progress bar shows
        buttons.addWidget(self.delete_button)
        layout = QVBoxLayout(page)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(area, 1)
        layout.addLayout(buttons)
        return page

    def _build_segment_page(self) -> QWidget:
        page = QWidget()
        area, self.segment_thumb, self.segment_text = self._info_area()
        self.front_button = QPushButton("Front view")
        self.front_button.setToolTip("Look at the fused face from the front again")
        self.front_button.clicked.connect(self.mesh.front_view)
        self.export_nerf_button = QPushButton("Export for nerfstudio…")
        self.export_nerf_button.setToolTip("transforms.json, images, 16-bit depth and masks")
        self.export_nerf_button.clicked.connect(self.export_nerfstudio)
        self.export_mesh_button = QPushButton("Export mesh…")
        self.export_mesh_button.setToolTip("PLY, OBJ, STL or glTF binary, with vertex colors")
        self.export_mesh_button.clicked.connect(self.export_mesh)
        buttons = QHBoxLayout()
        buttons.addWidget(self.front_button)
        buttons.addStretch(1)
        buttons.addWidget(self.export_nerf_button)
        buttons.addWidget(self.export_mesh_button)
        layout = QVBoxLayout(page)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(area, 1)
        layout.addLayout(buttons)
        return page

    # ------------------------------------------------------------------ messages
    def show_message(self, text: str, kind: str = "info") -> None:
        """An inline banner (info / success / error); errors also go to the status bar."""
        self.banner.show_message(text, kind)
        self.notice.emit(text)

    # ------------------------------------------------------------------ visibility
    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        if not event.spontaneous():
            self.refresh()
            self._show_selected_mesh()

    def hideEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().hideEvent(event)
        if not event.spontaneous():
            self.mesh.hide()
            self._shown_mesh = None

    # ------------------------------------------------------------------ reading the library
    def refresh(self) -> None:
        """Sync the catalog and reload the tree in the background (at most one scan at a time)."""
        if self._closed:
            return
        if self._scan_job is not None:
            self._scan_again = True
            return
        root, known = self.library, set(self._facts)
        self._scan_job = self.jobs.start("read library",
                                         lambda job: scan_library(root, known, job.cancel),
                                         on_success=self._scanned, on_error=self._scan_failed)

    def is_scanning(self) -> bool:
        return self._scan_job is not None

    def _scanned(self, result: dict[str, Any]) -> None:
        self._scan_job = None
        for key, facts in result["facts"].items():
            thumb = facts["thumb"]
            self._facts[key] = {**facts, "thumb": None if thumb is None else bgr_to_qimage(thumb)}
        self._keys = result["keys"]
        live = set(self._keys.values())
        self._facts = {k: v for k, v in self._facts.items() if k in live}
        self.listing, self.trash = result["listing"], result["trash"]
        self._models = models_by_segment(self.listing["models"])
        self._populate()
        self.trash_dialog.set_entries(self.trash)
        if self._scan_again:
            self._scan_again = False
            self.refresh()

    def _scan_failed(self, exc: Exception) -> None:
        self._scan_job = None
        self.summary_label.setText("Could not read the library")
        self.show_message(f"Could not read the library at {self.library}: {exc}", "error")
        if self._scan_again:
            self._scan_again = False
            self.refresh()

    def _facts_for(self, path: str) -> dict[str, Any]:
        return self._facts.get(self._keys.get(path, ""), {})

    def _icon(self, path: str) -> QIcon:
        thumb: QImage | None = self._facts_for(path).get("thumb")
        return QIcon() if thumb is None else QIcon(QPixmap.fromImage(thumb))

    def _populate(self) -> None:
        """Rebuild the tree from :attr:`listing`, keeping the selection where it still exists."""
        listing = self.listing
        selected = self._select_next or self.selected_path()
        self._select_next = None
        takes, segments = listing["takes"], listing["segments"]
        self.summary_label.setText(f"{_count(len(listing['subjects']), 'subject')} · "
                                   f"{_count(len(takes), 'take')} · "
                                   f"{_count(len(segments), 'segment')}"
                                   if takes or segments else "")
        self._fused_labels = {}
        for g in segments:
            labels = self._fused_labels.setdefault((g["subject"], g["take"]), [])
            if g["label"] and g["label"] not in labels:
                labels.append(g["label"])
        self.trash_button.setText(f"Trash ({len(self.trash)})" if self.trash else "Trash")
        self.content.setCurrentIndex(1 if takes or segments else 0)

        self.tree.blockSignals(True)
        self.tree.clear()
        subjects: dict[str, QTreeWidgetItem] = {}
        take_items: dict[tuple[str, str], QTreeWidgetItem] = {}
        for s in listing["subjects"]:
            item = QTreeWidgetItem(self.tree, [s["name"], "", f"{s['frames']:,}",
                                               f"{_count(s['takes'], 'take')} · "
                                               f"{_count(s['segments'], 'segment')}"])
            item.setData(0, ROLE, ("subject", s))
            font = item.font(0)
            font.setBold(True)
            item.setFont(0, font)
            subjects[s["name"]] = item
        for t in takes:
            parent = subjects[t["subject"]]
            item = QTreeWidgetItem(parent, [t["take"], self._expressions(t), f"{t['frames']:,}",
                                            self._take_status(t)])
            item.setData(0, ROLE, ("take", t))
            item.setIcon(0, self._icon(t["path"]))
            item.setToolTip(0, t["path"])
            if t["problem"]:
                item.setToolTip(3, t["problem"])
            take_items[(t["subject"], t["take"])] = item
        for g in segments:
            parent = take_items.get((g["subject"], g["take"]))
            if parent is None:      # fused data whose take was moved away by hand
                parent = QTreeWidgetItem(subjects[g["subject"]],
                                         [g["take"], "", "", "take missing"])
                parent.setData(0, ROLE, ("missing", None))
                take_items[(g["subject"], g["take"])] = parent
            models = self._models.get(g["name"], [])
            frames = g["quality"].get("frames_used")
            item = QTreeWidgetItem(parent, [g["segment_id"], (g["label"] or "").replace("_", " "),
                                            "" if frames is None else f"{frames:,}",
                                            segment_status(g, models)])
            item.setData(0, ROLE, ("segment", g))
            item.setIcon(0, self._icon(g["path"]))
            item.setToolTip(3, "; ".join(g["quality"].get("warnings") or []) or
                            (f"used by {', '.join(models)}" if models else "fused"))
        self.tree.expandAll()
        target = self._find(selected) if selected else None
        if target is not None:
            target.setSelected(True)
            self.tree.scrollToItem(target)
        self.tree.blockSignals(False)
        self._selection_changed()

    def _find(self, path: str) -> QTreeWidgetItem | None:
        for item in self._items():
            kind, row = item.data(0, ROLE)
            if kind in ("take", "segment") and row["path"] == path:
                return item
        return None

    def _items(self) -> list[QTreeWidgetItem]:
        out, stack = [], [self.tree.topLevelItem(i) for i in range(self.tree.topLevelItemCount())]
        while stack:
            item = stack.pop()
            out.append(item)
            stack.extend(item.child(i) for i in range(item.childCount()))
        return out

    def item_for(self, path: str | Path) -> QTreeWidgetItem | None:
        """The tree item of a take or segment folder (None if it is not listed)."""
        return self._find(str(path))

    def _expressions(self, take: dict[str, Any]) -> str:
        """The take's prompt labels; for takes recorded without one, what fusion found in it."""
        found = self._fused_labels.get((take["subject"], take["take"]))
        return labels_text(take if take["labels"] or not found else {"labels": found})

    def _take_status(self, take: dict[str, Any]) -> str:
        if self._fuse_take is not None and self._fuse_take["path"] == take["path"]:
            return self._fuse_text or "fusing…"
        prefix = f"{take['subject']}/{take['take']}/"
        in_model = any(name.startswith(prefix) for name in self._models)
        return take_status(take, in_model)

    # ------------------------------------------------------------------ selection
    def selected(self) -> tuple[str, Any] | tuple[None, None]:
        items = self.tree.selectedItems()
        return items[0].data(0, ROLE) if items else (None, None)

    def selected_path(self) -> str | None:
        kind, row = self.selected()
        return row["path"] if kind in ("take", "segment") else None

    def select(self, path: str | Path) -> None:
        item = self.item_for(path)
        if item is not None:
            self.tree.setCurrentItem(item)

    def _selection_changed(self) -> None:
        kind, row = self.selected()
        self._show_details(kind, row)
        self._show_selected_mesh()

    def _show_details(self, kind: str | None, row: Any = None) -> None:
        if kind == "take":
            in_model = any(n.startswith(f"{row['subject']}/{row['take']}/") for n in self._models)
            facts = self._facts_for(row["path"])
            self.details.setTitle(f"Take  {row['subject']} / {row['take']}")
            self._set_thumb(self.take_thumb, facts.get("thumb"))
            self.take_text.setText(take_html(row, facts.get("info"), in_model,
                                             self._expressions(row)))
            self.details_pages.setCurrentIndex(1)
        elif kind == "segment":
            models = self._models.get(row["name"], [])
            self.details.setTitle(f"Segment  {row['name']}")
            self._set_thumb(self.segment_thumb, self._facts_for(row["path"]).get("thumb"))
            self.segment_text.setText(segment_html(row, models))
            self.details_pages.setCurrentIndex(2)
        else:
            self.details.setTitle("Details")
            if kind == "subject":
                self.hint_label.setText(
                    f"<b>{row['name']}</b>: {_count(row['takes'], 'take')}, "
                    f"{_count(row['segments'], 'fused segment')}, {row['frames']:,} frames. "
                    "Select a take or a segment.")
            elif kind == "missing":
                self.hint_label.setText("The take these segments were fused from is no longer "
                                        "in the library (moved or deleted outside FaceStudio).")
            else:
                self.hint_label.setText("Select a take to see its recording and fuse it, or a "
                                        "fused segment to see its mesh in the viewport and its "
                                        "quality report.")
            self.details_pages.setCurrentIndex(0)
        self._update_buttons()

    @staticmethod
    def _set_thumb(label: QLabel, image: QImage | None) -> None:
        if image is None:
            label.setPixmap(QPixmap())
            label.setText("no image")
        else:
            label.setPixmap(QPixmap.fromImage(image))

    def _show_selected_mesh(self) -> None:
        """The selected segment's fused mesh in the viewport (GUI thread: VTK); else none."""
        if not self.isVisible():
            return
        kind, row = self.selected()
        if kind != "segment" or row["problem"]:
            self.mesh.hide()
            self._shown_mesh = None
            return
        key = self._keys.get(row["path"])
        if key is not None and key == self._shown_mesh:
            return
        from facestudio.dataset.segment import Segment, SegmentError

        try:
            mesh = read_mesh(Segment(Path(row["path"])).mesh_path)
        except (SegmentError, OSError, ValueError) as exc:
            self.mesh.hide()
            self._shown_mesh = None
            self.show_message(f"Could not show the mesh of {row['name']}: {exc}", "error")
            return
        if self.mesh.show(mesh, f"Fused mesh · {row['name']} · {mesh.n_points:,} vertices"):
            self._shown_mesh = key

    def _update_buttons(self) -> None:
        kind, row = self.selected()
        is_take = kind == "take"
        fusing_this = is_take and self._fuse_take is not None and \
            self._fuse_take["path"] == row["path"]
        usable = is_take and row["status"] not in ("unreadable", "recording")
        self.fuse_button.setEnabled(usable and self._fuse_job is None)
        self.fuse_button.setText("Fuse again" if is_take and row["segments"] else "Fuse")
        self.cancel_button.setVisible(fusing_this)
        self.cancel_button.setEnabled(fusing_this and not self._fuse_job.cancel.is_set())
        self.fuse_progress_bar.setVisible(fusing_this)
        self.delete_button.setEnabled(is_take and row["status"] != "recording" and not fusing_this
                                      and self._task_job is None)
        idle = self._task_job is None
        self.export_nerf_button.setEnabled(kind == "segment" and idle and not row["problem"])
        self.export_mesh_button.setEnabled(kind == "segment" and idle and not row["problem"])

    # ------------------------------------------------------------------ fusion
    def fuse_selected(self) -> None:
        kind, take = self.selected()
        if kind != "take" or self._fuse_job is not None:
            return
        path = Path(take["path"])
        root, subject, name = self.library, take["subject"], take["take"]

        def fuse(job: Job) -> list[str]:
            from facestudio.library.operations import fuse_into_library

            paths = fuse_into_library(root, path, progress=job.report, cancel=job.cancel)
            return [str(p) for p in paths]

        self._fuse_take = take
        self._fuse_text = "fusing…"
        self.fuse_progress_bar.setValue(0)
        self.fuse_progress_bar.setFormat("starting…")
        self._fuse_job = self.jobs.start(f"fuse {subject}/{name}", fuse, on_success=self._fused,
                                         on_error=self._fuse_failed, on_progress=self._fusing)
        self.show_message(f"Fusing {subject}/{name}…")
        self.fuse_progress.emit(0)
        self._set_take_status_text()
        self._update_buttons()

    def cancel_fusion(self) -> None:
        if self._fuse_job is not None:
            self._fuse_job.cancel.set()
            self.fuse_progress_bar.setFormat("cancelling…")
            self._update_buttons()

    def _fusing(self, p: dict[str, Any]) -> None:
        if self._fuse_job is None or self._fuse_job.cancel.is_set():
            return
        percent = int(round(100 * p["fraction"]))
        segment = f" · {p['segment'].replace('_', ' ')}" if p.get("segment") else ""
        self._fuse_text = f"{p['stage']} {percent}%"
        self.fuse_progress_bar.setValue(percent)
        self.fuse_progress_bar.setFormat(f"{p['stage']} frame {p['frame']} / {p['frames']}{segment}")
        self.fuse_progress.emit(percent)
        self._set_take_status_text()

    def _set_take_status_text(self) -> None:
        item = self.item_for(self._fuse_take["path"]) if self._fuse_take else None
        if item is not None:
            item.setText(3, self._take_status(self._fuse_take))

    def _fuse_ended(self) -> dict[str, Any]:
        take = self._fuse_take
        self._fuse_job = self._fuse_take = None
        self._fuse_text = ""
        self.fuse_progress.emit(-1)
        return take

    def _fused(self, paths: list[str]) -> None:
        take = self._fuse_ended()
        names = ", ".join(Path(p).name for p in paths)
        self.show_message(f"Fused {take['subject']}/{take['take']} into {len(paths)} segment"
                          f"{'s' * (len(paths) != 1)}: {names}.", "success")
        if paths and self.selected_path() == take["path"]:
            self._select_next = paths[0]        # show the new mesh right away
        self.refresh()

    def _fuse_failed(self, exc: Exception) -> None:
        from facestudio.dataset.fuse import FusionCancelled

        take = self._fuse_ended()
        name = f"{take['subject']}/{take['take']}"
        if isinstance(exc, FusionCancelled):
            self.show_message(f"Fusion of {name} cancelled; its previous data is unchanged.")
        else:
            self.show_message(f"Could not fuse {name}: {exc}", "error")
        self.refresh()

    # ------------------------------------------------------------------ delete / restore
    def _run_task(self, name: str, fn, on_success) -> None:
        """Delete, restore and exports: one at a time, errors in the banner."""
        if self._task_job is not None or self._closed:
            return
        self._task_job = self.jobs.start(name, fn, on_success=on_success,
                                         on_error=self._task_failed)
        self._update_buttons()

    def _task_done(self) -> None:
        self._task_job = None
        self._update_buttons()

    def _task_failed(self, exc: Exception) -> None:
        name = self._task_job.name if self._task_job else "the operation"
        self._task_done()
        self.show_message(f"Could not {name}: {exc}", "error")
        self.refresh()

    def delete_selected(self) -> None:
        kind, take = self.selected()
        if kind != "take":
            return
        name = f"{take['subject']}/{take['take']}"
        answer = QMessageBox.question(
            self, "Delete take",
            f"Move take {name} ({take['frames']} frames) and its fused segments to the trash?\n\n"
            "You can restore it later from Library › Trash.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No)
        if answer != QMessageBox.StandardButton.Yes:
            return
        root, subject, take_name = self.library, take["subject"], take["take"]

        def delete(_job: Job) -> dict[str, Any]:
            from facestudio.library.catalog import Catalog

            return Catalog(root).delete_take(subject, take_name)

        self._run_task(f"delete {name}", delete, self._deleted)

    def _deleted(self, result: dict[str, Any]) -> None:
        self._task_done()
        self.show_message(f"Moved {result['deleted']} to the trash. Restore it from Trash.",
                          "success")
        self.refresh()

    def show_trash(self) -> None:
        self.trash_dialog.set_entries(self.trash)
        self.trash_dialog.show()
        self.trash_dialog.raise_()

    def restore(self, name: str) -> None:
        root = self.library

        def restore(_job: Job) -> dict[str, Any]:
            from facestudio.library.catalog import Catalog

            return Catalog(root).restore(name)

        self._run_task(f"restore {name}", restore, self._restored)

    def _restored(self, result: dict[str, Any]) -> None:
        self._task_done()
        self.show_message(f"Restored {result['restored']}.", "success")
        self._select_next = result["path"]
        self.refresh()

    # ------------------------------------------------------------------ export
    def _exports_dir(self) -> Path:
        folder = self.library / "exports"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def export_nerfstudio(self) -> None:
        kind, seg = self.selected()
        if kind != "segment":
            return
        chosen = QFileDialog.getExistingDirectory(
            self, f"Export {seg['name']} for nerfstudio (choose an empty folder)",
            str(self._exports_dir()))
        if not chosen:
            return
        out = Path(chosen)
        if out.exists() and any(out.iterdir()):
            # A folder with other files in it: export next to them, under the segment's name.
            out = out / f"{seg['subject']}-{seg['take']}-{seg['segment_id']}"
        segment = Path(seg["path"])

        def export(_job: Job) -> dict[str, Any]:
            from facestudio.export.nerfstudio import export_nerfstudio

            return export_nerfstudio(segment, out)

        self._run_task(f"export {seg['name']} for nerfstudio", export, self._exported_nerfstudio)

    def _exported_nerfstudio(self, result: dict[str, Any]) -> None:
        self._task_done()
        self.show_message(f"Exported {result['frames']} views of {result['segment']} in "
                          f"nerfstudio's layout to {result['out_dir']}", "success")

    def export_mesh(self) -> None:
        kind, seg = self.selected()
        if kind != "segment":
            return
        default = self._exports_dir() / f"{seg['subject']}-{seg['take']}-{seg['segment_id']}.ply"
        chosen, chosen_filter = QFileDialog.getSaveFileName(
            self, f"Export the mesh of {seg['name']}", str(default), ";;".join(MESH_FILTERS))
        if not chosen:
            return
        out = Path(chosen)
        if out.suffix.lower() not in MESH_FILTERS.values():
            out = out.with_name(out.name + MESH_FILTERS.get(chosen_filter, ".ply"))
        segment = Path(seg["path"])

        def export(_job: Job) -> dict[str, Any]:
            from facestudio.export.mesh import export_segment_mesh

            return export_segment_mesh(segment, out)

        self._run_task(f"export the mesh of {seg['name']}", export, self._exported_mesh)

    def _exported_mesh(self, result: dict[str, Any]) -> None:
        self._task_done()
        colors = "" if result["out"].lower().endswith(".stl") else " with vertex colors"
        self.show_message(f"Wrote {result['out']} ({result['vertices']:,} vertices, "
                          f"{result['triangles']:,} triangles{colors}).", "success")

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        """Start no more jobs, close the trash window, let the viewport go.

        The window has already ended the jobs; their last signals may still arrive and must
        not start new ones (a refresh after a cancelled fusion, say).
        """
        self._closed = True
        self.trash_dialog.close()
        self.mesh.hide()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


class TrashDialog(QDialog):
    """Deleted takes, newest first, each restorable to where it was."""

    restore_requested = Signal(str)     # trash entry name

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Trash")
        self.resize(520, 360)
        info = QLabel("Deleted takes keep their fused segments. Restoring puts both back.")
        info.setObjectName("hint")
        info.setWordWrap(True)
        self.list = QListWidget()
        self.list.itemSelectionChanged.connect(self._update)
        self.list.itemDoubleClicked.connect(lambda _item: self.restore_selected())
        self.empty = QLabel("The trash is empty.")
        self.empty.setObjectName("hint")
        self.restore_button = QPushButton("Restore")
        self.restore_button.setObjectName("primary")
        self.restore_button.clicked.connect(self.restore_selected)
        close = QPushButton("Close")
        close.clicked.connect(self.close)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(close)
        buttons.addWidget(self.restore_button)
        layout = QVBoxLayout(self)
        layout.addWidget(info)
        layout.addWidget(self.list, 1)
        layout.addWidget(self.empty)
        layout.addLayout(buttons)
        self._update()

    def set_entries(self, entries: list[dict[str, Any]]) -> None:
        self.list.clear()
        for e in reversed(entries):
            if e["problem"]:
                item = QListWidgetItem(f"{e['name']}\n⚠ {e['problem']}")
                item.setFlags(Qt.ItemFlag.NoItemFlags)
            else:
                frames = f" · {e['frames']} frames" if e.get("frames") is not None else ""
                deleted = (e.get("deleted") or "").replace("T", " ")[:19]
                extra = " · with fused segments" if e["has_datasets"] else ""
                item = QListWidgetItem(f"{e['subject']} / {e['take']}{frames}{extra}\n"
                                       f"deleted {deleted} UTC")
            item.setData(ROLE, e["name"])
            self.list.addItem(item)
        if self.list.count() and not self.list.selectedItems() and \
                self.list.item(0).flags() & Qt.ItemFlag.ItemIsSelectable:
            self.list.item(0).setSelected(True)
        self._update()

    def selected_name(self) -> str | None:
        items = self.list.selectedItems()
        return items[0].data(ROLE) if items else None

    def restore_selected(self) -> None:
        name = self.selected_name()
        if name is not None:
            self.restore_requested.emit(name)

    def _update(self) -> None:
        self.empty.setVisible(self.list.count() == 0)
        self.restore_button.setEnabled(self.selected_name() is not None)

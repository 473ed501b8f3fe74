"""Library-level operations that combine a stage with the catalog, shared by the CLI and GUI."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from facestudio.library.catalog import DATASETS, Catalog


def fuse_into_library(root: Path, take: Path, config: Any = None,
                      progress: Callable[[dict[str, Any]], None] | None = None,
                      cancel: threading.Event | None = None) -> list[Path]:
    """Fuse a library take into LIBRARY/datasets and index the result in the catalog."""
    from facestudio.dataset.fuse import FusionConfig, fuse_take

    paths = fuse_take(take, root / DATASETS, config or FusionConfig(), progress=progress, cancel=cancel)
    if take.parent.parent == root / "takes":
        Catalog(root).index_take(take.parent.name, take.name)
    return paths

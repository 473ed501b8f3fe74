"""Wiping a person: every file and catalog row of one subject, derived models included.

A model trained on a subject's segments can reproduce that face, so it goes too (docs/
security.md). Paths are first renamed into LIBRARY/.purge/ (atomic, so a crash never leaves
a half-deleted take that still looks valid), then removed; the catalog is re-synced last.
Leftovers of killed purges and fusions (which may hold the subject's data) go too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from facestudio.library.catalog import DATASETS, TAKES, Catalog
from facestudio.paths import check_name
from facestudio.storage import remove_stale, staging_dir, staging_parent

def plan_purge(catalog: Catalog, subject: str) -> dict[str, list[Path]]:
    """What purging ``subject`` would delete, by kind (nothing is changed)."""
    check_name("subject", subject)
    catalog.sync()
    root = catalog.root
    plan: dict[str, list[Path]] = {"takes": [], "datasets": [], "trash": [], "models": []}
    for kind, top in (("takes", TAKES), ("datasets", DATASETS)):
        folder = root / top / subject
        if folder.is_dir():
            plan[kind].append(folder)
    for entry in catalog.list_trash():
        if entry.get("subject") == subject:
            plan["trash"].append(Path(entry["path"]))
    for model in catalog.list()["models"]:
        if any(name.split("/", 1)[0] == subject for name in model["segments"]):
            plan["models"].append(Path(model["path"]))
    return plan


def purge_subject(catalog: Catalog, subject: str) -> dict[str, Any]:
    """Delete everything :func:`plan_purge` lists; returns what was removed."""
    plan = plan_purge(catalog, subject)
    with staging_dir(catalog.root / ".purge") as staging:   # also removes killed purges' leftovers
        for i, path in enumerate(p for paths in plan.values() for p in paths):
            os.rename(path, staging / str(i))
    remove_stale(staging_parent(catalog.root / DATASETS))   # a killed fusion's staged segments
    catalog.sync()
    remaining = catalog.list(subject)
    if remaining["takes"] or remaining["segments"]:
        raise OSError(f"subject {subject!r} still has catalog entries after the purge: {remaining}")
    return {"subject": subject, "purged": {k: [str(p) for p in v] for k, v in plan.items()},
            "counts": {k: len(v) for k, v in plan.items()}}


def trash_subject(catalog: Catalog, subject: str) -> dict[str, Any]:
    """The gentle variant: move every take of ``subject`` to the (restorable) trash."""
    check_name("subject", subject)
    catalog.sync()
    takes = [t["take"] for t in catalog.list(subject)["takes"]]
    moved = [catalog.delete_take(subject, take)["trash"] for take in takes]
    return {"subject": subject, "trashed": moved, "counts": {"takes": len(moved)}}


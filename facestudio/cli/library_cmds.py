"""Library commands: `library list|rebuild|delete|trash|restore` and `import`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from facestudio.cli.groups import group
    from facestudio.cli.main import add_json_flag

    lib = group(sub, common, "library")
    p = lib.add_parser("list", parents=[common], help="list subjects, takes, segments and models",
                       description="Update the catalog from the library folder, then list it.")
    p.add_argument("--subject", help="only this subject")
    add_json_flag(p)
    p.set_defaults(func=run_list)

    p = lib.add_parser("rebuild", parents=[common],
                       help="recreate the catalog from the files in the library")
    add_json_flag(p)
    p.set_defaults(func=run_rebuild)

    p = lib.add_parser("delete", parents=[common],
                       help="move a take and its fused datasets to the trash")
    p.add_argument("subject")
    p.add_argument("take")
    add_json_flag(p)
    p.set_defaults(func=run_delete)

    p = lib.add_parser("trash", parents=[common], help="list deleted takes that can be restored")
    add_json_flag(p)
    p.set_defaults(func=run_trash)

    p = lib.add_parser("restore", parents=[common], help="move a take back out of the trash")
    p.add_argument("name", help="trash entry name, as `library trash` lists it")
    add_json_flag(p)
    p.set_defaults(func=run_restore)

    p = lib.add_parser("delete-subject", parents=[common],
                       help="remove a person: to the trash, or everything for good with --purge",
                       description="Without --purge every take of the subject goes to the trash. "
                                   "With --purge every file and catalog row of the subject is "
                                   "deleted: takes, fused segments, trash entries and every trained "
                                   "model whose training data included the subject.")
    p.add_argument("subject")
    p.add_argument("--purge", action="store_true", help="delete for good (cannot be undone)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add_json_flag(p)
    p.set_defaults(func=run_delete_subject)

    p = sub.add_parser("import", parents=[common],
                       help="import a Record3D .r3d file or a Stray Scanner folder as a take",
                       description="The format is detected: a .r3d file is Record3D, a folder "
                                   "with rgb.mp4 is Stray Scanner.")
    p.add_argument("source", type=Path, metavar="FILE.r3d|STRAY_DIR")
    p.add_argument("--subject", required=True, help="person in the capture")
    p.add_argument("--take", required=True, help="take name (unique per subject)")
    p.add_argument("--expression", help="expression label, e.g. neutral, smile")
    add_json_flag(p)
    p.set_defaults(func=run_import)


def _catalog(args: argparse.Namespace) -> Any:
    from facestudio.library.catalog import Catalog
    from facestudio.paths import library_root

    return Catalog(library_root(args.library))


def run_list(args: argparse.Namespace) -> dict[str, Any] | None:
    catalog = _catalog(args)
    catalog.sync()
    listing = catalog.list(args.subject)
    if args.json:
        return listing
    print(f"library {listing['library']}")
    if not listing["takes"] and not listing["segments"]:
        print("no takes yet (capture one, or `facestudio import`)")
    for t in listing["takes"]:
        labels = ",".join(t["labels"]) or "-"
        print(f"{t['subject']}/{t['take']}\t{t['status']}\t{t['frames']} frames\t"
              f"{t['duration_s']:.1f} s\t{labels}\t{t['source']}\t{t['segments']} segments"
              + (f"\t! {t['problem']}" if t["problem"] else ""))
    for m in listing["models"]:
        print(f"model {m['kind']}/{m['name']}\t{m['checkpoint'] or 'no checkpoint'}\t"
              f"{len(m['segments'])} segments" + (f"\t! {m['problem']}" if m["problem"] else ""))
    return None


def run_rebuild(args: argparse.Namespace) -> dict[str, Any]:
    return {"rebuilt": _catalog(args).rebuild()}


def run_delete(args: argparse.Namespace) -> dict[str, Any]:
    return _catalog(args).delete_take(args.subject, args.take)


def run_delete_subject(args: argparse.Namespace) -> dict[str, Any]:
    import sys

    from facestudio.library.purge import plan_purge, purge_subject, trash_subject

    catalog = _catalog(args)
    if not args.purge:
        return trash_subject(catalog, args.subject)
    plan = plan_purge(catalog, args.subject)
    paths = [p for paths in plan.values() for p in paths]
    if not paths:
        raise ValueError(f"nothing of subject {args.subject!r} is in {catalog.root}")
    if not args.yes:
        if not sys.stdin.isatty():
            raise ValueError("refusing to purge without confirmation: add --yes")
        print(f"This permanently deletes {len(paths)} folders of {args.subject!r}:", file=sys.stderr)
        for p in paths:
            print(f"  {p}", file=sys.stderr)
        if input(f"Type the subject name ({args.subject}) to confirm: ").strip() != args.subject:
            raise ValueError("not confirmed; nothing was deleted")
    return purge_subject(catalog, args.subject)


def run_trash(args: argparse.Namespace) -> dict[str, Any] | None:
    entries = _catalog(args).list_trash()
    if args.json:
        return {"trash": entries, "count": len(entries)}
    if not entries:
        print("the trash is empty")
    for e in entries:
        what = f"{e['subject']}/{e['take']}" if e["problem"] is None else f"! {e['problem']}"
        print(f"{e['name']}\t{what}")
    return None


def run_restore(args: argparse.Namespace) -> dict[str, Any]:
    return _catalog(args).restore(args.name)


def run_import(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.library.importers import import_capture
    from facestudio.paths import library_root

    return import_capture(args.source, library_root(args.library), args.subject, args.take,
                          args.expression)

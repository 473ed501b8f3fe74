"""`facestudio facemodel import-ict DIR`: convert a user's ICT-FaceKit checkout for the virtual device."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from facestudio.cli.groups import group
    from facestudio.cli.main import add_json_flag

    q = group(sub, common, "facemodel").add_parser("import-ict", parents=[common],
                      help="convert an ICT-FaceKit checkout (its FaceXModel folder) to FaceStudio's .npz")
    q.add_argument("source", type=Path, help="ICT-FaceKit checkout or its FaceXModel folder")
    q.add_argument("--out", type=Path, help="output .npz (default: LIBRARY/facemodels/ict_facekit.npz, "
                                            "which virtual devices then use by default)")
    add_json_flag(q)
    q.set_defaults(func=run_import_ict)


def run_import_ict(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.faces.ict import import_ict_facekit
    from facestudio.paths import imported_face_model, library_root

    src = args.source / "FaceXModel" if (args.source / "FaceXModel").is_dir() else args.source
    out = args.out or imported_face_model(library_root(args.library))
    out.parent.mkdir(parents=True, exist_ok=True)
    import_ict_facekit(src, out)
    return {"path": str(out), "source": str(src)}

"""`facestudio` / `facestudio gui`: open the desktop app (Qt is imported only here, lazily)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("gui", parents=[common], help="open the desktop app (the default)")
    _add_gui_options(p)
    p.set_defaults(func=run)


def _add_gui_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--virtual-device", action="store_true",
                   help="start the built-in virtual device (no iPad needed)")
    p.add_argument("--face-model", metavar="PATH", help="ICT face model for the virtual device")
    p.add_argument("--screenshots", metavar="DIR",
                   help="save a screenshot of every panel with real content to DIR and exit "
                        "(without --library a temporary library is filled first)")
    p.add_argument("--startup-probe", action="store_true", help=argparse.SUPPRESS)


def add_top_level_options(parser: argparse.ArgumentParser) -> None:
    """`facestudio --virtual-device` works without naming the gui command."""
    _add_gui_options(parser)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "screenshots", None):
        from facestudio.gui.tour import run_screenshot_tour

        paths = run_screenshot_tour(args.screenshots, args.library, args.face_model)
        print("\n".join(str(p) for p in paths))
        return 0
    from facestudio.gui.app import run_app

    return run_app(library=args.library, virtual_device=getattr(args, "virtual_device", False),
                   face_model=getattr(args, "face_model", None),
                   startup_probe=getattr(args, "startup_probe", False))

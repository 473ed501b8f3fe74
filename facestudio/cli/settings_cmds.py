"""`facestudio settings [show|set KEY VALUE]`: the same settings file as the app's Settings dialog."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from facestudio.cli.main import add_json_flag

    p = sub.add_parser("settings", parents=[common], help="show or change the user settings",
                       description="Library folder, compute device (auto|cpu|cuda|mps) and the VGG-19 "
                                   "weights file for the perceptual loss; an empty value restores "
                                   "the default.")
    actions = p.add_subparsers(dest="settings_command", metavar="ACTION")
    show = actions.add_parser("show", parents=[common], help="print the settings and where they are stored")
    add_json_flag(show)
    show.set_defaults(func=run_show)
    change = actions.add_parser("set", parents=[common], help="change one setting")
    change.add_argument("key", choices=[f.name for f in dataclasses.fields(_settings_cls())])
    change.add_argument("value")
    add_json_flag(change)
    change.set_defaults(func=run_set)
    add_json_flag(p)
    p.set_defaults(func=run_show)


def _settings_cls() -> type:
    from facestudio.settings import Settings

    return Settings


def _describe(settings: Any) -> dict[str, Any]:
    from facestudio.settings import settings_path

    return {"file": str(settings_path()), **dataclasses.asdict(settings)}


def run_show(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.settings import load_settings

    return _describe(load_settings())


def run_set(args: argparse.Namespace) -> dict[str, Any]:
    from facestudio.settings import update_setting

    return _describe(update_setting(args.key, args.value))

"""Entry point: `facestudio` with no command opens the app; `facestudio CMD --help` documents each.

Commands return a plain dict summarising what they did; with ``--json`` it is printed as one
JSON object (for scripts and tests), otherwise as readable lines. Expected failures (bad
input, a device that refuses or vanishes, a full or read-only disk) print one clear ``error:``
line and exit 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from typing import Any

import importlib
import pkgutil

from facestudio import __version__, cli
from facestudio.cli import gui_cmd
from facestudio.cli.console import end_progress

log = logging.getLogger("facestudio")


def command_groups() -> list:
    """Every ``facestudio/cli/*_cmds.py`` module, each registering its commands (cheap imports only)."""
    names = sorted(m.name for m in pkgutil.iter_modules(cli.__path__) if m.name.endswith("_cmds"))
    return [gui_cmd] + [importlib.import_module(f"facestudio.cli.{n}") for n in names]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--library", metavar="DIR", default=argparse.SUPPRESS,
                        help="library folder (default: $FACESTUDIO_HOME, else the one in `facestudio settings`, "
                             "else the user data folder)")
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="log to the console (-v info, -vv debug)")
    parser = argparse.ArgumentParser(
        prog="facestudio", parents=[common],
        description="FaceStudio: capture faces with an iPad, train a latent 3D diffusion model, "
                    "generate expression avatars. Without a command, opens the app.")
    parser.add_argument("--version", action="version", version=f"facestudio {__version__}")
    gui_cmd.add_top_level_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in command_groups():
        group.register(sub, common)
    return parser


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object summarising the result")


def _print_human(result: dict[str, Any], indent: str = "") -> None:
    for key, value in result.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print_human(value, indent + "  ")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            print(f"{indent}{key}:")
            for item in value:
                print(f"{indent}  - " + ", ".join(f"{k}={v}" for k, v in item.items()))
        else:
            print(f"{indent}{key}: {value}")


def main(argv: list[str] | None = None) -> int:
    from facestudio.capture.pairing import PairingError
    from facestudio.capture.protocol import ProtocolError
    from facestudio.capture.receiver import DeviceError
    from facestudio.logs import setup_logging
    from facestudio.storage import DISK_FULL, storage_error

    parser = build_parser()
    args = parser.parse_args(argv)
    args.library = getattr(args, "library", None)
    args.verbose = getattr(args, "verbose", 0)
    if args.library:
        os.environ["FACESTUDIO_HOME"] = str(args.library)
    setup_logging(args.verbose)
    func = getattr(args, "func", None) or gui_cmd.run
    want_json = getattr(args, "json", False)
    try:
        result = func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, DeviceError, PairingError, ProtocolError) as exc:
        log.debug("command failed", exc_info=True)
        end_progress()
        if isinstance(exc, OSError) and exc.errno in DISK_FULL | {errno.EROFS}:
            exc = storage_error(exc)   # said plainly, from any command (EACCES may be a read)
        message = str(exc) or type(exc).__name__
        if want_json:
            print(json.dumps({"ok": False, "error": message}))
        print(f"error: {message}", file=sys.stderr)
        return 2
    if isinstance(result, int):
        return result
    if result is not None:
        if want_json:
            print(json.dumps({"ok": True, **result}, default=_jsonable))
        else:
            _print_human(result)
    return 0


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    raise SystemExit(main())

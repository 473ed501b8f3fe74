"""Shared command groups (`bench`, `eval`, `train`, `export`, ...) that several modules extend.

`facestudio bench capture` and `facestudio bench fusion` live in different modules; each asks
for the group here and adds its own action, so no module needs to know the others.
"""

from __future__ import annotations

import argparse

_GROUP_HELP = {
    "bench": "run a benchmark and print its measurements (JSON with --json)",
    "eval": "measure quality against ground truth",
    "train": "train a model",
    "export": "export data for other tools",
    "library": "inspect and manage the library",
    "take": "inspect or repair a recorded take",
    "facemodel": "manage face models for synthetic faces",
}


def group(sub: argparse._SubParsersAction, common: argparse.ArgumentParser,
          name: str) -> argparse._SubParsersAction:
    """The sub-command action of group ``name``, created on first use."""
    registry = sub.__dict__.setdefault("_facestudio_groups", {})
    if name not in registry:
        parser = sub.add_parser(name, parents=[common], help=_GROUP_HELP.get(name))
        registry[name] = parser.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True)
    return registry[name]

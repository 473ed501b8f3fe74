"""The one-line progress display of long CLI commands (stderr, rewritten in place with ``\\r``).

Kept in one place so whatever ends a command - its result, or an error printed by
:func:`facestudio.cli.main.main` - first ends an open progress line: an ``error:`` glued to
the end of ``step 2/4 ...`` is easy to miss and impossible to grep.
"""

from __future__ import annotations

import sys

_line_open = False


def show_progress(text: str) -> None:
    global _line_open
    print("\r" + text, end="", file=sys.stderr, flush=True)
    _line_open = True


def end_progress() -> None:
    """Move past the progress line, if one is showing."""
    global _line_open
    if _line_open:
        print(file=sys.stderr, flush=True)
        _line_open = False

"""Recording helpers for the Capture panel: automatic take names."""

from __future__ import annotations

from pathlib import Path

from facestudio.paths import take_dir


def next_take_name(library: Path, subject: str, expression: str) -> str:
    """``<expression>-NN`` with the first number not yet used for this subject."""
    n = 1
    try:
        while take_dir(library, subject, f"{expression}-{n:02d}").exists():
            n += 1
    except ValueError:      # not a valid subject name (yet): the Record button will say so
        pass
    return f"{expression}-{n:02d}"

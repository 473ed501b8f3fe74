"""Where FaceStudio keeps user data: one library folder holding takes, datasets, models, exports.

Resolution order: an explicit ``--library DIR`` > ``$FACESTUDIO_HOME`` > the library folder in
the settings (:mod:`facestudio.settings`) > the platform's user data dir. Tests always pass a
temporary folder, so they never touch a real library.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import platformdirs

from facestudio.storage import writing

APP_NAME = "FaceStudio"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")


def library_root(explicit: str | os.PathLike | None = None) -> Path:
    """The library folder (created on first use)."""
    from facestudio.settings import current_settings   # settings use APP_NAME from here

    if explicit:
        root = Path(explicit)
    elif os.environ.get("FACESTUDIO_HOME"):
        root = Path(os.environ["FACESTUDIO_HOME"])
    elif saved := current_settings().library:
        root = Path(saved)
    else:
        root = Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    root = root.expanduser().resolve()
    with writing(root):
        root.mkdir(parents=True, exist_ok=True)
    return root


def runs_dir(library: str | os.PathLike | None, stage: str) -> Path:
    """LIBRARY/models/STAGE: the training runs of one stage, "autodecoder" or "diffusion"."""
    return library_root(library) / "models" / stage


def find_run(spec: str | os.PathLike | None, stage: str, library: str | os.PathLike | None = None) -> Path:
    """A run folder, a run name under :func:`runs_dir`, or (None) the newest run there."""
    root = runs_dir(library, stage)
    if spec is None:
        runs = sorted(p for p in root.glob("*") if (p / "config.toml").is_file()) if root.exists() else []
        if not runs:
            raise ValueError(f"no {stage} run under {root}; train one with `facestudio train {stage}`")
        return runs[-1]
    for candidate in (Path(spec).expanduser(), root / spec):
        if (candidate / "config.toml").is_file():
            return candidate
    raise ValueError(f"no {stage} run {str(spec)!r} (a run folder, or a name under {root})")


def resources_dir() -> Path:
    """The app's resources/ folder (icons, stylesheet, expression presets).

    It sits at the top of a source checkout (and of a PyInstaller bundle), while a wheel
    installs it inside the package as ``facestudio/resources`` (pyproject's package-dir
    mapping), so look inside the package first.
    """
    package = Path(__file__).resolve().parent
    installed = package / "resources"
    return installed if installed.is_dir() else package.parent / "resources"


def log_dir() -> Path:
    path = Path(platformdirs.user_log_dir(APP_NAME, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_name(kind: str, name: str) -> str:
    """Subject/take names become folder names: refuse anything that could escape the library."""
    if not _SAFE_NAME.match(name) or name in {".", ".."}:
        raise ValueError(
            f"invalid {kind} name {name!r}: use 1-64 letters, digits, space, '_', '-' or '.', "
            "starting with a letter or digit")
    return name


def take_dir(root: Path, subject: str, take: str) -> Path:
    return root / "takes" / check_name("subject", subject) / check_name("take", take)


def imported_face_model(root: Path) -> Path:
    """Where `facestudio facemodel import-ict` puts the user's ICT model."""
    return root / "facemodels" / "ict_facekit.npz"


def face_model_for(root: Path, explicit: str | None) -> str | None:
    """The face model a virtual device uses: the one given, else the library's imported one,
    else None (the built-in procedural head)."""
    if explicit:
        return explicit
    imported = imported_face_model(root)
    return str(imported) if imported.is_file() else None

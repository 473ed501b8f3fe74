"""User settings shared by the app and the CLI: library folder, compute device, VGG-19 weights.

One small TOML file in the platform's config folder (``settings.toml``; ``$FACESTUDIO_CONFIG``
points elsewhere). The GUI's Settings dialog and ``facestudio settings set`` write the same file
through :func:`save_settings`, so whatever a click changes can be changed headless. Values are
validated on load and on save; a damaged file is reported and left untouched (the defaults
apply until the user saves), so a typo never silently changes where data goes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path

import platformdirs

from facestudio.models.config import config_from_toml, save_config
from facestudio.paths import APP_NAME

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass
class Settings:
    library: str = ""          # "" = $FACESTUDIO_HOME, else the platform's user data folder
    device: str = "auto"       # compute device for training and generation
    vgg19_weights: str = ""    # VGG-19 state dict for the perceptual loss; "" = loss off

    def validate(self) -> "Settings":
        if self.device not in DEVICES:
            raise ValueError(f"device: must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.vgg19_weights and not Path(self.vgg19_weights).expanduser().is_file():
            raise ValueError(f"vgg19_weights: file {self.vgg19_weights!r} does not exist")
        if self.library and Path(self.library).expanduser().exists() and \
                not Path(self.library).expanduser().is_dir():
            raise ValueError(f"library: {self.library!r} is a file, not a folder")
        return self


def settings_path() -> Path:
    explicit = os.environ.get("FACESTUDIO_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / "settings.toml"


def load_settings(path: Path | None = None) -> Settings:
    """The saved settings (defaults when none are saved); ValueError names a damaged file's problem."""
    path = path or settings_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"settings file {path} cannot be read: {exc}") from None
    try:
        return config_from_toml(text, Settings, source=str(path))
    except ValueError as exc:
        raise ValueError(f"{exc} (fix or delete the settings file)") from None


def current_settings() -> Settings:
    """The saved settings, or the defaults with a logged warning when the file is damaged:
    starting the app or a command must not depend on a hand-edited file being right."""
    try:
        return load_settings()
    except ValueError as exc:
        log.warning("%s; using default settings", exc)
        return Settings()


def save_settings(settings: Settings, path: Path | None = None) -> Path:
    """Validate and write atomically (a crash mid-save leaves the old file)."""
    settings.validate()
    path = path or settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_config(settings, tmp)
    os.replace(tmp, path)
    return path


def update_setting(key: str, value: str, path: Path | None = None) -> Settings:
    """Set one setting by name (the CLI's `settings set KEY VALUE`) and save."""
    names = [f.name for f in fields(Settings)]
    if key not in names:
        raise ValueError(f"unknown setting {key!r} (known: {', '.join(names)})")
    settings = load_settings(path)
    setattr(settings, key, value)
    save_settings(settings, path)
    return settings


def with_settings_vgg19(config):  # AutodecoderConfig; untyped to keep this module free of torch
    """Use the settings' VGG-19 weights when a run's config names none (CLI and Train panel)."""
    saved = current_settings().vgg19_weights
    if saved and not config.loss.vgg19_weights:
        config.loss.vgg19_weights = saved
    return config

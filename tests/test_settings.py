"""User settings (issue 6): one validated TOML file shared by the CLI and the Settings dialog."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from facestudio.cli.main import main
from facestudio.models.config import tiny
from facestudio.paths import library_root
from facestudio.settings import (Settings, current_settings, load_settings, save_settings, settings_path,
                                 update_setting, with_settings_vgg19)


def test_defaults_when_nothing_is_saved_and_round_trip(tmp_path):
    assert load_settings() == Settings()
    weights = tmp_path / "vgg19.pth"
    weights.write_bytes(b"x")
    saved = Settings(library=str(tmp_path / "lab"), device="cpu", vgg19_weights=str(weights))
    path = save_settings(saved)
    assert path == settings_path() and path.is_file()
    assert load_settings() == saved


@pytest.mark.parametrize("key, value, message", [
    ("device", "gpu", "device: must be one of auto, cpu, cuda, mps"),
    ("vgg19_weights", "/nowhere/vgg.pth", "does not exist"),
    ("colour", "blue", "unknown setting 'colour'"),
])
def test_invalid_values_are_refused_and_the_file_is_unchanged(key, value, message):
    update_setting("device", "cpu")
    before = settings_path().read_bytes()
    with pytest.raises(ValueError, match=message):
        update_setting(key, value)
    assert settings_path().read_bytes() == before


def test_a_damaged_file_is_reported_left_alone_and_defaults_apply(caplog):
    path = settings_path()
    path.parent.mkdir(parents=True)
    path.write_text('device = "cpu"\nlibary = "/tmp"\n', encoding="utf-8")   # typo in a key
    with pytest.raises(ValueError, match=r"libary: unknown key .*fix or delete the settings file"):
        load_settings()
    assert current_settings() == Settings()
    assert "using default settings" in caplog.text
    path.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ValueError, match="cannot be read"):
        load_settings()
    assert path.read_bytes() == b"\xff\xfe not utf-8"


def test_library_folder_setting_sits_between_the_environment_and_the_default(tmp_path, monkeypatch):
    update_setting("library", str(tmp_path / "lab library"))
    monkeypatch.delenv("FACESTUDIO_HOME")
    assert library_root() == (tmp_path / "lab library").resolve()
    monkeypatch.setenv("FACESTUDIO_HOME", str(tmp_path / "env"))
    assert library_root() == (tmp_path / "env").resolve()
    assert library_root(tmp_path / "explicit") == (tmp_path / "explicit").resolve()


def test_vgg_weights_from_settings_fill_only_an_empty_config_entry(tmp_path):
    weights, other = tmp_path / "vgg19.pth", tmp_path / "mine.pth"
    weights.write_bytes(b"x")
    other.write_bytes(b"x")
    assert with_settings_vgg19(tiny()).loss.vgg19_weights == ""
    update_setting("vgg19_weights", str(weights))
    assert with_settings_vgg19(tiny()).loss.vgg19_weights == str(weights)
    config = tiny()
    config.loss.vgg19_weights = str(other)
    assert with_settings_vgg19(config).loss.vgg19_weights == str(other)


def test_cli_shows_and_sets(capsys):
    assert main(["settings", "set", "device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"] == "cpu" and out["file"] == os.environ["FACESTUDIO_CONFIG"]
    assert main(["settings", "set", "device", "tpu"]) == 2
    assert "must be one of" in capsys.readouterr().err
    assert main(["settings", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["device"] == "cpu"
    assert Path(os.environ["FACESTUDIO_CONFIG"]).read_text(encoding="utf-8").count("device") == 1

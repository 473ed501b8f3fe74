"""Shared fixtures. Every test uses a temporary library; network tests stay on 127.0.0.1."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/framegen.py

from framegen import make_frame  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ICT_MODEL = SHARED_DATA / "ict_facekit.npz"


@pytest.fixture(autouse=True)
def _isolated_library(tmp_path, monkeypatch):
    """No test may touch a real user library, settings file or log folder."""
    monkeypatch.setenv("FACESTUDIO_HOME", str(tmp_path / "library"))
    monkeypatch.setenv("FACESTUDIO_CONFIG", str(tmp_path / "config" / "settings.toml"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    yield


@pytest.fixture
def library(tmp_path) -> Path:
    return Path(os.environ["FACESTUDIO_HOME"])


@pytest.fixture
def ict_model() -> Path:
    if not ICT_MODEL.exists():
        pytest.skip(f"ICT face model not found at {ICT_MODEL} (../shared/data is absent)")
    return ICT_MODEL


@pytest.fixture
def replay_device():
    """A device serving 20 small deterministic frames in a loop, PIN 123456, not advertised."""
    from facestudio.capture.virtual_device import ReplayFrameSource, VirtualDevice

    source = ReplayFrameSource([make_frame(i) for i in range(20)])
    with VirtualDevice(source, pin="123456", advertise=False) as device:
        yield device

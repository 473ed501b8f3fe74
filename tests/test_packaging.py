"""The installable app bundle (issue 8). Not in the default run: `pytest -m bundle`.

Builds dist/facestudio with packaging/build when it is missing (minutes), then starts the
built app: `--version`, and the GUI under Xvfb driving a virtual device through every panel.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import pytest

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "dist" / "facestudio" / "facestudio"

pytestmark = [pytest.mark.bundle, pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def app() -> Path:
    if not APP.exists():
        subprocess.run(["bash", str(ROOT / "packaging" / "build")], check=True, timeout=1700)
    return APP


def test_bundle_reports_its_version(app):
    from facestudio import __version__

    out = subprocess.run([str(app), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and __version__ in out.stdout


@pytest.mark.gui
def test_bundle_opens_the_gui_and_streams_a_virtual_device(app, tmp_path, qapp):
    # qapp makes pytest-xvfb provide a display; the bundle is its own process on it.
    out = subprocess.run([str(app), "--library", str(tmp_path / "lib"), "gui", "--screenshots",
                          str(tmp_path / "shots")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    capture = cv2.imread(str(tmp_path / "shots" / "01-capture.png"))
    assert capture is not None and capture.std() > 10

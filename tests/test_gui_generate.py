"""The Generate page end to end: a tiny trained pair -> person -> sliders -> mesh -> export -> Live Link
(a face, then no face).

Runs under Xvfb (pytest-xvfb). Both stages (tiny preset: deformations of each person's fused
neutral scan) are trained for a few steps through the core functions (what the Train page and
the CLI call), on synthetic segments of two people; a third person stays out of training and
is prepared on demand from their neutral scan. The page's sampler steps are set low to keep
the test fast.
"""

from __future__ import annotations

import functools
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from guikit import main_window

pytestmark = [pytest.mark.gui, pytest.mark.network]

QtWidgets = pytest.importorskip("PySide6.QtWidgets")
generate_module = pytest.importorskip("facestudio.generation.generate",
                                      reason="the diffusion generation module is not in this build")

from facestudio.capture.livelink import encode_packet  # noqa: E402
from facestudio.faces.arkit import BLENDSHAPE_INDEX  # noqa: E402
from facestudio.gui.model_runs import new_run_dir  # noqa: E402


def train_tiny_pair(library: Path) -> Path:
    """Segments of people 0 and 1 in training, person 2's neutral segment left out; returns it."""
    from facestudio.models.config import load_config
    from facestudio.models.diffusion_config import tiny
    from facestudio.models.synthetic_segments import make_synthetic_segments
    from facestudio.models.train_autodecoder import train_autodecoder
    from facestudio.models.train_diffusion import train_diffusion

    segments = [s.train for s in make_synthetic_segments(library / "datasets", 5, views=6, heldout_views=0,
                                                         image_size=64)]
    config = load_config("tiny")
    config.train.num_threads = 1
    autodecoder = new_run_dir(library, "autodecoder")
    train_autodecoder(segments[:4], autodecoder, config, "cpu", 4)
    dconfig = tiny()
    dconfig.train.num_threads = 1
    train_diffusion(autodecoder, new_run_dir(library, "diffusion"), dconfig, "cpu", 2)
    return segments[4]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def window(qtbot, library, monkeypatch):
    unseen = train_tiny_pair(library)
    # Encoding a new person takes up to a minute by default; a few seconds show the same path.
    monkeypatch.setattr(generate_module, "Generator",
                        functools.partial(generate_module.Generator, encode_seconds=3.0))
    with main_window(qtbot, library) as win:
        win.unseen = unseen
        yield win


def viewport_points(win) -> np.ndarray:
    actor = win.viewport.plotter.actors["generated-mesh"]
    return np.asarray(actor.GetMapper().GetInput().GetPoints().GetData()).copy()


def test_generate_drag_export_live(qtbot, window, tmp_path):
    win = window
    win.show_step("Generate")
    panel = win.generate_panel
    shown: list[str] = []
    panel.mesh_shown.connect(shown.append)
    qtbot.waitUntil(lambda: panel.generator is not None, timeout=60_000)
    names = [panel.person_combo.itemText(i) for i in range(panel.person_combo.count())]
    assert len(names) == 3 and sum(n.endswith("(new)") for n in names) == 1   # 3 neutral people, one unseen
    panel.preview_steps.setValue(1)
    panel.final_steps.setValue(2)
    qtbot.waitUntil(lambda: shown == ["final"], timeout=60_000)
    before = viewport_points(win)
    assert len(before) > 0 and panel.export_button.isEnabled()

    # The user turns the view, then drags a blink (person 0 trained eyes closed): the mesh follows,
    # the camera stays.
    win.viewport.plotter.camera.azimuth = 30
    camera = np.array(win.viewport.plotter.camera_position.to_list())
    slider, twin = panel.sliders.sliders["eyeBlinkLeft"], panel.sliders.sliders["eyeBlinkRight"]
    slider.setSliderDown(True)
    for value in (20, 50, 90):
        slider.setValue(value)
        qtbot.wait(30)
    assert twin.value() == 90                                    # L/R mirroring
    qtbot.waitUntil(lambda: "preview" in shown, timeout=90_000)   # debounced preview while held
    slider.setSliderDown(False)                                  # release: final quality
    qtbot.waitUntil(lambda: shown[-1] == "final" and not panel.worker.busy(), timeout=60_000)
    after = viewport_points(win)
    assert before.shape != after.shape or not np.allclose(before, after)
    assert panel.result[0].weights[BLENDSHAPE_INDEX["eyeBlinkRight"]] == pytest.approx(0.9)
    assert np.allclose(np.array(win.viewport.plotter.camera_position.to_list()), camera)

    # Export and read back; screenshot.
    import open3d as o3d

    for suffix in (".ply", ".obj"):
        out = tmp_path / f"face{suffix}"
        panel.export_mesh(out)
        qtbot.waitUntil(lambda: not panel.is_exporting(), timeout=60_000)
        assert panel.banner.kind() == "success", panel.banner.text()
        mesh = o3d.io.read_triangle_mesh(str(out))
        assert len(mesh.vertices) == len(after) and mesh.has_vertex_colors()
    panel.save_screenshot(tmp_path / "shot.png")
    assert (tmp_path / "shot.png").stat().st_size > 1000

    # Live Link Face packets on loopback move the sliders.
    panel.port_spin.setValue(free_udp_port())
    panel.live_check.setChecked(True)
    assert panel.live.is_running(), panel.banner.text()
    weights = np.zeros(52, np.float32)
    weights[BLENDSHAPE_INDEX["jawOpen"]] = 0.7
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        deadline = time.monotonic() + 10
        frame = 0
        while panel.sliders.sliders["jawOpen"].value() != 70 and time.monotonic() < deadline:
            sock.sendto(encode_packet(weights, frame=frame), ("127.0.0.1", panel.port_spin.value()))
            frame += 1
            qtbot.wait(20)
    assert panel.sliders.sliders["jawOpen"].value() == 70
    assert panel.sliders.sliders["eyeBlinkLeft"].value() == 0      # the phone's face, not the old sliders
    assert "Live:" in panel.live_label.text() and "no face" not in panel.live_label.text()

    # The face leaves the camera: the phone sends short packets; the page says so and the
    # sliders keep the last expression (no reset, no error).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        deadline = time.monotonic() + 10
        while "no face" not in panel.live_label.text() and time.monotonic() < deadline:
            sock.sendto(encode_packet(None, frame=frame), ("127.0.0.1", panel.port_spin.value()))
            frame += 1
            qtbot.wait(20)
    assert "no face tracked" in panel.live_label.text()
    assert panel.sliders.sliders["jawOpen"].value() == 70
    receiver = panel.live.receiver
    assert receiver.no_face > 0 and receiver.rejected == 0
    panel.live_check.setChecked(False)
    assert not panel.live.is_running()

    # A person the model never saw is encoded in the background, then generated.
    count = len(shown)
    panel.select_person(win.unseen)
    assert "never saw" in panel.state_label.text()
    qtbot.waitUntil(lambda: panel.person is not None and len(shown) > count, timeout=60_000)
    assert panel.result[0].person == str(win.unseen)

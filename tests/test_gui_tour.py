"""`facestudio gui --screenshots DIR` drives the real app through every panel."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def test_screenshot_tour_writes_a_picture_of_every_panel(tmp_path, qapp):
    import cv2

    from facestudio.gui.tour import run_screenshot_tour

    paths = run_screenshot_tour(tmp_path / "shots")
    names = [p.name for p in paths]
    assert names[:3] == ["01-capture.png", "02-library.png", "02-library-take.png"]
    for path in paths:
        image = cv2.imread(str(path))
        assert image is not None and image.shape[0] >= 600 and image.shape[1] >= 1000
        assert float(np.std(image)) > 10, f"{path.name} looks blank"
    # The capture shot shows the live point cloud: the right half is not just background.
    capture = cv2.imread(str(paths[0]))
    right = capture[:, capture.shape[1] // 2:]
    assert (np.abs(right.astype(int) - right[5, 5].astype(int)).sum(axis=2) > 60).mean() > 0.05

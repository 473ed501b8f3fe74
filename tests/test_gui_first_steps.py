"""The "Getting started" checklist a new user sees (issue 6): ticks from the library's files,
clicks open the step's page, and it disappears once both models exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from guikit import main_window

pytestmark = [pytest.mark.gui]

RESULTS = ["takes/ana/t1/manifest.json", "datasets/ana/t1/seg00-neutral/segment.json",
           "models/autodecoder/20260101-000000/checkpoints/latest",
           "models/diffusion/20260101-000100/checkpoints/latest"]


def _touch(root: Path, rel: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text("", encoding="utf-8")


def test_first_steps_follow_the_library_and_hide_when_the_journey_is_done(tmp_path):
    from facestudio.library.first_steps import first_steps

    assert [s.done for s in first_steps(tmp_path)] == [False] * 4
    assert [s.page for s in first_steps(tmp_path)] == ["Capture", "Library", "Train", "Train"]
    for i, rel in enumerate(RESULTS):
        _touch(tmp_path, rel)
        assert [s.done for s in first_steps(tmp_path)] == [True] * (i + 1) + [False] * (3 - i)


def test_checklist_in_the_window_guides_a_new_user(qtbot, library):
    with main_window(qtbot, library) as win:
        steps = win.first_steps
        assert steps.isVisible() and steps.next_step().title == "Record a take"
        assert [b.property("state") for b in steps.buttons] == ["next", "todo", "todo", "todo"]
        assert "Add a virtual device" in steps.how.text()

        win.show_step("Train")
        steps.buttons[0].click()                      # "Record a take" opens Capture
        assert win.pages.currentWidget() is win.capture

        _touch(library, RESULTS[0])                   # a take recorded (e.g. from the CLI) ...
        win.show_step("Library")                      # ... shows on the next page change
        assert [b.property("state") for b in steps.buttons] == ["done", "next", "todo", "todo"]
        assert steps.buttons[0].text().startswith("✓")
        steps.buttons[2].click()
        assert win.pages.currentWidget() is win.train_panel

        for rel in RESULTS[1:]:
            _touch(library, rel)
        steps.refresh()
        assert not steps.isVisible() and steps.next_step() is None

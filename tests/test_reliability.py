"""Several devices recording at once, and the decoder under mutation fuzzing."""

from __future__ import annotations

import pytest

from facestudio.bench.reliability import fuzz_decoder, load_run

pytestmark = pytest.mark.network


def test_four_devices_at_once_lose_no_frame(tmp_path):
    result = load_run(devices=4, seconds=4.0, library=tmp_path)
    assert result["errors"] == [] and result["takes_complete"] == 4
    assert result["frames_sent"] >= 4 * 4 * 20          # ~30 fps each, some start-up slack
    assert result["recorded_over_sent"] == 1.0
    # Bounded memory: recording 4 streams must not accumulate frames in this process.
    assert result["rss_end_mb"] - result["rss_start_mb"] < 300


def test_decoder_fuzz_has_no_failures():
    result = fuzz_decoder(cases=3000, seed=1)
    assert result["failures"] == 0, result["failure_examples"]
    assert result["rejected"] > 1000 and result["cases"] == 3000

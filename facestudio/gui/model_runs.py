"""What the Train and Generate pages read from LIBRARY/models and LIBRARY/datasets.

Qt-free and blocking (it imports torch through the core's run helpers), so the pages call it
from background jobs and get plain data back: run summaries with their loss history, a
preview render of an autodecoder run, the people a diffusion model can be asked for.

    LIBRARY/models/autodecoder/RUN   stage 1 (what `facestudio train autodecoder` writes)
    LIBRARY/models/diffusion/RUN     stage 2
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facestudio.paths import runs_dir

log = logging.getLogger(__name__)

KINDS = ("autodecoder", "diffusion")


def new_run_dir(library: Path, kind: str) -> Path:
    """A fresh run folder named by its start time, like the CLI's (suffixed if taken)."""
    base = runs_dir(library, kind) / time.strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def gui_threads() -> int:
    """Torch threads for training started from the GUI: every core but one, which the GUI keeps."""
    return max(1, (os.cpu_count() or 1) - 1)


@dataclass
class RunInfo:
    kind: str
    name: str
    path: str
    preset: str
    max_steps: int
    step: int | None                      # newest checkpoint; None before the first one
    losses: list[tuple[int, float]] = field(default_factory=list)
    autodecoder: str | None = None        # diffusion runs: the stage-1 run they learned from

    def label(self) -> str:
        done = "no checkpoint yet" if self.step is None else f"step {self.step:,}/{self.max_steps:,}"
        return f"{self.name} · {self.preset} · {done}"


def list_runs(library: Path, kind: str) -> list[RunInfo]:
    """The runs of one stage, newest first; unreadable folders are skipped."""
    from facestudio.models.runs import Run

    root = runs_dir(library, kind)
    out = []
    for path in sorted((p for p in root.glob("*") if (p / "config.toml").is_file()), reverse=True):
        try:
            out.append(_run_info(Run.open(path), kind))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("skipping run %s: %s", path, exc)
    return out


def _run_info(run, kind: str) -> RunInfo:
    if kind == "autodecoder":
        from facestudio.models.config import load_config as load
    else:
        from facestudio.models.diffusion_config import load_diffusion_config as load
    config = load(run.config_path)
    latest = run.latest_checkpoint()
    step = json.loads((latest / "meta.json").read_text(encoding="utf-8"))["step"] if latest else None
    losses = [(int(r["step"]), float(r["loss"])) for r in run.metrics()
              if r.get("kind") == "train" and "loss" in r and (step is None or r["step"] <= step)]
    autodecoder = None
    if kind == "diffusion" and (run.path / "segments.json").is_file():
        autodecoder = json.loads((run.path / "segments.json").read_text(encoding="utf-8")).get("autodecoder")
    return RunInfo(kind, run.path.name, str(run.path), config.preset, config.train.max_steps, step,
                   losses, autodecoder)


def preset_steps() -> dict[str, dict[str, int]]:
    """Default step counts of every preset of both stages (the Steps box starts there)."""
    from facestudio.models import config, diffusion_config

    return {"autodecoder": {n: f().train.max_steps for n, f in config.PRESETS.items()},
            "diffusion": {n: f().train.max_steps for n, f in diffusion_config.PRESETS.items()}}


def available_devices() -> list[str]:
    """The compute devices this torch build can use ("auto" first)."""
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def render_preview(run_dir: Path, size: int = 128, index: int = 0) -> np.ndarray:
    """RGB uint8 (size, size, 3): object ``index`` of a run's newest checkpoint, seen from the front.

    One view at the training renderer's sample count: a fraction of a training step's cost,
    so a trainer can afford one at every checkpoint.
    """
    import torch

    from facestudio.models.encode import grid_for_segment
    from facestudio.models.render import orbit_cameras
    from facestudio.models.train_autodecoder import load_trained, render_views

    trained = load_trained(Path(run_dir), "cpu")
    cfg = trained.config.render
    if trained.config.model.output == "deformation":   # its first expression: the neutral is the scan itself
        from facestudio.models.deformation_targets import decoded_scan
        from facestudio.models.mesh import raycast_image
        from facestudio.models.train_autodecoder import segment_box
        from facestudio.dataset.segment import Segment

        segments = [Segment(p) for p in trained.segment_paths]
        index = next((i for i, s in enumerate(segments) if s.info.label != "neutral"), index)
        K, poses = orbit_cameras(segment_box(segments[index]), 1, size)
        return raycast_image(*decoded_scan(trained, index), K[0], poses[0], size, cfg.background)
    grid, box = grid_for_segment(trained, index)
    K, poses = orbit_cameras(box, 1, size)
    with torch.no_grad():
        out = render_views(grid[None], K[None], poses[None], size, box, cfg.samples_per_ray, False,
                           cfg.background, trained.model.geometry)
    return (out["rgb"][0].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


@dataclass
class Person:
    path: str
    name: str            # subject · take · segment
    subject: str
    known: bool          # a training segment of the model (no encoding needed)


def people(library: Path, training_segments: list[str]) -> list[Person]:
    """Every neutral segment in the library: the people Generate can show with any expression.

    Segments labelled "neutral" come first; a library without any offers every segment, since a
    person's calmest take is better than none.
    """
    from facestudio.dataset.segment import Segment, SegmentError, find_segments

    root = Path(library) / "datasets"
    trained = {str(Path(p).resolve()) for p in training_segments}
    found: list[tuple[bool, Person]] = []
    for path in find_segments(root) if root.exists() else []:
        try:
            info = Segment(path).info
        except SegmentError:
            continue
        found.append((info.label == "neutral", Person(
            str(path), f"{info.subject} · {info.take} · {info.segment_id}", info.subject,
            str(path.resolve()) in trained)))
    neutral = [p for is_neutral, p in found if is_neutral]
    return neutral or [p for _, p in found]

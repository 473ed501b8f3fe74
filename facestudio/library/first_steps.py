"""How far a library is along the user journey: record -> fuse -> train both stages (-> generate).

A new user meets an empty library; the app shows these steps as a checklist, each ticked from
what is on disk (not from what was clicked in this session), so the list is right after a
restart, for a library filled from the CLI, and for one copied from another machine. Cheap
enough to call whenever a background job ends: a few globs, no catalog query, no file read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Step:
    title: str          # what to do, as an imperative
    page: str           # the app page where it is done
    hint: str           # how, in one sentence
    done: bool


def _exists(root: Path, pattern: str) -> bool:
    return next(iter(root.glob(pattern)), None) is not None


def first_steps(library: Path) -> list[Step]:
    """The journey's steps in order, each marked done when the library holds its result."""
    root = Path(library)
    return [
        Step("Record a take", "Capture",
             "Add a virtual device (or connect an iPad), enter its PIN and press Record.",
             _exists(root, "takes/*/*/manifest.json")),
        Step("Fuse it", "Library", "Select the take and click Fuse: it becomes meshes and training views.",
             _exists(root, "datasets/*/*/*/segment.json")),
        Step("Train the autodecoder", "Train", "Stage 1 with the tiny preset takes minutes on a laptop.",
             _exists(root, "models/autodecoder/*/checkpoints/latest")),
        Step("Train diffusion model", "Train", "Stage 2 learns expressions from stage 1's latents; "
             "then Generate: pick a person, drag the expression sliders, export the mesh.",
             _exists(root, "models/diffusion/*/checkpoints/latest")),
    ]

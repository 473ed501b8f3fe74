"""A synthetic library through the virtual device: record takes, fuse them, index them.

Labs with few real subjects pretrain both stages on synthetic people and fine-tune on their own
captures (``--init-from``). Each identity is one virtual-device take with its own seed (the ICT
identity weights and the expression order come from the seed) running through the same capture
format and fusion as a real iPad take, so the pretraining data has the real pipeline's
artefacts, not a cleaner shortcut.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from facestudio.capture.prompts import PROMPTS
from facestudio.capture.virtual.script import Script
from facestudio.dataset.evaluate import record_synthetic_take
from facestudio.library.operations import fuse_into_library
from facestudio.paths import take_dir

FPS = 30.0


def frames_for(expressions: int, fps: float = FPS) -> int:
    """Frames covering the first ``expressions`` held expressions of the script (neutral first)."""
    script = Script()
    slot = script.hold_s + script.transition_s
    return math.ceil(expressions * slot * fps)


def build_synthetic_library(root: Path, identities: int, expressions: int, face_model: str | None = None,
                            frames_per_take: int | None = None, seed: int = 0,
                            progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Record and fuse ``identities`` takes (subjects synth<seed>) of ``expressions`` expressions each."""
    if identities < 1:
        raise ValueError("--identities must be >= 1")
    if not 1 <= expressions <= len(PROMPTS):
        raise ValueError(f"--expressions must be in [1, {len(PROMPTS)}] (the virtual device's prompts)")
    frames = frames_per_take or frames_for(expressions)
    started = time.monotonic()
    takes: list[dict[str, Any]] = []
    for i in range(identities):
        subject = f"synth{seed + i:04d}"
        path = take_dir(Path(root), subject, "virtual")
        if path.exists():
            raise ValueError(f"{path} already exists: pick another --seed or remove the subject")
        record_synthetic_take(path, frames, FPS, face_model, seed=seed + i, subject=subject, take="virtual")
        segments = fuse_into_library(Path(root), path)
        takes.append({"subject": subject, "take": str(path), "segments": [str(s) for s in segments]})
        if progress is not None:
            progress({"identity": i + 1, "identities": identities, "segments": len(segments),
                      "elapsed_s": round(time.monotonic() - started, 1)})
    return {"library": str(root), "identities": identities, "frames_per_take": frames,
            "face_model": "ict" if face_model else "procedural",
            "segments": sum(len(t["segments"]) for t in takes), "takes": takes,
            "seconds": round(time.monotonic() - started, 1)}

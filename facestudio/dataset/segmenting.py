"""Split a take into expression segments: stretches where the face holds one expression.

Each segment becomes one training object (person x expression), so it must hold a single
expression: frames where the ARKit blendshape weights are moving (transitions between held
expressions, blinks) are dropped rather than averaged into a blurry surface. Gaze channels
(eyeLook*) are ignored: looking around does not change the face's shape.

Labels recorded with the take are used when every frame has one (the virtual device records
them; a real recorder may); otherwise segments are found from the weights alone and named
from the take's expression prompts or, failing that, from their strongest blendshapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.ndimage import maximum_filter1d

from facestudio.faces.arkit import BLENDSHAPE_NAMES

SegmentBy = Literal["auto", "blendshapes", "labels", "none"]
TRANSITION = "transition"      # the label the virtual device gives frames between holds
_SHAPE_CHANNELS = np.array([not n.startswith("eyeLook") for n in BLENDSHAPE_NAMES])


@dataclass(frozen=True)
class SegmentingConfig:
    by: SegmentBy = "auto"
    max_speed: float = 0.5         # L2 change of the weights per second still counted as "held"
    edge_s: float = 0.1            # also drop this long around any moving frame
    split_distance: float = 0.2    # a held stretch drifting this far from its mean starts a new segment
    merge_distance: float = 0.1    # neighbouring segments this close (and close in time) are one
    max_gap_s: float = 0.5         # ... when the gap between them (e.g. a blink) is this short
    min_frames: int = 10           # shorter segments are dropped


@dataclass
class Span:
    """One expression segment of a take: frame positions (0-based, into TakeReader order)."""

    positions: np.ndarray
    label: str
    blendshapes: np.ndarray         # (52,) mean weights (zeros when the take has none)
    truth_segment: int | None = None  # index into the take's ground truth, synthetic takes only


def frame_step(timestamps: np.ndarray) -> float:
    """Seconds per frame from the timestamps (1/30 when they do not increase, e.g. all zero)."""
    d = np.diff(np.asarray(timestamps, np.float64))
    d = d[d > 0]
    return float(np.median(d)) if len(d) else 1.0 / 30.0


def held_frames(blendshapes: np.ndarray, dt: float, cfg: SegmentingConfig) -> np.ndarray:
    """Bool per frame: the expression is not changing here (and weights exist)."""
    b = blendshapes[:, _SHAPE_CHANNELS].astype(np.float64)
    valid = ~np.isnan(b).any(axis=1)
    if len(b) < 2:
        return valid
    filled = np.where(valid[:, None], b, 0.0)
    grad = np.gradient(filled, axis=0)
    speed = np.linalg.norm(grad, axis=1) / dt
    bad = ~valid
    bad = bad | np.r_[bad[1:], False] | np.r_[False, bad[:-1]]    # gradients next to gaps are meaningless
    speed[bad] = np.inf
    pad = max(int(round(cfg.edge_s / dt)), 0)
    return valid & (maximum_filter1d(speed, size=2 * pad + 1, mode="nearest") < cfg.max_speed)


def _runs(mask: np.ndarray) -> list[np.ndarray]:
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return []
    return np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)


def split_by_blendshapes(blendshapes: np.ndarray, dt: float, cfg: SegmentingConfig) -> list[np.ndarray]:
    """Frame positions of each held expression, found from the weights alone."""
    b = blendshapes[:, _SHAPE_CHANNELS].astype(np.float64)
    groups: list[list[int]] = []
    for run in _runs(held_frames(blendshapes, dt, cfg)):
        current: list[int] = [int(run[0])]
        total = b[run[0]].copy()
        for i in run[1:]:
            if np.linalg.norm(b[i] - total / len(current)) > cfg.split_distance:
                groups.append(current)
                current, total = [], np.zeros_like(total)
            current.append(int(i))
            total += b[i]
        groups.append(current)
    merged: list[list[int]] = []
    for g in groups:
        if merged:
            prev = merged[-1]
            close = np.linalg.norm(b[prev].mean(axis=0) - b[g].mean(axis=0)) < cfg.merge_distance
            if close and (g[0] - prev[-1] - 1) * dt <= cfg.max_gap_s:
                prev.extend(g)
                continue
        merged.append(list(g))
    return [np.array(g) for g in merged if len(g) >= cfg.min_frames]


def split_by_labels(labels: list[str | None], cfg: SegmentingConfig) -> list[np.ndarray]:
    """Runs of one recorded label; transition frames are dropped."""
    out: list[np.ndarray] = []
    start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            if labels[start] not in (None, TRANSITION) and i - start >= cfg.min_frames:
                out.append(np.arange(start, i))
            start = i
    return out


def describe(blendshapes: np.ndarray, threshold: float = 0.2) -> str:
    """A name for an unlabelled expression: its two strongest weights (gaze aside), or "neutral"."""
    shape = np.where(_SHAPE_CHANNELS, blendshapes, 0.0)
    if not np.isfinite(shape).all() or shape.max(initial=0.0) < threshold:
        return "neutral"
    top = [i for i in np.argsort(-shape, kind="stable")[:2] if shape[i] >= threshold]
    return "+".join(BLENDSHAPE_NAMES[i] for i in top)


def safe_label(label: str) -> str:
    """The label as used in a folder name (segNN-LABEL)."""
    return re.sub(r"[^A-Za-z0-9_+-]+", "_", label).strip("_")[:40] or "unlabelled"


def segment_take(blendshapes: np.ndarray, timestamps: np.ndarray, frame_labels: list[str | None],
                 frame_truth: list[int | None], prompts: list[str], cfg: SegmentingConfig) -> list[Span]:
    """Split one take. ``frame_labels``/``frame_truth`` come from per-frame ground truth (None
    where absent); ``prompts`` are the take's recorded expression labels (manifest)."""
    n = len(blendshapes)
    has_weights = n > 0 and not np.isnan(blendshapes).all()
    by = cfg.by
    if by == "auto":
        by = "labels" if n and all(lbl is not None for lbl in frame_labels) else (
            "blendshapes" if has_weights else "none")
    if by == "labels":
        groups = split_by_labels(frame_labels, cfg)
    elif by == "blendshapes":
        if not has_weights:
            raise ValueError("this take has no blendshape weights to segment by; use segment_by='none'")
        groups = split_by_blendshapes(blendshapes, frame_step(timestamps), cfg)
    else:
        groups = [np.arange(n)] if n >= cfg.min_frames else []
    spans = []
    for g in groups:
        w = blendshapes[g]
        w = w[~np.isnan(w).any(axis=1)]
        mean = w.mean(axis=0).astype(np.float32) if len(w) else np.zeros(blendshapes.shape[1], np.float32)
        recorded = [frame_labels[i] for i in g if frame_labels[i] not in (None, TRANSITION)]
        truth = [frame_truth[i] for i in g if frame_truth[i] is not None]
        label = max(set(recorded), key=recorded.count) if recorded else ""
        spans.append(Span(g, label, mean, max(set(truth), key=truth.count) if truth else None))
    unnamed = [s for s in spans if not s.label]
    for i, s in enumerate(unnamed):
        if len(prompts) == len(spans) and len(unnamed) == len(spans):
            s.label = prompts[i]
        elif len(prompts) == 1:
            s.label = prompts[0]
        elif not has_weights:
            s.label = "unlabelled"
        else:
            s.label = describe(s.blendshapes)
    return spans

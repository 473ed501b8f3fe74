"""The scripted take the virtual device plays: head motion plus held expressions, looping.

Expressions are *held* for several seconds with short smooth transitions because downstream
stages (per-expression fusion, evaluation against ground truth) need stretches of frames that
share one exact expression; the head keeps moving meanwhile so those stretches see the face
from many angles. Everything is a pure function of (seed, t).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facestudio.capture.prompts import PROMPTS
from facestudio.faces.arkit import blendshape_vector

#: Expression label -> ARKit weights (names not listed are 0).
EXPRESSIONS: dict[str, dict[str, float]] = {p.label: p.blendshapes for p in PROMPTS}


@dataclass(frozen=True)
class Segment:
    """One held expression: exactly ``blendshapes`` for start <= t < end (seconds in the loop)."""

    label: str
    blendshapes: np.ndarray
    start: float
    end: float


def _smooth(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * x * (x * (6.0 * x - 15.0) + 10.0)   # smootherstep: zero velocity and accel at ends


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return ry @ rx @ rz


class Script:
    """Neutral first, then the other expressions in a seed-dependent order, then loop.

    Each slot is a transition (from the previous expression, wrapping at the loop) followed by
    a hold. The head sweeps yaw once per slot, centred on the hold (zero crossings in the
    transitions), and pitch twice, so every held expression is seen from the left, the right,
    above and below, as a capture operator would ask; the take loops seamlessly.
    """

    def __init__(self, seed: int = 0, hold_s: float = 4.0, transition_s: float = 0.6,
                 distance_m: float = 0.46, max_yaw_deg: float = 40.0, max_pitch_deg: float = 20.0,
                 max_roll_deg: float = 6.0) -> None:
        rng = np.random.default_rng([seed, 0x5C21])
        others = [k for k in EXPRESSIONS if k != "neutral"]
        order = ["neutral"] + [others[i] for i in rng.permutation(len(others))]
        self.seed = seed
        self.hold_s, self.transition_s = hold_s, transition_s
        slot = hold_s + transition_s
        self.segments: list[Segment] = []
        for i, label in enumerate(order):
            gain = 1.0 if label == "neutral" else float(rng.uniform(0.85, 1.1))
            vec = blendshape_vector({k: v * gain for k, v in EXPRESSIONS[label].items()})
            start = i * slot + transition_s
            self.segments.append(Segment(label, vec, start, start + hold_s))
        self.duration = len(order) * slot
        self.distance_m = distance_m
        self._amp = np.radians([max_yaw_deg, max_pitch_deg, max_roll_deg])
        # Yaw and pitch locked to the slots (start of each sweep mid-transition); roll free.
        self._freq = np.array([1.0 / slot, 2.0 / slot, 2.0 / self.duration])
        self._phase = np.array([-np.pi * transition_s / slot, -2 * np.pi * transition_s / slot,
                                *rng.uniform(0, 2 * np.pi, size=2)])
        if rng.random() < 0.5:      # seed decides whether the head turns left or right first
            self._amp = self._amp * np.array([-1.0, 1.0, 1.0])
        # Rotation centre in the head frame: mid-face, inside the head, so the face stays centred.
        self.pivot_m = np.array([0.0, 0.01, 0.02])

    def expression_at(self, t: float) -> tuple[np.ndarray, str, int | None]:
        """(52,) weights, label ("transition" between holds) and segment index or None."""
        t = t % self.duration
        slot = self.hold_s + self.transition_s
        i = min(int(t // slot), len(self.segments) - 1)
        seg = self.segments[i]
        if t >= seg.start:
            return seg.blendshapes.copy(), seg.label, i
        prev = self.segments[i - 1].blendshapes
        a = _smooth((t - (seg.start - self.transition_s)) / self.transition_s)
        return ((1 - a) * prev + a * seg.blendshapes).astype(np.float32), "transition", None

    def head_pose(self, t: float) -> np.ndarray:
        """(4, 4) head->camera (OpenGL axes): the face looks at the camera at yaw = pitch = 0."""
        t = t % self.duration
        yaw, pitch, roll = self._amp * np.sin(2 * np.pi * self._freq * t + self._phase[:3])
        pose = np.eye(4)
        pose[:3, :3] = _rotation(yaw, pitch, roll)
        dist = self.distance_m + 0.02 * np.sin(2 * np.pi * t / self.duration + self._phase[3])
        pose[:3, 3] = np.array([0.0, 0.0, -dist]) - pose[:3, :3] @ self.pivot_m
        return pose

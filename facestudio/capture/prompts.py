"""The guided expressions a subject is asked to hold during capture.

One list serves the GUI's prompt chips, the CLI's ``--expression`` labels and the virtual
device's scripted expressions, so a synthetic take's ground-truth labels match what a real
session records. ``blendshapes`` are typical ARKit weights for the expression (what the
virtual device performs).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ExpressionPrompt:
    label: str                       # stored in takes and segments
    instruction: str                 # what to tell the subject
    blendshapes: dict[str, float] = field(default_factory=dict)


PROMPTS: tuple[ExpressionPrompt, ...] = (
    ExpressionPrompt("neutral", "Relaxed face, mouth closed, eyes open."),
    ExpressionPrompt("smile", "A broad smile, teeth may show.",
                     {"mouthSmileLeft": 0.9, "mouthSmileRight": 0.9, "cheekSquintLeft": 0.4,
                      "cheekSquintRight": 0.4, "eyeSquintLeft": 0.2, "eyeSquintRight": 0.2}),
    ExpressionPrompt("jaw_open", "Open the mouth wide, jaw dropped.",
                     {"jawOpen": 0.8, "mouthLowerDownLeft": 0.3, "mouthLowerDownRight": 0.3}),
    ExpressionPrompt("brows_up", "Raise both eyebrows as high as possible.",
                     {"browInnerUp": 0.9, "browOuterUpLeft": 0.8, "browOuterUpRight": 0.8}),
    ExpressionPrompt("pucker", "Push the lips forward as if to kiss.",
                     {"mouthPucker": 0.9, "mouthFunnel": 0.2}),
    ExpressionPrompt("eyes_closed", "Close both eyes gently.",
                     {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0}),
    ExpressionPrompt("frown", "Frown: brows down, mouth corners down.",
                     {"mouthFrownLeft": 0.8, "mouthFrownRight": 0.8, "browDownLeft": 0.6,
                      "browDownRight": 0.6}),
    ExpressionPrompt("cheek_puff", "Puff both cheeks with air.",
                     {"cheekPuff": 0.9, "mouthClose": 0.2}),
    ExpressionPrompt("surprise", "Surprised: brows up, eyes wide, mouth slightly open.",
                     {"jawOpen": 0.45, "browInnerUp": 0.8, "browOuterUpLeft": 0.8,
                      "browOuterUpRight": 0.8, "eyeWideLeft": 0.7, "eyeWideRight": 0.7}),
)
HEAD_MOTION_HINT = "Hold the expression and turn the head slowly left, right, up and down."

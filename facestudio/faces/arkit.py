"""The 52 ARKit blendshape names in the order Apple and Live Link Face use.

Every blendshape vector in FaceStudio (protocol frames, takes, conditioning vectors,
GUI sliders) is a float array of length 52 in exactly this order, weights in [0, 1].
"""

from __future__ import annotations

import numpy as np

BLENDSHAPE_NAMES: tuple[str, ...] = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft",
    "eyeSquintLeft", "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight",
    "eyeLookOutRight", "eyeLookUpRight", "eyeSquintRight", "eyeWideRight", "jawForward",
    "jawLeft", "jawRight", "jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthLeft",
    "mouthRight", "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthPressLeft",
    "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft",
    "mouthUpperUpRight", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
    "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft",
    "noseSneerRight", "tongueOut",
)
NUM_BLENDSHAPES = len(BLENDSHAPE_NAMES)
BLENDSHAPE_INDEX: dict[str, int] = {name: i for i, name in enumerate(BLENDSHAPE_NAMES)}


def blendshape_vector(weights: dict[str, float] | None = None) -> np.ndarray:
    """A (52,) float32 vector from a {name: weight} mapping; unknown names raise ValueError."""
    vec = np.zeros(NUM_BLENDSHAPES, dtype=np.float32)
    for name, value in (weights or {}).items():
        if name not in BLENDSHAPE_INDEX:
            raise ValueError(f"unknown ARKit blendshape {name!r}")
        vec[BLENDSHAPE_INDEX[name]] = float(np.clip(value, 0.0, 1.0))
    return vec


def blendshape_dict(vec: np.ndarray, min_weight: float = 0.0) -> dict[str, float]:
    """The non-negligible entries of a (52,) vector as {name: weight}."""
    vec = np.asarray(vec, dtype=np.float32).reshape(NUM_BLENDSHAPES)
    return {n: float(w) for n, w in zip(BLENDSHAPE_NAMES, vec) if w > min_weight}

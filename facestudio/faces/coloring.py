"""Procedural per-vertex colours for synthetic faces.

Neither face source has an albedo (the ICT model is geometry only), yet a colour image that
looks like a face matters: users judge the virtual device by eye, and colour-driven stages
(texture fusion, the RGB losses) need plausible skin, lips, eyes and brows. Colours are
layered: each feature is a soft (V,) weight in [0, 1] blended over the skin in a fixed order.
Everything is deterministic from the identity seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# sRGB skin tones from light to dark; an identity picks a point on this ramp.
_SKIN_RAMP = np.array([[246, 218, 196], [234, 189, 157], [214, 160, 120], [176, 118, 82],
                       [128, 84, 58], [92, 60, 44]], dtype=np.float32) / 255.0
_HAIR = np.array([[28, 22, 20], [58, 38, 26], [96, 64, 40], [64, 30, 18]],
                 dtype=np.float32) / 255.0
_IRIS = np.array([[78, 48, 28], [50, 34, 24], [70, 100, 130], [80, 100, 60], [110, 80, 40]],
                 dtype=np.float32) / 255.0
SCLERA = np.array([0.92, 0.90, 0.88], dtype=np.float32)
PUPIL = np.array([0.04, 0.03, 0.03], dtype=np.float32)
TEETH = np.array([0.93, 0.90, 0.80], dtype=np.float32)
GUMS = np.array([0.72, 0.36, 0.38], dtype=np.float32)
MOUTH_INTERIOR = np.array([0.30, 0.10, 0.10], dtype=np.float32)

# Paint order: later layers cover earlier ones where their weights are 1.
LAYERS = ("hair", "brow", "lip", "mouth_interior", "gums", "teeth", "sclera", "iris", "pupil")


@dataclass(frozen=True)
class Palette:
    """The colours of one identity."""

    skin: np.ndarray
    lip: np.ndarray
    hair: np.ndarray
    iris: np.ndarray

    def layer_color(self, layer: str) -> np.ndarray:
        return {"hair": self.hair, "brow": self.hair * 0.9, "lip": self.lip,
                "mouth_interior": MOUTH_INTERIOR, "gums": GUMS, "teeth": TEETH,
                "sclera": SCLERA, "iris": self.iris, "pupil": PUPIL}[layer]


def palette(seed: int) -> Palette:
    """A random but plausible colour set for an identity seed."""
    rng = np.random.default_rng([seed, 0xC010])
    pos = rng.uniform(0.0, len(_SKIN_RAMP) - 1)
    i = min(int(pos), len(_SKIN_RAMP) - 2)
    skin = _SKIN_RAMP[i] + (pos - i) * (_SKIN_RAMP[i + 1] - _SKIN_RAMP[i])
    lip = np.clip(skin * np.array([0.86, 0.58, 0.58]) + np.array([0.06, 0.0, 0.02]), 0, 1)
    return Palette(skin.astype(np.float32), lip.astype(np.float32),
                   _HAIR[rng.integers(len(_HAIR))], _IRIS[rng.integers(len(_IRIS))])


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def paint(pal: Palette, vertices: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    """(V, 3) float32 RGB: skin with a little low-frequency mottling, then the feature layers."""
    v = np.asarray(vertices, dtype=np.float32)
    # Gentle blotchiness (~3 %) so large skin areas do not look like plastic.
    mottle = 1.0 + 0.03 * (np.sin(v[:, 0] * 230.0 + 1.3) * np.sin(v[:, 1] * 190.0)
                           + 0.5 * np.sin(v[:, 2] * 310.0 + v[:, 0] * 120.0))
    colors = pal.skin[None, :] * mottle[:, None]
    for layer in LAYERS:
        w = weights.get(layer)
        if w is not None:
            colors += np.clip(w, 0.0, 1.0)[:, None] * (pal.layer_color(layer)[None, :] - colors)
    return np.clip(colors, 0.0, 1.0).astype(np.float32)


def eye_weights(vertices: np.ndarray, mask: np.ndarray, center: np.ndarray,
                forward: np.ndarray = np.array([0.0, 0.0, 1.0])) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sclera, iris, pupil) weights for the eyeball vertices in ``mask``, by angle from ``forward``."""
    d = vertices - center[None, :]
    cos = d @ forward / np.maximum(np.linalg.norm(d, axis=1), 1e-9)
    ang = np.arccos(np.clip(cos, -1.0, 1.0))
    m = mask.astype(np.float32)
    return m, m * (1.0 - smoothstep(0.42, 0.50, ang)), m * (1.0 - smoothstep(0.16, 0.21, ang))


def brow_weight(vertices: np.ndarray, eye_center: np.ndarray, side: float) -> np.ndarray:
    """An arched band ~1.5-2 cm above an eye, thicker toward the nose (metres)."""
    x = (vertices[:, 0] - eye_center[0]) * side          # + toward the temple
    along = np.clip(x / 0.028, -1.0, 1.0)
    arch_y = eye_center[1] + 0.0165 + 0.004 * np.cos(along * np.pi / 2.0) - 0.003 * np.clip(along, 0, 1)
    half = 0.0042 - 0.0017 * (along + 1.0) / 2.0
    across = 1.0 - smoothstep(0.6, 1.0, np.abs(vertices[:, 1] - arch_y) / half)
    length = 1.0 - smoothstep(0.8, 1.0, np.abs((x + 0.002) / 0.026))
    front = smoothstep(eye_center[2] - 0.004, eye_center[2] + 0.004, vertices[:, 2])
    return 0.85 * across * length * front


def ict_vertex_colors(vertices_m: np.ndarray, regions: dict[str, tuple[int, int] | list[int]],
                      lip_motion: np.ndarray, seed: int) -> np.ndarray:
    """Colours for the ICT topology from its regions plus geometric heuristics.

    ``lip_motion`` is how far each vertex moves under mouthRoll*: the lip vermilion moves
    most, so it marks the lips without hand-picked vertex ids.
    """
    v = np.asarray(vertices_m, dtype=np.float32)
    n = v.shape[0]

    def region(name: str) -> np.ndarray:
        m = np.zeros(n, dtype=bool)
        if name in regions:
            a, b = regions[name]
            m[a:b] = True
        return m

    skin = region("face") | region("head_neck")
    weights: dict[str, np.ndarray] = {}
    eyes = {side: region(f"eyeball_{name}") for side, name in ((1.0, "left"), (-1.0, "right"))}
    brow = np.zeros(n, dtype=np.float32)
    sclera, iris, pupil = (np.zeros(n, dtype=np.float32) for _ in range(3))
    for side, mask in eyes.items():
        if not mask.any():
            continue
        pts = v[mask]
        center = np.array([pts[:, 0].mean(), pts[:, 1].mean(), pts[:, 2].max() - 0.0125])
        s, i, p = eye_weights(v, mask, center)
        sclera, iris, pupil = np.maximum(sclera, s), np.maximum(iris, i), np.maximum(pupil, p)
        brow = np.maximum(brow, brow_weight(v, center, side) * skin)
    weights.update(sclera=sclera, iris=iris, pupil=pupil, brow=brow)

    lm = np.asarray(lip_motion, dtype=np.float32)
    lip_ref = np.percentile(lm[skin], 99.5) if skin.any() and lm.max() > 0 else 1.0
    weights["lip"] = smoothstep(0.45, 0.75, lm / lip_ref) * skin
    weights["hair"] = hair_weight(v) * skin
    weights["mouth_interior"] = region("mouth_socket").astype(np.float32)
    weights["gums"] = region("gums_tongue").astype(np.float32)
    weights["teeth"] = region("teeth").astype(np.float32)
    return paint(palette(seed), v, weights)


def hair_weight(v: np.ndarray) -> np.ndarray:
    """Short-hair cap (canonical head frame, metres): hairline ~9 cm above the eyes at the front, dropping toward the nape."""
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    hairline = np.interp(z, [-0.09, -0.03, 0.03, 0.07, 0.10], [-0.035, 0.0, 0.055, 0.095, 0.095])
    cap = smoothstep(-0.004, 0.004, y - hairline)
    ears = (1.0 - smoothstep(0.055, 0.068, np.abs(x))) + smoothstep(0.08, 0.09, y)
    return cap * np.clip(ears + smoothstep(-0.03, -0.045, z), 0.0, 1.0)

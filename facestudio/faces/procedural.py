"""A built-in procedural head, so the virtual device works with no model download.

The head is a warped UV sphere (denser rows/columns on the face) shaped by smooth
displacement fields: nose, brow ridge, eye sockets, cheekbones, lips, chin and ears; a neck
ellipsoid and two eyeball spheres complete it. Every component is a closed mesh. Sizes and the
frame match the ICT model (metres, +Y up, face toward +Z, ~0.15 m wide), so scripts, cameras
and tests need not care which source they render.

Expressions are analytic deformations of the rest pose driven by the 52 ARKit weights. The
mouth is not a hole: the jaw rotates about a hinge near the ears, the band of skin along the
mouth line stretches and is pushed deep into the head, which renders as an open, dark mouth
while the mesh stays closed. Blinks close the eye-opening pocket in front of the eyeballs.
Internally lengths are centimetres (readable constants); output is metres.
"""

from __future__ import annotations

import numpy as np

from facestudio.faces.arkit import BLENDSHAPE_INDEX, NUM_BLENDSHAPES
from facestudio.faces.coloring import brow_weight, eye_weights, hair_weight, paint, palette, smoothstep

#: Identity shape parameters (each ~N(0, 1) from the seed, clipped to +-2).
SHAPE_PARAM_NAMES: tuple[str, ...] = (
    "head_width", "head_height", "nose_length", "nose_projection", "nose_width", "jaw_width",
    "eye_spacing", "lip_fullness", "brow_height", "chin_projection",
)

MOUTH_Y = -3.0      # cm, mouth line height
EYE_Y = 3.6         # cm, eye centre height
EYE_RADIUS = 1.2    # cm
JAW_HINGE = np.array([0.0, 1.5, -1.0])   # cm, rotation centre of the jaw
JAW_MAX_ANGLE = 0.30                     # rad at jawOpen = 1


def _gauss(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-(((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _uv_sphere(n_lat: int, n_lon: int, warp: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Unit directions and outward (CCW) triangles; ``warp`` > 0 packs rows/columns toward the
    equator and the +Z meridian, where the face features need resolution."""
    s = np.arange(1, n_lat) / n_lat
    theta = np.pi * s + 0.5 * warp * np.sin(2 * np.pi * s)
    w = 2.0 * np.arange(n_lon) / n_lon - 1.0
    phi = np.pi * w - warp * np.sin(np.pi * w)
    st, ct = np.sin(theta)[:, None], np.cos(theta)[:, None]
    ring = np.stack([st * np.sin(phi)[None, :], np.broadcast_to(ct, (n_lat - 1, n_lon)),
                     st * np.cos(phi)[None, :]], axis=-1).reshape(-1, 3)
    dirs = np.concatenate([[[0.0, 1.0, 0.0]], ring, [[0.0, -1.0, 0.0]]])
    top, bottom = 0, dirs.shape[0] - 1

    def idx(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        return 1 + r * n_lon + c % n_lon

    c = np.arange(n_lon)
    tris = [np.stack([np.full(n_lon, top), idx(0, c + 1), idx(0, c)], axis=1),
            np.stack([np.full(n_lon, bottom), idx(n_lat - 2, c), idx(n_lat - 2, c + 1)], axis=1)]
    r, cc = np.meshgrid(np.arange(n_lat - 2), c, indexing="ij")
    r, cc = r.ravel(), cc.ravel()
    a, b, d, e = idx(r, cc), idx(r, cc + 1), idx(r + 1, cc), idx(r + 1, cc + 1)
    tris += [np.stack([a, b, d], axis=1), np.stack([b, e, d], axis=1)]
    return dirs, np.concatenate(tris).astype(np.int32)


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


class ProceduralHead:
    """A seeded procedural identity implementing :class:`facestudio.faces.surface.FaceSurface`."""

    kind = "procedural"

    def __init__(self, seed: int = 0, n_lat: int = 200, n_lon: int = 220) -> None:
        rng = np.random.default_rng([seed, 0x4EAD])
        self.identity_params = np.clip(rng.standard_normal(len(SHAPE_PARAM_NAMES)), -2, 2).astype(np.float32)
        p = dict(zip(SHAPE_PARAM_NAMES, self.identity_params.astype(float)))
        self._eye_x = 3.2 + 0.15 * p["eye_spacing"]
        self._lip = 1.0 + 0.2 * p["lip_fullness"]

        dirs, head_tris = _uv_sphere(n_lat, n_lon, warp=0.4)
        head = self._shape_head(dirs, p)
        self._n_head = head.shape[0]
        neck_dirs, neck_tris = _uv_sphere(24, 32)
        neck = neck_dirs * np.array([5.6, 12.0, 5.8]) + np.array([0.0, -16.0, -1.5])
        eye_dirs, eye_tris = _uv_sphere(24, 32)
        eye_z = self._eye_socket_surface_z(head) - 0.15 - EYE_RADIUS
        self._eye_centers = np.array([[s * self._eye_x, EYE_Y - 0.1, eye_z] for s in (1.0, -1.0)])
        eyes = [eye_dirs * EYE_RADIUS + c for c in self._eye_centers]

        parts = [head, neck, *eyes]
        offsets = np.cumsum([0] + [len(x) for x in parts])
        self._rest = np.concatenate(parts).astype(np.float64)
        self.triangles = np.concatenate([t + o for t, o in zip(
            (head_tris, neck_tris, eye_tris, eye_tris), offsets)]).astype(np.int32)
        self._eye_slices = [slice(offsets[2], offsets[3]), slice(offsets[3], offsets[4])]

        x, y, z = head[:, 0], head[:, 1], head[:, 2]
        front = dirs[:, 2]
        self.face_vertex_mask = np.zeros(len(self._rest), dtype=bool)
        self.face_vertex_mask[: self._n_head] = (front > 0.35) & (y > -9.5) & (y < 9.0) & (np.abs(x) < 6.5)
        self._front = smoothstep(0.25, 0.7, front)
        lower = smoothstep(MOUTH_Y + 0.15, MOUTH_Y - 0.45, y)   # 0 above the mouth line, 1 below
        self._jaw = lower * smoothstep(-3.0, 1.0, z)
        self._band = 4.0 * lower * (1.0 - lower)                 # the lip seam that opens
        self.vertex_colors = self._colors(seed)

    # ------------------------------------------------------------------ rest shape

    def _shape_head(self, d: np.ndarray, p: dict[str, float]) -> np.ndarray:
        """Rest head vertices (cm) from unit directions and the identity parameters."""
        ax, ay, az = 7.5 * (1 + 0.05 * p["head_width"]), 11.5 * (1 + 0.04 * p["head_height"]), 10.0
        # Superellipse in the horizontal plane: flatter face and sides than a plain ellipsoid.
        horiz = np.hypot(d[:, 0], d[:, 2])
        pole = horiz < 1e-9
        sx = np.where(pole, 0.0, d[:, 0] / np.where(pole, 1.0, horiz))
        sz = np.where(pole, 1.0, d[:, 2] / np.where(pole, 1.0, horiz))
        r = (np.abs(sx) ** 2.6 + np.abs(sz) ** 2.6) ** (-1 / 2.6)
        v = np.stack([ax * d[:, 0] * r, ay * d[:, 1] + 2.5, az * d[:, 2] * r], axis=1)
        x, y = v[:, 0], v[:, 1]
        front = smoothstep(0.25, 0.7, d[:, 2])
        lower = smoothstep(2.0, -9.0, y)
        v[:, 0] *= 1.0 - (0.2 + 0.04 * p["jaw_width"]) * lower * smoothstep(-0.5, 0.5, d[:, 2])
        v[:, 2] += 3.0 * lower * smoothstep(-0.2, 0.6, d[:, 2])   # bring the jaw and chin forward
        x = v[:, 0]

        h = np.zeros_like(x)
        # Nose: ridge growing from the bridge to the tip, then dropping to the upper lip.
        nl = 1.0 + 0.08 * p["nose_length"]
        ys = np.array([5.0, 3.5, 0.2, -0.4, -1.3]) * np.array([1, 1, nl, nl, nl])
        proj = np.interp(-y, -ys, [0.0, 0.5, 2.5, 2.2, 0.0]) * (1 + 0.1 * p["nose_projection"])
        width = (0.75 + 0.6 * smoothstep(2.5, -0.5, y)) * (1 + 0.1 * p["nose_width"])
        h += proj * np.exp(-(x / width) ** 2)
        for s in (1.0, -1.0):
            h += 0.8 * _gauss(x, y, s * 1.35 * (1 + 0.1 * p["nose_width"]), -0.5 * nl, 0.65, 0.6)
        # Brow ridge, cheekbones, muzzle, lips, chin.
        by = 5.3 + 0.2 * p["brow_height"]
        h += 0.55 * np.exp(-((y - by) / 1.1) ** 2) * (1 - smoothstep(4.5, 6.5, np.abs(x)))
        for s in (1.0, -1.0):
            h += 0.5 * _gauss(x, y, s * 4.3, 1.0, 1.8, 1.5)
            h -= 0.55 * _gauss(x, y, s * self._eye_x, EYE_Y, 1.9, 1.4)   # eye-socket recess
        h += 0.8 * _gauss(x, y, 0.0, MOUTH_Y, 3.5, 2.5)
        lip_w = 1 - smoothstep(1.6, 2.6, np.abs(x))
        h += self._lip * lip_w * (0.55 * np.exp(-((y - MOUTH_Y - 0.5) / 0.45) ** 2)
                                  + 0.5 * np.exp(-((y - MOUTH_Y + 0.6) / 0.5) ** 2))
        h -= 0.3 * _gauss(x, y, 0.0, -5.2, 1.8, 0.7)
        h += (0.6 + 0.2 * p["chin_projection"]) * _gauss(x, y, 0.0, -7.6, 1.9, 1.2)
        v[:, 2] += h * front
        # Ears: lumps on the sides, elongated vertically.
        side = smoothstep(0.6, 0.9, np.abs(d[:, 0]))
        v[:, 0] += np.sign(x) * 1.4 * side * _gauss(v[:, 1], v[:, 2], 2.0, -0.5, 2.6, 1.4)
        return v

    def _eye_socket_surface_z(self, head: np.ndarray) -> float:
        """Skin depth at the eye centre, so eyeballs sit just behind closed lids."""
        near = np.hypot(head[:, 0] - self._eye_x, head[:, 1] - EYE_Y) + 100.0 * (head[:, 2] < 0)
        return float(head[np.argmin(near), 2])

    # ------------------------------------------------------------------ colours

    def _colors(self, seed: int) -> np.ndarray:
        rest = self._rest
        x, y = rest[:, 0], rest[:, 1]
        head = np.zeros(len(rest), dtype=np.float32)
        head[: self._n_head] = self._front
        skin = np.zeros(len(rest), dtype=bool)
        skin[: self._eye_slices[0].start] = True
        lip_w = 1 - smoothstep(1.7, 2.6, np.abs(x))
        lips = np.maximum(np.exp(-((y - MOUTH_Y - 0.45) / 0.45) ** 4),
                          np.exp(-((y - MOUTH_Y + 0.55) / 0.5) ** 4)) * lip_w * head
        weights: dict[str, np.ndarray] = {"lip": smoothstep(0.3, 0.7, lips), "hair": hair_weight(rest * 0.01) * skin}
        band = np.zeros(len(rest))
        band[: self._n_head] = self._band
        weights["mouth_interior"] = smoothstep(0.2, 0.6, band) * (1 - smoothstep(1.9, 2.5, np.abs(x))) * head
        sclera, iris, pupil = (np.zeros(len(rest), dtype=np.float32) for _ in range(3))
        brow = np.zeros(len(rest), dtype=np.float32)
        for sl, c, s in zip(self._eye_slices, self._eye_centers, (1.0, -1.0)):
            mask = np.zeros(len(rest), dtype=bool)
            mask[sl] = True
            a, b, e = eye_weights(rest, mask, c)
            sclera, iris, pupil = np.maximum(sclera, a), np.maximum(iris, b), np.maximum(pupil, e)
            brow = np.maximum(brow, brow_weight(rest * 0.01, np.array([c[0], EYE_Y, c[2] + EYE_RADIUS]) * 0.01, s))
        weights.update(sclera=sclera, iris=iris, pupil=pupil, brow=brow * head)
        return paint(palette(seed), rest * 0.01, weights)

    # ------------------------------------------------------------------ expressions

    def vertices(self, blendshapes: np.ndarray) -> np.ndarray:
        """(V, 3) float32 metres for 52 ARKit weights (unknown shapes have no effect)."""
        w = np.clip(np.asarray(blendshapes, dtype=np.float64).reshape(NUM_BLENDSHAPES), 0.0, 1.0)
        b = {name: w[i] for name, i in BLENDSHAPE_INDEX.items()}
        rest = self._rest[: self._n_head]
        x, y = rest[:, 0], rest[:, 1]
        f = self._front
        delta = np.zeros_like(rest)

        def move(weight: float, field: np.ndarray, dx: float = 0.0, dy: float = 0.0, dz: float = 0.0) -> None:
            if weight > 0:
                delta[:, 0] += weight * dx * field
                delta[:, 1] += weight * dy * field
                delta[:, 2] += weight * dz * field

        mouth = _gauss(x, y, 0.0, MOUTH_Y, 2.3, 1.4) * f
        for s, side in ((1.0, "Left"), (-1.0, "Right")):
            corner = _gauss(x, y, s * 2.3, MOUTH_Y, 1.3, 1.1) * f
            cheek = _gauss(x, y, s * 3.6, -0.8, 1.6, 1.4) * f
            move(b[f"mouthSmile{side}"], corner, s * 0.45, 0.7, -0.3)
            move(b[f"mouthSmile{side}"], cheek, 0.0, 0.25, 0.35)
            move(b[f"cheekSquint{side}"], cheek, 0.0, 0.3, 0.15)
            move(b[f"mouthFrown{side}"], corner, 0.0, -0.55, -0.1)
            move(b[f"mouthStretch{side}"], corner, s * 0.4, -0.25, -0.1)
            move(b[f"mouthDimple{side}"], corner, s * 0.2, 0.0, -0.2)
            move(b[f"browOuterUp{side}"], _gauss(x, y, s * 4.0, 5.4, 1.8, 1.6) * f, 0.0, 0.6, 0.0)
            move(b[f"browDown{side}"], _gauss(x, y, s * 2.0, 5.1, 1.8, 1.3) * f, -s * 0.2, -0.4, -0.1)
            move(b[f"noseSneer{side}"], _gauss(x, y, s * 1.2, 0.4, 0.8, 1.0) * f, 0.0, 0.3, 0.05)
            move(b["browInnerUp"], _gauss(x, y, s * 1.5, 5.3, 1.8, 1.6) * f, 0.0, 0.65, 0.0)
            move(b["cheekPuff"], _gauss(x, y, s * 4.0, -2.8, 2.0, 2.0) * f, s * 0.9, 0.0, 0.6)
        move(b["mouthPucker"], mouth, 0.0, 0.0, 0.9)
        move(b["mouthFunnel"], mouth, 0.0, 0.0, 0.6)
        delta[:, 0] -= (0.35 * b["mouthPucker"] + 0.2 * b["mouthFunnel"]) * x * mouth
        move(b["mouthLeft"] - b["mouthRight"], mouth, 0.8)
        move(b["mouthShrugUpper"], mouth, 0.0, 0.25, 0.1)
        jaw = self._jaw
        move(b["jawLeft"] - b["jawRight"], jaw, 1.0)
        move(b["jawForward"], jaw, 0.0, 0.0, 0.8)
        v = rest + delta

        # Jaw: rotate the lower face about the hinge, each vertex by its jaw weight.
        angle = JAW_MAX_ANGLE * b["jawOpen"] * jaw
        rel = v - JAW_HINGE
        c, s_ = np.cos(angle), np.sin(angle)
        v[:, 1], v[:, 2] = JAW_HINGE[1] + rel[:, 1] * c - rel[:, 2] * s_, JAW_HINGE[2] + rel[:, 1] * s_ + rel[:, 2] * c
        # Mouth and eye openings: pockets pushed into the head.
        open_w = 1 - smoothstep(1.6, 2.6, np.abs(x))
        depth = 0.15 + (2.8 * b["jawOpen"] + 0.6 * b["mouthFunnel"]) * (1.0 - 0.8 * b["mouthClose"])
        v[:, 2] -= depth * self._band * open_w * f
        for s, side in ((1.0, "Left"), (-1.0, "Right")):
            wide, blink, squint = b[f"eyeWide{side}"], b[f"eyeBlink{side}"], b[f"eyeSquint{side}"]
            half_h = 0.62 * (1 + 0.35 * wide) * (1 - 0.3 * squint) * max(1.0 - blink, 1e-3)
            ex, ey = (x - s * self._eye_x) / 1.35, (y - EYE_Y + 0.2 * blink) / half_h
            opening = 1 - smoothstep(0.6, 1.0, ex ** 2 + ey ** 2)
            v[:, 2] -= 1.1 * opening * f * (blink < 1.0)

        eyes = []
        for sl, c, s, side in zip(self._eye_slices, self._eye_centers, (1.0, -1.0), ("Left", "Right")):
            yaw = 0.35 * s * (b[f"eyeLookOut{side}"] - b[f"eyeLookIn{side}"])
            pitch = -0.3 * (b[f"eyeLookUp{side}"] - b[f"eyeLookDown{side}"])
            rot = _rot_y(yaw) @ _rot_x(pitch)
            eyes.append((self._rest[sl] - c) @ rot.T + c)
        neck = self._rest[self._n_head: self._eye_slices[0].start]
        return (np.concatenate([v, neck, *eyes]) * 0.01).astype(np.float32)

"""The ICT-FaceKit morphable face model: loading, ARKit blendshape mapping, and import from OBJs.

The model is stored as the ``ict_facekit.npz`` layout described in ``shared/data/README.md``
(centimetres, +Y up, face toward +Z). FaceStudio works in metres, so every vertex array that
leaves this module is the ICT coordinates divided by 100 — the canonical head frame of
:mod:`facestudio.capture.frame`.

Both face sources (this model and :mod:`facestudio.faces.procedural`) expose the small
:class:`facestudio.faces.surface.FaceSurface` protocol, so the synthetic renderer and the ground-truth scoring treat
them alike.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
import numpy as np

from facestudio.faces.arkit import BLENDSHAPE_INDEX, BLENDSHAPE_NAMES, NUM_BLENDSHAPES

CM_TO_M = 0.01

#: Vertex ranges of the ICT-FaceKit topology (fixed by the FaceXModel meshes).
ICT_REGIONS: dict[str, list[int]] = {
    "face": [0, 9409], "head_neck": [9409, 11248], "mouth_socket": [11248, 13294],
    "eye_socket_left": [13294, 13678], "eye_socket_right": [13678, 14062],
    "gums_tongue": [14062, 17039], "teeth": [17039, 21451], "eyeball_left": [21451, 23021],
    "eyeball_right": [23021, 24591], "lacrimal_fluid": [24591, 24999],
    "eye_blend": [24999, 25047], "eye_occlusion": [25047, 25351],
    "eyelashes": [25351, 26719], "narrow_face": [0, 6706],
}
ICT_VERTEX_COUNT = 26719

#: Skin a depth camera sees.
SKIN_REGIONS = ("face", "head_neck")
#: Rendered too so an open mouth and the eyes look right. Eyelashes, eye blend/occlusion and
#: lacrimal meshes are thin transparent cards in the original and are left out on purpose.
INTERIOR_REGIONS = ("eyeball_left", "eyeball_right", "teeth", "gums_tongue", "mouth_socket")
#: The frontal face region used to score reconstructions against ground truth.
FACE_SCORE_REGION = "narrow_face"

#: ARKit shapes that drive two ICT shapes at once.
_BILATERAL = {"browInnerUp", "cheekPuff"}

ICT_EXPRESSION_NAMES: tuple[str, ...] = (
    "PupilDilate_L", "PupilDilate_R", "browDown_L", "browDown_R", "browInnerUp_L",
    "browInnerUp_R", "browOuterUp_L", "browOuterUp_R", "cheekPuff_L", "cheekPuff_R",
    "cheekRaiser_L", "cheekRaiser_R", "cheekSquint_L", "cheekSquint_R", "eyeBlink_L",
    "eyeBlink_R", "eyeLookDown_L", "eyeLookDown_R", "eyeLookIn_L", "eyeLookIn_R",
    "eyeLookOut_L", "eyeLookOut_R", "eyeLookUp_L", "eyeLookUp_R", "eyeSquint_L", "eyeSquint_R",
    "eyeWide_L", "eyeWide_R", "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose",
    "mouthDimple_L", "mouthDimple_R", "mouthFrown_L", "mouthFrown_R", "mouthFunnel",
    "mouthLeft", "mouthLowerDown_L", "mouthLowerDown_R", "mouthPress_L", "mouthPress_R",
    "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmile_L", "mouthSmile_R", "mouthStretch_L", "mouthStretch_R",
    "mouthUpperUp_L", "mouthUpperUp_R", "noseSneer_L", "noseSneer_R",
)


def ict_to_arkit_name(ict_name: str) -> str | None:
    """The ARKit name an ICT expression belongs to, or None for ICT-only shapes."""
    base = re.sub(r"_(L|R)$", "", ict_name)
    if base in _BILATERAL:
        return base
    name = re.sub(r"_L$", "Left", re.sub(r"_R$", "Right", ict_name))
    return name if name in BLENDSHAPE_INDEX else None


def arkit_mapping(expression_names: list[str] | tuple[str, ...]) -> np.ndarray:
    """(E, 52) 0/1 matrix: ICT weights = mapping @ ARKit weights."""
    mapping = np.zeros((len(expression_names), NUM_BLENDSHAPES), dtype=np.float32)
    for i, name in enumerate(expression_names):
        arkit = ict_to_arkit_name(str(name))
        if arkit is not None:
            mapping[i, BLENDSHAPE_INDEX[arkit]] = 1.0
    return mapping


class IctFaceModel:
    """The whole morphable model: any identity x any ARKit expression, in metres."""

    def __init__(self, neutral_cm: np.ndarray, faces: np.ndarray, identity_basis: np.ndarray,
                 expression_basis: np.ndarray, expression_names: list[str],
                 regions: dict[str, list[int]]) -> None:
        self.neutral = np.asarray(neutral_cm, dtype=np.float32)
        self.faces = np.asarray(faces, dtype=np.int32)
        self.identity_basis = np.asarray(identity_basis, dtype=np.float32)
        self.expression_names = [str(n) for n in expression_names]
        self.regions = {k: (int(a), int(b)) for k, (a, b) in regions.items()}
        mapping = arkit_mapping(self.expression_names)
        ex = np.asarray(expression_basis, dtype=np.float32)
        # Fold the ICT->ARKit mapping into the basis once: (52, V, 3) deltas per ARKit weight.
        self.arkit_basis = np.einsum("ej,evc->jvc", mapping, ex)
        self.expression_basis = ex
        self.arkit_covered = mapping.any(axis=0)

    @classmethod
    def load(cls, path: str | Path) -> "IctFaceModel":
        """Load the npz; a missing or malformed file raises ValueError naming it."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"ICT face model not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as d:
                arrays = {k: d[k] for k in ("neutral", "faces", "identity_basis",
                                            "expression_basis", "expression_names",
                                            "regions_json")}
        except (OSError, KeyError, ValueError, EOFError) as exc:
            raise ValueError(f"{path} is not a valid ICT face model npz: {exc}") from exc
        n_v = arrays["neutral"].shape[0]
        if (arrays["neutral"].shape != (n_v, 3) or arrays["identity_basis"].shape[1:] != (n_v, 3)
                or arrays["expression_basis"].shape[1:] != (n_v, 3)
                or arrays["faces"].ndim != 2 or arrays["faces"].shape[1] != 3
                or len(arrays["expression_names"]) != arrays["expression_basis"].shape[0]):
            raise ValueError(f"{path}: array shapes do not form one mesh topology")
        return cls(arrays["neutral"], arrays["faces"], arrays["identity_basis"],
                   arrays["expression_basis"], list(arrays["expression_names"]),
                   json.loads(str(arrays["regions_json"])))

    @property
    def num_vertices(self) -> int:
        return self.neutral.shape[0]

    @property
    def num_identities(self) -> int:
        return self.identity_basis.shape[0]

    def region_mask(self, *names: str) -> np.ndarray:
        """(V,) bool for the union of the named regions (absent regions are empty)."""
        mask = np.zeros(self.num_vertices, dtype=bool)
        for name in names:
            if name in self.regions:
                a, b = self.regions[name]
                mask[a:b] = True
        return mask

    def triangles_in(self, *regions: str) -> np.ndarray:
        """Triangles whose three vertices all lie in the given regions."""
        return self.faces[self.region_mask(*regions)[self.faces].all(axis=1)]

    @property
    def skin_triangles(self) -> np.ndarray:
        return self.triangles_in(*SKIN_REGIONS)

    @property
    def render_triangles(self) -> np.ndarray:
        return self.triangles_in(*SKIN_REGIONS, *INTERIOR_REGIONS)

    def identity_vertices_cm(self, identity: np.ndarray) -> np.ndarray:
        identity = np.asarray(identity, dtype=np.float32).reshape(-1)
        if identity.shape[0] != self.num_identities:
            raise ValueError(f"expected {self.num_identities} identity weights, got {identity.shape[0]}")
        return self.neutral + np.tensordot(identity, self.identity_basis, axes=1)

    def vertices_m(self, identity: np.ndarray, blendshapes: np.ndarray) -> np.ndarray:
        """(V, 3) float32 metres in the canonical head frame."""
        return _apply_arkit(self.identity_vertices_cm(identity), self.arkit_basis, blendshapes)

    def bind(self, identity: np.ndarray, seed: int = 0) -> "IctFace":
        return IctFace(self, identity, seed)


def _apply_arkit(base_cm: np.ndarray, arkit_basis: np.ndarray, blendshapes: np.ndarray) -> np.ndarray:
    w = np.clip(np.asarray(blendshapes, dtype=np.float32).reshape(NUM_BLENDSHAPES), 0.0, 1.0)
    active = np.flatnonzero(w)
    v = base_cm + np.tensordot(w[active], arkit_basis[active], axes=1) if active.size else base_cm
    return (v * CM_TO_M).astype(np.float32)


class IctFace:
    """An ICT identity bound once (identity offsets precomputed), implementing FaceSurface."""

    kind = "ict"

    def __init__(self, model: IctFaceModel, identity: np.ndarray, seed: int = 0) -> None:
        from facestudio.faces.coloring import ict_vertex_colors

        self.identity_params = np.asarray(identity, dtype=np.float32).reshape(-1)
        self._base_cm = model.identity_vertices_cm(self.identity_params)
        self._arkit_basis = model.arkit_basis
        self.triangles = model.render_triangles.astype(np.int32)
        self.face_vertex_mask = model.region_mask(FACE_SCORE_REGION)
        roll = np.linalg.norm(model.arkit_basis[BLENDSHAPE_INDEX["mouthRollUpper"]], axis=1) + \
            np.linalg.norm(model.arkit_basis[BLENDSHAPE_INDEX["mouthRollLower"]], axis=1)
        self.vertex_colors = ict_vertex_colors(self._base_cm * CM_TO_M, model.regions, roll, seed)

    def vertices(self, blendshapes: np.ndarray) -> np.ndarray:
        return _apply_arkit(self._base_cm, self._arkit_basis, blendshapes)


# ----------------------------------------------------------------------------- import

_IDENTITY_RE = re.compile(r"^identity(\d{3})\.obj$")


def _read_obj(path: Path) -> tuple[np.ndarray, list[list[int]]]:
    """Vertices (N, 3) and polygon index lists (0-based) of an OBJ; ValueError names the file."""
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except FileNotFoundError as exc:
        raise ValueError(f"missing ICT-FaceKit file: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    coords: list[str] = []
    polys: list[list[int]] = []
    try:
        for line in text.splitlines():
            if line.startswith("v "):
                parts = line.split()
                if len(parts) < 4:
                    raise ValueError(f"bad vertex line {line!r}")
                coords.extend(parts[1:4])
            elif line.startswith("f "):
                n_so_far = len(coords) // 3
                idx = [int(tok.split("/")[0]) for tok in line.split()[1:]]
                polys.append([i - 1 if i > 0 else n_so_far + i for i in idx])
        verts = np.array(coords, dtype=np.float64).reshape(-1, 3)
    except ValueError as exc:
        raise ValueError(f"corrupt OBJ {path}: {exc}") from exc
    if verts.shape[0] == 0:
        raise ValueError(f"corrupt OBJ {path}: no vertices")
    return verts, polys


def _fan_triangulate(polys: list[list[int]], n_vertices: int, path: Path) -> np.ndarray:
    tris = [(p[0], p[k], p[k + 1]) for p in polys for k in range(1, len(p) - 1)]
    faces = np.array(tris, dtype=np.int32).reshape(-1, 3)
    if faces.size == 0 or faces.min() < 0 or faces.max() >= n_vertices:
        raise ValueError(f"corrupt OBJ {path}: faces missing or out of range")
    return faces


def import_ict_facekit(src_dir: str | Path, out_npz: str | Path) -> Path:
    """Convert an ICT-FaceKit ``FaceXModel`` folder into FaceStudio's npz layout.

    Users get the model from ICT-FaceKit itself (we do not ship it); this turns their
    checkout into the compact form the app loads: neutral + float16 deltas (shape - neutral).
    All 57 ICT expressions and identity000..identityNNN (contiguous) must be present.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise ValueError(f"ICT-FaceKit folder not found: {src}")
    neutral_path = src / "generic_neutral_mesh.obj"
    neutral, polys = _read_obj(neutral_path)
    faces = _fan_triangulate(polys, neutral.shape[0], neutral_path)

    def deltas(path: Path) -> np.ndarray:
        verts, _ = _read_obj(path)
        if verts.shape != neutral.shape:
            raise ValueError(f"{path} has {verts.shape[0]} vertices, the neutral mesh has "
                             f"{neutral.shape[0]}: not the same topology")
        return (verts - neutral).astype(np.float16)

    ids = sorted(int(m.group(1)) for p in src.iterdir() if (m := _IDENTITY_RE.match(p.name)))
    if not ids:
        raise ValueError(f"missing ICT-FaceKit file: {src / 'identity000.obj'}")
    for expected, got in enumerate(ids):
        if expected != got:
            raise ValueError(f"missing ICT-FaceKit file: {src / f'identity{expected:03d}.obj'}")
    identity_names = [f"identity{i:03d}" for i in ids]
    identity_basis = np.stack([deltas(src / f"{n}.obj") for n in identity_names])
    expression_basis = np.stack([deltas(src / f"{n}.obj") for n in ICT_EXPRESSION_NAMES])
    regions = ICT_REGIONS if neutral.shape[0] == ICT_VERTEX_COUNT else {"face": [0, neutral.shape[0]]}
    license_text = next((p.read_text(errors="replace") for p in
                         (src / "LICENSE", src.parent / "LICENSE") if p.is_file()),
                        "MIT License, ICT-FaceKit (USC Institute for Creative Technologies)")
    out = Path(out_npz)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as fh:
        np.savez_compressed(
            fh, neutral=neutral.astype(np.float32), faces=faces,
            identity_basis=identity_basis, identity_names=np.array(identity_names),
            expression_basis=expression_basis, expression_names=np.array(ICT_EXPRESSION_NAMES),
            regions_json=np.array(json.dumps(regions)), units=np.array("centimeters"),
            license=np.array(license_text),
            source=np.array(f"ICT-FaceKit (github.com/ICT-VGL/ICT-FaceKit), FaceXModel, "
                            f"imported from {src.name}, converted to deltas from generic_neutral_mesh"))
    return out


@dataclass(frozen=True)
class IctCoverage:
    """Which ARKit names the ICT model can express (tongueOut has no shape)."""

    covered: tuple[str, ...]
    missing: tuple[str, ...]


def arkit_coverage(model: IctFaceModel) -> IctCoverage:
    covered = tuple(n for n, c in zip(BLENDSHAPE_NAMES, model.arkit_covered) if c)
    missing = tuple(n for n, c in zip(BLENDSHAPE_NAMES, model.arkit_covered) if not c)
    return IctCoverage(covered, missing)

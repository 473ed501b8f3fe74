"""Face sources: the ICT model (when the npz is present), its importer, the procedural head, colours."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facestudio.faces.arkit import BLENDSHAPE_NAMES, blendshape_vector
from facestudio.faces.surface import FaceSurface
from facestudio.faces.ict import (ICT_EXPRESSION_NAMES, IctFaceModel, arkit_coverage,
                                  arkit_mapping, ict_to_arkit_name, import_ict_facekit)
from facestudio.faces.procedural import SHAPE_PARAM_NAMES, ProceduralHead

ICT_NPZ = Path(__file__).parents[1].parent / "shared/data/ict_facekit.npz"


@pytest.fixture(scope="module")
def ict_model() -> IctFaceModel:
    if not ICT_NPZ.is_file():
        pytest.skip(f"ICT face model not available at {ICT_NPZ}")
    return IctFaceModel.load(ICT_NPZ)


@pytest.fixture(scope="module")
def head() -> ProceduralHead:
    return ProceduralHead(seed=5)


def _chin(face: FaceSurface, rest: np.ndarray) -> np.ndarray:
    """Frontal face vertices in the chin area (lowest 10 % of the scored face region)."""
    idx = np.flatnonzero(face.face_vertex_mask)
    y = rest[idx, 1]
    return idx[y < np.quantile(y, 0.1)]


# ------------------------------------------------------------------ ARKit mapping

def test_ict_name_mapping() -> None:
    assert ict_to_arkit_name("browDown_L") == "browDownLeft"
    assert ict_to_arkit_name("mouthSmile_R") == "mouthSmileRight"
    assert ict_to_arkit_name("browInnerUp_R") == "browInnerUp"
    assert ict_to_arkit_name("cheekPuff_L") == "cheekPuff"
    assert ict_to_arkit_name("jawOpen") == "jawOpen"
    assert ict_to_arkit_name("cheekRaiser_L") is None
    assert ict_to_arkit_name("PupilDilate_R") is None
    m = arkit_mapping(ICT_EXPRESSION_NAMES)
    covered = {BLENDSHAPE_NAMES[j] for j in np.flatnonzero(m.any(axis=0))}
    assert len(covered) == 51 and set(BLENDSHAPE_NAMES) - covered == {"tongueOut"}
    assert m[:, BLENDSHAPE_NAMES.index("browInnerUp")].sum() == 2


# ------------------------------------------------------------------ ICT model

def test_ict_model_scale_and_coverage(ict_model: IctFaceModel) -> None:
    cov = arkit_coverage(ict_model)
    assert len(cov.covered) == 51 and cov.missing == ("tongueOut",)
    face = ict_model.bind(np.zeros(ict_model.num_identities))
    v = face.vertices(np.zeros(52))
    assert v.dtype == np.float32 and v.shape == (ict_model.num_vertices, 3)
    skin = v[np.unique(ict_model.skin_triangles)]
    width = np.ptp(v[face.face_vertex_mask, 0])
    assert 0.12 < width < 0.2, width                     # metres, not centimetres
    assert 0.2 < np.ptp(skin[:, 1]) < 0.45
    np.testing.assert_allclose(v, ict_model.neutral / 100.0, atol=1e-6)


def test_ict_render_surface_excludes_cards(ict_model: IctFaceModel) -> None:
    tris = ict_model.render_triangles
    used = np.zeros(ict_model.num_vertices, dtype=bool)
    used[tris.ravel()] = True
    for cards in ("eyelashes", "eye_blend", "eye_occlusion", "lacrimal_fluid"):
        assert not (used & ict_model.region_mask(cards)).any(), cards
    for region in ("face", "head_neck", "teeth", "eyeball_left", "mouth_socket"):
        assert (used & ict_model.region_mask(region)).any(), region


def test_ict_expressions_and_identity(ict_model: IctFaceModel) -> None:
    face = ict_model.bind(np.zeros(ict_model.num_identities))
    rest = face.vertices(np.zeros(52))
    chin = _chin(face, rest)
    opened = face.vertices(blendshape_vector({"jawOpen": 1.0}))
    assert (opened[chin, 1] - rest[chin, 1]).mean() < -0.01     # chin drops > 1 cm
    brows = face.vertices(blendshape_vector({"browInnerUp": 1.0}))
    assert np.abs(brows - rest).max() > 0.003
    other = ict_model.bind(np.random.default_rng(0).standard_normal(ict_model.num_identities))
    assert np.abs(other.vertices(np.zeros(52)) - rest).max() > 0.002
    assert face.vertex_colors.shape == (ict_model.num_vertices, 3)
    assert 0.0 <= face.vertex_colors.min() and face.vertex_colors.max() <= 1.0
    assert isinstance(face, FaceSurface)


def test_ict_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nope.npz"):
        IctFaceModel.load(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        IctFaceModel.load(bad)


# ------------------------------------------------------------------ importer

_QUAD = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0.5, 0.5, 1]], dtype=np.float64)


def _write_obj(path: Path, verts: np.ndarray) -> None:
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in verts]
    lines += ["vt 0 0", "f 1/1 2/1 3/1 4/1", "f 1/1 2/1 5/1"]
    path.write_text("\n".join(lines) + "\n")


def _fake_facekit(root: Path, n_identities: int = 3) -> Path:
    src = root / "FaceXModel"
    src.mkdir()
    _write_obj(src / "generic_neutral_mesh.obj", _QUAD)
    for i in range(n_identities):
        _write_obj(src / f"identity{i:03d}.obj", _QUAD + 0.1 * (i + 1))
    for k, name in enumerate(ICT_EXPRESSION_NAMES):
        v = _QUAD.copy()
        v[4, 2] += 0.01 * (k + 1)
        _write_obj(src / f"{name}.obj", v)
    return src


def test_import_ict_facekit_roundtrip(tmp_path: Path) -> None:
    src = _fake_facekit(tmp_path)
    out = import_ict_facekit(src, tmp_path / "out" / "model.npz")
    with np.load(out) as d:
        assert d["faces"].tolist() == [[0, 1, 2], [0, 2, 3], [0, 1, 4]]
        assert d["identity_basis"].shape == (3, 5, 3) and d["identity_basis"].dtype == np.float16
        assert list(d["identity_names"]) == ["identity000", "identity001", "identity002"]
        assert list(d["expression_names"]) == list(ICT_EXPRESSION_NAMES)
        np.testing.assert_allclose(d["identity_basis"][1].astype(float), 0.2, atol=1e-3)
        assert str(d["units"]) == "centimeters"
        assert json.loads(str(d["regions_json"])) == {"face": [0, 5]}
    model = IctFaceModel.load(out)
    v = model.vertices_m(np.zeros(3), blendshape_vector({"jawOpen": 1.0}))
    k = ICT_EXPRESSION_NAMES.index("jawOpen")
    assert v[4, 2] == pytest.approx((1.0 + 0.01 * (k + 1)) / 100.0, abs=1e-5)


def test_import_ict_facekit_errors(tmp_path: Path) -> None:
    src = _fake_facekit(tmp_path)
    (src / "mouthPucker.obj").unlink()
    with pytest.raises(ValueError, match="mouthPucker.obj"):
        import_ict_facekit(src, tmp_path / "a.npz")
    _write_obj(src / "mouthPucker.obj", _QUAD)
    (src / "jawOpen.obj").write_text("v 1 2 three\nf 1 2 3\n")
    with pytest.raises(ValueError, match="jawOpen.obj"):
        import_ict_facekit(src, tmp_path / "b.npz")
    _write_obj(src / "jawOpen.obj", _QUAD[:4])
    with pytest.raises(ValueError, match="jawOpen.obj"):
        import_ict_facekit(src, tmp_path / "c.npz")
    _write_obj(src / "jawOpen.obj", _QUAD)
    (src / "identity001.obj").unlink()
    with pytest.raises(ValueError, match="identity001.obj"):
        import_ict_facekit(src, tmp_path / "d.npz")
    with pytest.raises(ValueError, match="missing_dir"):
        import_ict_facekit(tmp_path / "missing_dir", tmp_path / "e.npz")


# ------------------------------------------------------------------ procedural head

def test_procedural_head_frame_and_size(head: ProceduralHead) -> None:
    v = head.vertices(np.zeros(52))
    assert v.dtype == np.float32 and np.isfinite(v).all()
    assert head.triangles.dtype == np.int32 and head.triangles.max() < len(v)
    face = v[head.face_vertex_mask]
    assert 0.11 < np.ptp(face[:, 0]) < 0.2                 # ~0.15 m wide, metres
    nose = v[np.argmax(np.where(head.face_vertex_mask, v[:, 2], -1))]
    assert 0.1 < nose[2] < 0.16 and abs(nose[0]) < 0.005   # nose tip toward +Z, on the midline
    assert 0.2 < np.ptp(v[:, 1]) < 0.6
    assert head.identity_params.shape == (len(SHAPE_PARAM_NAMES),)


def test_procedural_head_is_closed(head: ProceduralHead) -> None:
    t = head.triangles
    edges = np.sort(np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts == 2).all()                             # every edge shared by two triangles


def test_procedural_expressions(head: ProceduralHead) -> None:
    rest = head.vertices(np.zeros(52))
    chin = _chin(head, rest)
    opened = head.vertices(blendshape_vector({"jawOpen": 1.0}))
    assert (opened[chin, 1] - rest[chin, 1]).mean() < -0.01
    mouth_y = -0.03
    for name, side in (("mouthSmileLeft", 1.0), ("mouthSmileRight", -1.0)):
        moved = head.vertices(blendshape_vector({name: 1.0}))
        corner = np.argmin(np.hypot(rest[:, 0] - side * 0.023, rest[:, 1] - mouth_y)
                           + 1.0 * ~head.face_vertex_mask)
        assert moved[corner, 1] - rest[corner, 1] > 0.003
        assert np.abs(moved[:, 0] * side).max() > 0     # the mirrored side is the other one
    for weights in ({"browInnerUp": 1.0}, {"browOuterUpLeft": 1.0}, {"eyeBlinkLeft": 1.0},
                    {"mouthPucker": 1.0}, {"cheekPuff": 1.0}, {"mouthFrownRight": 1.0}):
        assert np.abs(head.vertices(blendshape_vector(weights)) - rest).max() > 0.003, weights
    blink = head.vertices(blendshape_vector({"eyeBlinkLeft": 1.0}))
    left = rest[:, 0] > 0
    assert np.abs(blink - rest)[left].max() > 5 * np.abs(blink - rest)[~left].max() + 1e-9


def test_procedural_identity_from_seed() -> None:
    a, b, c = ProceduralHead(seed=1), ProceduralHead(seed=1), ProceduralHead(seed=2)
    z = np.zeros(52)
    np.testing.assert_array_equal(a.vertices(z), b.vertices(z))
    np.testing.assert_array_equal(a.vertex_colors, b.vertex_colors)
    assert np.abs(a.vertices(z) - c.vertices(z)).max() > 0.001
    assert isinstance(a, FaceSurface)


def test_procedural_colours(head: ProceduralHead) -> None:
    col = head.vertex_colors
    assert col.shape == (len(head.vertices(np.zeros(52))), 3)
    assert 0.0 <= col.min() and col.max() <= 1.0
    assert (col.min(axis=1) > 0.85).any() and (col.max(axis=1) < 0.1).any()   # sclera, pupil
    lips = col[head.face_vertex_mask & (np.abs(head.vertices(np.zeros(52))[:, 1] + 0.0245) < 0.002)
               & (np.abs(head.vertices(np.zeros(52))[:, 0]) < 0.01)]
    assert (lips[:, 0] - lips[:, 1]).mean() > (col[:, 0] - col[:, 1]).mean()  # redder lips


def test_facemodel_import_ict_command(tmp_path: Path, library: Path) -> None:
    from facestudio.cli.main import main

    _fake_facekit(tmp_path)
    assert main(["facemodel", "import-ict", str(tmp_path)]) == 0   # the checkout, not FaceXModel
    out = library / "facemodels" / "ict_facekit.npz"
    with np.load(out) as d:
        assert d["identity_basis"].shape == (3, 5, 3)
    assert main(["facemodel", "import-ict", str(tmp_path / "missing")]) == 2

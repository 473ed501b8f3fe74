"""The mouth behind a fused scan's closed lips: torn-seam detection, the avatar's layout (scan
first, interior appended, moved by the same field), the frame file with and without it, and the
face model's interior fitted to a person."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facestudio.models.mouth_interior import MouthInterior, avatar, torn
from facestudio.models.template_frame import TemplateFrame, load_frame, save_frame
from test_deformation import BOX, FACE_MODEL, _affine_field

ROTATION = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)   # 90 deg about z


def _strip(n: int = 6, step: float = 0.002) -> tuple[np.ndarray, np.ndarray]:
    """Two rows of vertices (upper and lower lip) joined by 2 (n - 1) triangles, 2 mm apart."""
    x = np.arange(n) * step
    vertices = np.concatenate([np.stack([x, np.full(n, step), np.zeros(n)], 1),
                               np.stack([x, np.zeros(n), np.zeros(n)], 1)]).astype(np.float32)
    triangles = [(i, i + 1, n + i) for i in range(n - 1)] + [(i + 1, n + i + 1, n + i) for i in range(n - 1)]
    return vertices, np.asarray(triangles, np.int32)


def _interior() -> MouthInterior:
    vertices = np.array([[0.0, 0.0, -0.01], [0.01, 0.0, -0.01], [0.0, 0.01, -0.01]], np.float32)
    return MouthInterior(vertices, (vertices * 0.5).astype(np.float32), np.array([[0, 1, 2]], np.int32),
                         np.array([[240, 230, 200]] * 3, np.uint8))


def test_an_opened_seam_is_torn_and_skin_that_merely_stretches_is_not():
    vertices, triangles = _strip()
    assert not torn(vertices, vertices, triangles).any()                     # no motion, no tear
    stretched = vertices * np.array([1.4, 1.4, 1.0], np.float32)             # skin stretched by 40%
    assert not torn(vertices, stretched, triangles).any()
    opened = vertices.copy()
    opened[6:, 1] -= 0.012                                                   # the lower lip drops 12 mm
    assert torn(vertices, opened, triangles).all()
    # A small opening (1 mm) stretches the seam less than threefold: it stays closed.
    ajar = vertices.copy()
    ajar[6:, 1] -= 0.001
    assert not torn(vertices, ajar, triangles).any()
    # Hysteresis: a neighbour stretched twofold goes with a torn triangle; the same stretch apart does not.
    mm = np.array([[0, 0], [2, 0], [0, 2], [2, 2], [0, 4], [10, 0], [12, 0], [10, 2]], np.float32)
    three = np.concatenate([mm, np.zeros((8, 1), np.float32)], 1) / 1000
    tris = np.array([[0, 1, 2], [2, 3, 4], [5, 6, 7]], np.int32)     # the first two share vertex 2
    pulled = three.copy()
    pulled[0, 1] -= 0.010                                 # the first torn open (3.6x)
    pulled[[4, 7], 0] += 0.006                            # the second and third stretched 2.2x
    assert torn(three, pulled, tris).tolist() == [True, True, False]


def test_the_avatar_is_the_moved_scan_then_the_interior_moved_by_the_same_field():
    """With a frame, the interior is read at its template coordinates and turned into scan axes
    like the scan's vertices; the scan's vertices, colours and untorn triangles come first."""
    vertices, triangles = _strip()
    colors = np.full((len(vertices), 3), 150, np.uint8)
    coords = (vertices[::-1] * 0.5).astype(np.float32)
    interior = _interior()
    frame = TemplateFrame(coords, ROTATION, interior)
    matrix = np.diag([0.02, -0.01, 0.03])
    field = _affine_field(32, matrix, np.zeros(3))
    v, t, c = avatar((vertices, triangles, colors), field, BOX, frame)
    n = len(vertices)
    assert len(v) == n + 3 and np.array_equal(c[:n], colors) and np.array_equal(c[n:], interior.colors)
    np.testing.assert_allclose(v[:n] - vertices, (coords.astype(np.float64) @ matrix.T) @ ROTATION.T, atol=2e-7)
    np.testing.assert_allclose(v[n:] - interior.vertices, (interior.coords.astype(np.float64) @ matrix.T) @ ROTATION.T,
                               atol=2e-7)
    assert np.array_equal(t[:len(triangles)], triangles) and np.array_equal(t[len(triangles):], interior.triangles + n)
    # A field that pulls the lower row 12 mm down tears the seam: its triangles go, the interior stays.
    drop = np.zeros((3, 32, 32, 32), np.float32)
    drop[1, :, :16] = -0.012                                             # y below the box centre (lower half)
    lower_coords = frame.coords.copy()
    lower_coords[n // 2:, 1] = BOX.center[1] - 0.1                       # the lower lip lies in the lower half
    lower_coords[: n // 2, 1] = BOX.center[1] + 0.1
    import torch

    opened = TemplateFrame(lower_coords, np.eye(3, dtype=np.float32), interior)
    v, t, _ = avatar((vertices, triangles, colors), torch.from_numpy(drop), BOX, opened)
    assert len(t) == 1 and t[0].min() >= n                               # only the interior's triangle is left
    # Without a frame (head frame) or an interior (runs before it), the avatar is the moved scan alone.
    for bare in (None, TemplateFrame(coords, ROTATION)):
        v, t, c = avatar((vertices, triangles, colors), field, BOX, bare)
        assert len(v) == n and np.array_equal(t, triangles)


def test_a_frame_file_keeps_its_interior_and_older_frames_load_without_one(tmp_path):
    vertices, _ = _strip()
    interior = _interior()
    save_frame(tmp_path / "with.safetensors", TemplateFrame(vertices, ROTATION, interior))
    loaded = load_frame(tmp_path / "with.safetensors")
    for name in ("vertices", "coords", "triangles", "colors"):
        a, b = getattr(loaded.interior, name), getattr(interior, name)
        assert a.dtype == b.dtype and np.array_equal(a, b)
    save_frame(tmp_path / "old.safetensors", TemplateFrame(vertices, ROTATION))
    old = load_frame(tmp_path / "old.safetensors")
    assert old.interior is None and np.array_equal(old.coords, vertices)


@pytest.mark.skipif(not FACE_MODEL.is_file(), reason="needs ../shared/data/ict_facekit.npz (the ICT face model)")
def test_the_fitted_interior_sits_behind_the_persons_lips_and_opens_with_the_jaw():
    """Fitted to an ICT person's scan, the interior is that person's own teeth and mouth (the
    fitted identity, in the scan's frame), behind the lips; a rig-fitted jawOpen field moves the
    lower teeth down with the chin and tears the scan's lip seam, while a smile tears (almost)
    nothing."""
    from facestudio.faces.arkit import blendshape_vector
    from facestudio.faces.fit import SCAN_REGIONS, fit_ict, transfer
    from facestudio.faces.ict import IctFaceModel
    from facestudio.models.deformation import fit_field, vertex_normals
    from facestudio.models.mouth_interior import MOUTH_REGIONS
    from facestudio.models.template_frame import frame_of

    model = IctFaceModel.load(FACE_MODEL)
    identity = np.random.default_rng(4).normal(0, 0.7, model.num_identities).astype(np.float32)
    face = model.bind(identity)
    keep = model.region_mask(*SCAN_REGIONS)
    index = np.cumsum(keep) - 1
    tris = index[model.triangles_in(*SCAN_REGIONS)].astype(np.int32)
    scan = face.vertices(np.zeros(52))[keep]
    fit = fit_ict(model, scan, vertex_normals(scan, tris))
    frame = frame_of(fit, scan)
    inner = frame.interior
    true_inner = face.vertices(np.zeros(52))[model.region_mask(*MOUTH_REGIONS)]
    assert inner.vertices.shape == true_inner.shape and len(inner.triangles) > 1000
    assert np.linalg.norm(inner.vertices - true_inner, axis=1).mean() < 1e-3     # the person's own mouth, to 1 mm
    lips = scan[np.linalg.norm(scan[:, :2] - inner.vertices[:, :2].mean(0), axis=1) < 0.01]
    assert inner.vertices[:, 2].max() <= lips[:, 2].max()                      # behind the front of the lips

    rig_motion = lambda bs: np.concatenate([(transfer(fit, scan, bs) - scan) @ frame.rotation,  # noqa: E731
                                            (fit.vertices(bs) - fit.vertices(np.zeros(52)))[
                                                model.region_mask(*MOUTH_REGIONS)] @ fit.rotation])
    where = np.concatenate([frame.coords, inner.coords])
    colors = np.zeros((len(scan), 3), np.uint8)
    jaw = fit_field(where, rig_motion(blendshape_vector({"jawOpen": 0.8})), BOX)
    v, t, _ = avatar((scan, tris, colors), jaw, BOX, frame)
    drop = (v[len(scan):] - inner.vertices)[:, 1]
    low = inner.vertices[:, 1] < np.quantile(inner.vertices[:, 1], 0.2)
    assert drop[low].mean() < -0.008                                           # lower teeth down by ~1 cm
    torn_jaw = len(tris) + len(inner.triangles) - len(t)
    smile = fit_field(where, rig_motion(blendshape_vector({"mouthSmileLeft": 1, "mouthSmileRight": 1})), BOX)
    torn_smile = len(tris) + len(inner.triangles) - len(avatar((scan, tris, colors), smile, BOX, frame)[1])
    assert torn_jaw > 20 and torn_smile < 0.25 * torn_jaw, (torn_jaw, torn_smile)

"""Expressions as deformations of the neutral scan: field lookup, voxel shuffle, registration,
stage 1 on fields, the ICT fit of baseline (c)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from facestudio.models.autodecoder import voxel_shuffle
from facestudio.models.config import RegistrationConfig
from facestudio.models.deformation import (deform, identity_volume, register, sample_field, scan_volume,
                                           space_to_depth, surface_weight, vertex_normals)
from facestudio.models.render import Box

BOX = Box((0.0, 0.01, 0.03), 0.26)
FACE_MODEL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ict_facekit.npz"


def _affine_field(resolution: int, matrix: np.ndarray, offset: np.ndarray) -> torch.Tensor:
    """The field d(p) = A p + b sampled on the box's voxel centres (z, y, x order)."""
    lin = np.linspace(-BOX.size / 2, BOX.size / 2, resolution)
    z, y, x = np.meshgrid(lin + BOX.center[2], lin + BOX.center[1], lin + BOX.center[0], indexing="ij")
    p = np.stack([x, y, z], -1)
    d = p @ matrix.T + offset
    return torch.from_numpy(np.moveaxis(d, -1, 0).astype(np.float32))


def _sphere(radius: float = 0.08, center=(0.0, 0.01, 0.05)) -> tuple[np.ndarray, np.ndarray]:
    import open3d as o3d

    mesh = o3d.geometry.TriangleMesh.create_sphere(radius, resolution=40)
    mesh.translate(center)
    return np.asarray(mesh.vertices, np.float32), np.asarray(mesh.triangles, np.int32)


def test_a_known_field_moves_a_known_mesh_exactly():
    """Trilinear interpolation reproduces an affine field exactly, so every vertex lands where
    A v + b says - wherever it sits inside its voxel."""
    vertices, _ = _sphere()
    matrix = np.array([[0.01, 0.02, 0.0], [0.0, -0.03, 0.01], [0.02, 0.0, 0.015]])
    offset = np.array([0.002, -0.004, 0.001])
    moved = deform(vertices, _affine_field(32, matrix, offset), BOX)
    expected = vertices + vertices.astype(np.float64) @ matrix.T + offset
    np.testing.assert_allclose(moved, expected, atol=2e-7)
    # a constant field is a translation, at any resolution
    shift = deform(vertices, _affine_field(8, np.zeros((3, 3)), np.array([0.0, -0.01, 0.0])), BOX)
    np.testing.assert_allclose(shift - vertices, np.tile([0.0, -0.01, 0.0], (len(vertices), 1)), atol=1e-7)


def test_batched_field_lookup_matches_single():
    fields = torch.randn(2, 3, 8, 8, 8) * 0.01
    points = torch.rand(2, 50, 3) * 0.2 - 0.1
    batched = sample_field(fields, points, BOX)
    for b in range(2):
        torch.testing.assert_close(batched[b], sample_field(fields[b], points[b], BOX))


def test_voxel_shuffle_and_space_to_depth_are_inverse_and_local():
    x = torch.randn(5 * 8, 4, 4, 4)
    fine = voxel_shuffle(x[None], 2)[0]
    assert fine.shape == (5, 8, 8, 8)
    torch.testing.assert_close(space_to_depth(fine, 2), x)
    # output voxel (2i + a, 2j + b, 2k + c) comes from coarse voxel (i, j, k)
    coarse = torch.zeros(8, 4, 4, 4)
    coarse[:, 1, 2, 3] = 1.0
    hot = torch.nonzero(voxel_shuffle(coarse[None], 2)[0, 0])
    assert hot.min(0).values.tolist() == [2, 4, 6] and hot.max(0).values.tolist() == [3, 5, 7]


def test_registration_recovers_a_known_motion():
    """A sphere moved 6 mm down and 3 mm forward: the registered field moves the original onto
    the moved surface to a fraction of a millimetre and recovers the motion along the normals
    (a sphere's tangential sliding is unobservable to ICP: the geometry alone cannot pin it)."""
    from scipy.spatial import cKDTree

    vertices, triangles = _sphere()
    truth = np.array([0.0, -0.006, 0.003], np.float32)
    target = vertices + truth
    field = register(vertices, target, vertex_normals(target, triangles), BOX, 32,
                     RegistrationConfig(coarse_steps=40, fine_steps=60, points=1500))
    moved = deform(vertices, field, BOX)
    assert cKDTree(target).query(moved)[0].mean() < 5e-4
    normals = vertex_normals(vertices, triangles)
    normal_motion = np.einsum("nc,nc->n", moved - vertices, normals)
    assert np.abs(normal_motion - normals @ truth).mean() < 5e-4


def test_surface_weight_and_scan_volume():
    vertices, triangles = _sphere()
    weight = surface_weight(vertices, BOX, 32)
    assert weight.shape == (32, 32, 32) and weight.max() == 1.0 and weight.min() == pytest.approx(0.01)
    assert float((weight == 1.0).float().mean()) < 0.5   # a shell, not the box
    tsdf = scan_volume(vertices, triangles, BOX, 32)
    centre = np.round((np.array([0.0, 0.01, 0.05]) - (np.array(BOX.center) - BOX.size / 2))
                      / BOX.voxel_size(32)).astype(int)
    assert tsdf[0, centre[2], centre[1], centre[0]] == -1.0      # inside the sphere: truncated negative
    assert tsdf[0, 0, 0, 0] == 1.0                              # a box corner: far outside
    assert identity_volume(vertices, triangles, BOX, 8).shape == (64, 8, 8, 8)


@pytest.mark.skipif(not FACE_MODEL.is_file(), reason="needs ../shared/data/ict_facekit.npz (the ICT face model)")
def test_ict_fit_recovers_an_ict_identity():
    from facestudio.faces.fit import SCAN_REGIONS, fit_ict, transfer
    from facestudio.faces.ict import IctFaceModel

    model = IctFaceModel.load(FACE_MODEL)
    rng = np.random.default_rng(4)
    identity = rng.normal(0, 0.7, model.num_identities).astype(np.float32)
    face = model.bind(identity)
    scan = face.vertices(np.zeros(52))
    tris = model.triangles_in(*SCAN_REGIONS)
    fit = fit_ict(model, scan, vertex_normals(scan, tris))
    face_region = model.region_mask("narrow_face")
    err = np.linalg.norm(fit.vertices(np.zeros(52))[face_region] - scan[face_region], axis=1)
    assert err.mean() < 3e-4, err.mean()
    jaw = np.zeros(52, np.float32)
    from facestudio.faces.arkit import BLENDSHAPE_INDEX

    jaw[BLENDSHAPE_INDEX["jawOpen"]] = 0.8
    moved = transfer(fit, scan[face_region], jaw)
    truth = face.vertices(jaw)[face_region]
    assert np.linalg.norm(moved - truth, axis=1).mean() < 5e-4


def test_a_field_in_a_template_frame_is_read_at_its_coordinates_and_turned_into_scan_axes():
    """deform with a frame: the field is looked up at the frame's coordinates, not the vertices,
    and its displacement rotated by the frame (a constant field is then the rotated shift)."""
    from facestudio.models.template_frame import TemplateFrame

    vertices, _ = _sphere()
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)   # 90 deg about z
    coords = (vertices[::-1] * 0.5).astype(np.float32)                # any other places in the box
    frame = TemplateFrame(coords, rotation)
    shift = deform(vertices, _affine_field(8, np.zeros((3, 3)), np.array([0.01, 0.0, 0.0])), BOX, frame)
    np.testing.assert_allclose(shift - vertices, np.tile([0.0, 0.01, 0.0], (len(vertices), 1)), atol=1e-7)
    matrix = np.diag([0.02, -0.01, 0.03])
    moved = deform(vertices, _affine_field(32, matrix, np.zeros(3)), BOX, frame)
    np.testing.assert_allclose(moved - vertices, (coords.astype(np.float64) @ matrix.T) @ rotation.T, atol=2e-7)


@pytest.mark.skipif(not FACE_MODEL.is_file(), reason="needs ../shared/data/ict_facekit.npz (the ICT face model)")
def test_a_template_frame_field_carries_one_persons_jaw_opening_to_another():
    """The reason for the template frame: a jawOpen field fitted on one ICT identity moves another
    identity as its own rig does (ICT's expressions do not depend on the identity), where the
    same field in the head frame is off by several times more - and the open-jaw template separates the
    lips, so even the person's own jaw opening is reproduced far better than in the head frame."""
    from facestudio.faces.arkit import BLENDSHAPE_INDEX
    from facestudio.faces.fit import SCAN_REGIONS, fit_ict, transfer
    from facestudio.faces.ict import IctFaceModel
    from facestudio.models.deformation import fit_field
    from facestudio.models.template_frame import frame_of

    model = IctFaceModel.load(FACE_MODEL)
    tris = model.triangles_in(*SCAN_REGIONS)
    face = model.region_mask("narrow_face")
    jaw = np.zeros(52, np.float32)
    jaw[BLENDSHAPE_INDEX["jawOpen"]] = 0.8
    people = []
    for seed in (1, 2):
        identity = np.random.default_rng(seed).normal(0, 0.7, model.num_identities).astype(np.float32)
        scan = model.bind(identity).vertices(np.zeros(52))
        fit = fit_ict(model, scan, vertex_normals(scan, tris))
        people.append((scan, frame_of(fit, scan), transfer(fit, scan, jaw) - scan))
    (scan_a, frame_a, motion_a), (scan_b, frame_b, motion_b) = people
    head = fit_field(scan_a, motion_a, BOX)
    template = fit_field(frame_a.coords, motion_a @ frame_a.rotation, BOX)
    error = lambda moved, scan, motion: np.linalg.norm(moved - scan - motion, axis=1)[face].mean()  # noqa: E731
    carried = error(deform(scan_b, template, BOX, frame_b), scan_b, motion_b)
    assert carried < 3e-4
    assert error(deform(scan_b, head, BOX), scan_b, motion_b) > 3 * carried
    assert error(deform(scan_a, template, BOX, frame_a), scan_a, motion_a) < \
        0.5 * error(deform(scan_a, head, BOX), scan_a, motion_a)


@pytest.mark.skipif(not FACE_MODEL.is_file(), reason="needs ../shared/data/ict_facekit.npz (the ICT face model)")
def test_eval_frame_reports_each_frames_ceiling_and_transfer(capsys):
    import json

    from facestudio.cli.main import main

    assert main(["eval", "frame", "--identities", "2", "--face-model", str(FACE_MODEL), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    mean = result["mean"]
    assert result["pairs"] == 16 and set(result["per_expression"]) >= {"jaw_open", "smile"}
    assert mean["template_jaw_open_other_mm"] < 0.5 * mean["head_other_mm"]
    assert result["per_expression"]["jaw_open"]["template_jaw_open_own_mm"] < \
        result["per_expression"]["jaw_open"]["template_neutral_own_mm"]
    assert main(["eval", "frame", "--identities", "1", "--face-model", str(FACE_MODEL)]) != 0
    assert "--identities must be >= 2" in capsys.readouterr().err


@pytest.mark.skipif(not FACE_MODEL.is_file(), reason="needs ../shared/data/ict_facekit.npz (the ICT face model)")
def test_eyeballs_pushed_back_in_the_template_let_a_field_close_the_eyelids():
    """A closing upper lid slides a millimetre in front of the eyeball: read at the template's own
    eyeballs, one grid cell holds both and the lid stays half open; with the template's eyeballs
    2 cm back (the presets' chart) the field moves the lid as the rig does and leaves the eyeball."""
    from facestudio.faces.arkit import BLENDSHAPE_INDEX
    from facestudio.faces.fit import SCAN_REGIONS, fit_ict, transfer
    from facestudio.faces.ict import IctFaceModel
    from facestudio.models.deformation import fit_field
    from facestudio.models.template_frame import EYEBALLS, frame_of, template_vertices

    model = IctFaceModel.load(FACE_MODEL)
    pushed = template_vertices(model, eyeballs_back_m=0.02) - template_vertices(model)
    eyeballs = model.region_mask(*EYEBALLS)
    np.testing.assert_allclose(pushed[eyeballs], np.tile([0, 0, -0.02], (eyeballs.sum(), 1)), atol=1e-6)
    assert not pushed[~eyeballs].any()

    blink = np.zeros(52, np.float32)
    blink[[BLENDSHAPE_INDEX["eyeBlinkLeft"], BLENDSHAPE_INDEX["eyeBlinkRight"]]] = 0.9
    identity = np.random.default_rng(3).normal(0, 0.7, model.num_identities).astype(np.float32)
    tris = model.triangles_in(*SCAN_REGIONS)
    keep = np.unique(tris)
    scan = model.bind(identity).vertices(np.zeros(52))[keep]
    remap = np.full(model.num_vertices, -1)
    remap[keep] = np.arange(len(keep))
    fit = fit_ict(model, scan, vertex_normals(scan, remap[tris]))
    motion = transfer(fit, scan, blink) - scan
    lids = np.linalg.norm(motion, axis=1) > 2e-3                 # the lids' margins move centimetres
    errors = []
    for back in (0.0, 0.02):
        frame = frame_of(fit, scan, eyeballs_back_m=back)
        field = fit_field(frame.coords, motion @ frame.rotation, BOX)
        errors.append(np.linalg.norm(deform(scan, field, BOX, frame) - scan - motion, axis=1))
    assert lids.sum() > 50
    assert errors[1][lids].mean() < 0.4 * errors[0][lids].mean()     # measured 2.5 -> 0.7 mm
    assert errors[1][eyeballs[keep]].mean() < 1e-4                # the eyeball stays where it is

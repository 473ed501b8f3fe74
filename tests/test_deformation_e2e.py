"""A deformation model end to end: synthetic segments -> stage 1 (registered fields) -> stage 2
-> the person's own fused scan moved by the generated expression; and the errors a user meets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facestudio.models.config import AutodecoderConfig, ModelConfig, RegistrationConfig, TrainConfig


FACE_MODEL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ict_facekit.npz"
pytestmark = pytest.mark.skipif(not FACE_MODEL.is_file(), reason="needs ../shared/data/ict_facekit.npz (the rig "
                                "that registers an opened jaw, and the faces)")


def _segments(root: Path) -> tuple[Path, Path, np.ndarray]:
    """ICT identity 0: its neutral and its jaw-open segment (with the weights)."""
    from facestudio.capture.virtual.source import SyntheticFaceSource
    from facestudio.models.synthetic_segments import write_synthetic_segment

    source = SyntheticFaceSource.create(str(FACE_MODEL), seed=0)
    segments = source.truth()["segments"]
    jaw = next(k for k, s in enumerate(segments) if s["label"] == "jaw_open")
    neutral = write_synthetic_segment(source, 0, root, None, views=10, image_size=48).train
    opened = write_synthetic_segment(source, jaw, root, None, views=10, image_size=48).train
    return neutral, opened, np.asarray(segments[jaw]["blendshapes"], np.float32)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from facestudio.models.train_autodecoder import train_autodecoder
    from facestudio.models.train_diffusion import train_diffusion
    from test_generation import small_diffusion

    root = tmp_path_factory.mktemp("deform")
    neutral, opened, weights = _segments(root / "train")
    cfg = AutodecoderConfig(
        preset="test", model=ModelConfig(embedding_dim=16, channels=[32, 16, 16], attention_resolutions=[8],
                                         output="deformation", output_shuffle=2),
        train=TrainConfig(objects_per_batch=2, lr=2e-3, embedding_lr=2e-2, log_every=10, checkpoint_every=1000),
        registration=RegistrationConfig(face_model=str(FACE_MODEL), template_frame=True, eyeballs_back_m=0.02)
    ).validate()
    train_autodecoder([neutral, opened], root / "autodecoder", cfg, "cpu", 300)
    train_diffusion(root / "autodecoder", root / "diffusion", small_diffusion(), "cpu", 4)
    return root, neutral, opened, weights


def test_jaw_open_moves_the_persons_own_scan_down_at_the_chin(runs):
    from facestudio.generation.generate import Generator
    from facestudio.models.deformation_targets import load_scan

    root, neutral, _, weights = runs
    gen = Generator(root / "diffusion")
    scan_v, scan_t, scan_c = load_scan(neutral)
    n = len(scan_v)
    vertices, triangles, colors = gen.generate(neutral, weights, quality="final")
    interior = gen.person_frame(neutral).interior
    # The scan's vertices and colours first, then the face model's mouth interior behind the lips.
    assert len(vertices) == n + len(interior.vertices) and np.array_equal(colors[:n], scan_c)
    skin = triangles[(triangles < n).all(axis=1)]
    assert len(skin) + len(interior.triangles) == len(triangles)           # nothing joins the two
    assert {tuple(t) for t in skin} <= {tuple(t) for t in scan_t}          # the scan's own triangles ...
    assert 0 < len(scan_t) - len(skin) < 0.01 * len(scan_t)                # ... less the lip seam torn open
    # The chin: the scan's lowest front vertices; the jaw opens by ~1-2 cm there.
    front = scan_v[:, 2] > np.quantile(scan_v[:, 2], 0.5)
    chin = front & (scan_v[:, 1] < np.quantile(scan_v[front, 1], 0.05))
    forehead = front & (scan_v[:, 1] > np.quantile(scan_v[front, 1], 0.9))
    drop = (vertices[:n] - scan_v)[:, 1]
    assert drop[chin].mean() < -0.004, drop[chin].mean()               # the chin goes down by millimetres
    assert abs(drop[forehead].mean()) < 0.3 * abs(drop[chin].mean())   # the forehead stays
    # The lower teeth and tongue go down with the jaw; the upper teeth stay nearly put.
    inner = interior.vertices
    lower, upper = inner[:, 1] < np.quantile(inner[:, 1], 0.2), inner[:, 1] > np.quantile(inner[:, 1], 0.8)
    inner_drop = (vertices[n:] - inner)[:, 1]
    assert inner_drop[lower].mean() < -0.004 and inner_drop[lower].mean() < 2 * inner_drop[upper].mean()
    # The neutral expression gives exactly the scan (the anchored field is zero) and tears nothing.
    same, same_t, _ = gen.generate(neutral, np.zeros(52, np.float32), quality="preview")
    np.testing.assert_allclose(same[:n], scan_v, atol=1e-6)
    assert np.array_equal(same_t[:len(scan_t)], scan_t) and len(same_t) == len(scan_t) + len(interior.triangles)


def test_stage1_reconstruction_scores_registered_and_decoded_fields(runs):
    """The ceilings `eval expression` reports: the registered targets and what the decoder makes of
    them, both applied to the neutral scan and scored against the exact expression mesh."""
    from facestudio.generation.evaluate import stage1_reconstruction
    from facestudio.models.train_autodecoder import load_trained

    trained = load_trained(runs[0] / "autodecoder")
    registered, decoded = stage1_reconstruction(trained, registered=True), stage1_reconstruction(trained)
    assert registered["segments"] == decoded["segments"] == 1      # the jaw-open segment vs its neutral
    assert registered["true_motion_mm"] > 0.5, registered             # mean over the whole face
    assert registered["autodecoder_expression_mm"] < 0.6 * registered["neutral_expression_mm"], registered
    assert decoded["autodecoder_expression_mm"] < registered["neutral_expression_mm"], decoded


def test_a_person_without_a_neutral_segment_is_refused_clearly(runs, tmp_path):
    """A new person given by an expression segment: there is no neutral scan to move."""
    import shutil

    from facestudio.generation.generate import Generator

    root, _, opened, weights = runs
    stranger = shutil.copytree(opened, tmp_path / "someone" / "take" / opened.name)
    gen = Generator(root / "diffusion")
    with pytest.raises(ValueError, match="not a neutral face"):
        gen.generate(stranger, weights)
    # a training segment stands for its person, whose neutral the model knows
    assert len(gen.generate(opened, weights, quality="preview")[0]) == \
        len(gen.person_scan(opened)[0]) + len(gen.person_frame(opened).interior.vertices)


def test_training_a_subject_without_neutral_is_refused_before_registration(runs, tmp_path):
    from facestudio.models.train_autodecoder import train_autodecoder

    root, _, opened, _ = runs
    cfg = AutodecoderConfig(preset="test", model=ModelConfig(channels=[32, 16, 16], attention_resolutions=[8],
                                                             output="deformation")).validate()
    with pytest.raises(ValueError, match="neutral"):
        train_autodecoder([opened], tmp_path / "ad", cfg, "cpu", 1)


def test_bench_generate_times_a_new_person_and_meshes_at_the_scans_resolution(runs, capsys):
    import json

    from facestudio.cli.main import main
    from facestudio.models.deformation_targets import load_scan

    root, neutral, _, _ = runs
    assert main(["bench", "generate", "--model", str(root / "diffusion"), "--repeats", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    vertices = len(load_scan(neutral)[0]) + result["new_person"]["interior_vertices"]
    assert result["new_person"]["scan_vertices"] == len(load_scan(neutral)[0]) and result["new_person"]["seconds"] > 0
    assert result["new_person"]["interior_vertices"] > 1000                     # teeth, gums, tongue, mouth
    assert result["preview"]["vertices"] == result["final"]["vertices"] == vertices


def test_a_new_persons_scan_is_fitted_into_the_template_frame_as_training_subjects_are(runs, tmp_path):
    """A person the model never saw gets their template frame from a face-model fit of their
    scan: the same scan in a new folder generates the same mesh as the training subject."""
    import shutil

    from facestudio.dataset.segment import MESH_FILE, SEGMENT_FILE, Segment
    from facestudio.generation.generate import Generator
    from facestudio.models.deformation_targets import load_scan

    root, neutral, _, weights = runs
    person = tmp_path / neutral.name
    person.mkdir()
    for name in (SEGMENT_FILE, MESH_FILE):
        shutil.copy2(neutral / name, person / name)
    gen = Generator(root / "diffusion")
    known = gen.generate(Segment(neutral).info.subject, weights, quality="final")
    new = gen.generate(str(person), weights, quality="final")
    frame = gen.person_frame(str(person))
    assert frame is not None and frame.coords.shape == (len(new[0]) - len(frame.interior.vertices), 3)
    np.testing.assert_allclose(new[0], known[0], atol=2e-5)
    scan = load_scan(neutral)[0]
    assert np.abs(new[0][:len(scan)] - scan).max() > 1e-3        # and it does move the scan


def test_a_training_subjects_neutral_fused_again_after_training_is_fitted_anew(runs, monkeypatch):
    """The run stores each training subject's template frame for the scan it trained on; when the
    Library's neutral scan has changed since (fused again: another vertex count), generation fits
    the face model to the scan it now finds instead of failing on the stored frame."""
    import facestudio.models.deformation_targets as targets
    from facestudio.dataset.segment import Segment
    from facestudio.generation.generate import Generator

    root, neutral, _, weights = runs
    vertices, triangles, colors = targets.load_scan(neutral)
    keep = np.all(triangles < len(vertices) - 50, axis=1)          # the last 50 vertices dropped
    fused_again = (vertices[:-50], triangles[keep], colors[:-50])
    original = targets.load_scan
    monkeypatch.setattr(targets, "load_scan", lambda path: fused_again if Path(path) == neutral else original(path))
    gen = Generator(root / "diffusion")
    moved = gen.generate(Segment(neutral).info.subject, weights, quality="final")[0][:len(vertices) - 50]
    assert len(gen.person_frame(Segment(neutral).info.subject).coords) == len(moved)
    assert np.abs(moved - fused_again[0]).max() > 1e-3

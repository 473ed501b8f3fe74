"""Stage 1: renderer against closed form, gradients, overfitting, exact resume, shapes, configs, meshes."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from facestudio.models.autodecoder import Autodecoder
from facestudio.models.config import (AutodecoderConfig, ModelConfig, RenderConfig, TrainConfig, config_from_toml,
                                      load_config, paper, paper_radiance, save_config, tiny, tiny_radiance)
from facestudio.models.geometry import DensityGeometry, SdfGeometry, eikonal_loss, sphere_prior
from facestudio.models.mesh import grid_to_mesh
from facestudio.models.render import Box, make_rays, render_rays


def small_config(geometry: str = "sdf", **train: object) -> AutodecoderConfig:
    """Smaller than `tiny` (whose distance grid it shares by default), so each step takes milliseconds."""
    return AutodecoderConfig(
        preset="test", model=ModelConfig(embedding_dim=16, channels=[32, 16, 16, 8], attention_resolutions=[8],
                                         geometry=geometry),
        render=RenderConfig(image_size=32, samples_per_ray=24),
        train=replace(TrainConfig(objects_per_batch=2, views_per_object=2, log_every=1, checkpoint_every=1000),
                      **train)).validate()


@pytest.fixture(scope="module")
def segments(tmp_path_factory) -> list[Path]:
    from facestudio.models.synthetic_segments import make_synthetic_segments

    root = tmp_path_factory.mktemp("segments")
    made = make_synthetic_segments(root / "train", 2, None, root / "heldout", views=8, heldout_views=2,
                                   image_size=64)
    return [s.train for s in made]


# ---------------------------------------------------------------------- renderer

class RawSigma(DensityGeometry):
    """The raw channel is sigma itself (1/m): closed forms need no activation."""

    def sigma(self, raw: torch.Tensor, voxel_size: float) -> torch.Tensor:
        return raw


def _camera_rays(dx: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One ray from (0, 0, 2) with camera-frame direction (dx, 0, -1), via make_rays."""
    K = torch.tensor([[[1.0, 0.0, -dx], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    pose = torch.eye(4, dtype=torch.float64)[None].clone()
    pose[0, 2, 3] = 2.0
    return make_rays(K, pose, 1, 1)


@pytest.mark.parametrize("sigma,dx", [(1.0, 0.0), (3.0, 0.0), (2.0, 0.15)])
def test_renderer_matches_closed_form_for_a_constant_density_slab(sigma, dx):
    # The unit box around the origin filled with constant sigma: a slab of thickness 1 along z.
    box = Box((0.0, 0.0, 0.0), 1.0)
    grid = torch.zeros(1, 4, 5, 5, 5, dtype=torch.float64)
    grid[:, 0] = sigma
    origins, dirs = _camera_rays(dx)
    out = render_rays(grid, origins, dirs, box, samples=512, stratified=False, geometry=RawSigma())
    length = math.sqrt(1 + dx * dx)            # metric path length through the slab
    assert out["opacity"].item() == pytest.approx(1 - math.exp(-sigma * length), rel=1e-4)
    # Expected ray parameter given absorption: near + E[s | s < L] in t units (|dir| = length).
    a = sigma * length                          # optical thickness in t units of length 1
    expected = 1.5 + 1 / a - math.exp(-a) / (1 - math.exp(-a))
    assert out["depth"].item() == pytest.approx(expected, abs=1e-3)


def test_rays_missing_the_box_are_transparent_and_show_the_background():
    box = Box((0.0, 0.0, 0.0), 1.0)
    grid = torch.full((1, 4, 4, 4, 4), 5.0, dtype=torch.float64)
    origins, dirs = _camera_rays(1.0)          # 45 degrees: passes beside the box
    bg = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)
    out = render_rays(grid, origins, dirs, box, 16, False, bg, geometry=RawSigma())
    assert out["opacity"].item() == 0.0
    assert torch.allclose(out["rgb"][0, 0], bg)


def _plane_grid(surface_z: float, box: Box, r: int = 17) -> torch.Tensor:
    """A distance grid (voxel units, negative inside) of the half-space z < surface_z."""
    lin = torch.linspace(box.center[2] - box.size / 2, box.center[2] + box.size / 2, r, dtype=torch.float64)
    grid = torch.zeros(1, 4, r, r, r, dtype=torch.float64)
    grid[0, 0] = ((lin - surface_z) / box.voxel_size(r))[:, None, None]
    return grid


@pytest.mark.parametrize("sharpness,dx", [(2.0, 0.0), (8.0, 0.0), (4.0, 0.2)])
def test_distance_grid_renders_its_zero_crossing_unbiased(sharpness, dx):
    # NeuS opacity: a plane's weights are a logistic density centred on the surface, so the
    # expected depth is the surface itself, at any sharpness and ray angle (Wang et al. 2021).
    box = Box((0.0, 0.0, 0.0), 1.0)
    origins, dirs = _camera_rays(dx)
    out = render_rays(_plane_grid(0.1, box), origins, dirs, box, samples=1024, stratified=False,
                      geometry=SdfGeometry(sharpness).double())
    assert out["opacity"].item() == pytest.approx(1.0, abs=1e-4)
    assert out["depth"].item() == pytest.approx(2.0 - 0.1, abs=1e-3)   # the camera sits at z = 2


def test_eikonal_loss_is_zero_for_a_distance_field_and_not_for_a_scaled_one():
    box = Box((0.0, 0.0, 0.0), 1.0)
    plane = _plane_grid(0.1, box)
    assert eikonal_loss(plane).item() == pytest.approx(0.0, abs=1e-6)
    assert eikonal_loss(plane * 3).item() == pytest.approx(4.0, rel=1e-3)       # (|3| - 1)^2
    assert eikonal_loss(sphere_prior(33)[None, None]).item() < 0.01


# ---------------------------------------------------------------------- model

@pytest.mark.parametrize("geometry", ["density", "sdf"])
def test_gradients_reach_the_embedding(geometry):
    cfg = small_config(geometry)
    model = Autodecoder(cfg.model, 3)
    grid = model(torch.tensor([1]))
    K = torch.tensor([[[20.0, 0, 7.5], [0, 20.0, 7.5], [0, 0, 1]]])
    pose = torch.eye(4)[None].clone()
    pose[0, :3, 3] = torch.tensor([0.0, 0.01, 0.5])
    origins, dirs = make_rays(K, pose, 16, 16)
    out = render_rays(grid, origins, dirs, Box((0.0, 0.01, 0.03), 0.26), 16, True, geometry=model.geometry)
    (out["rgb"].mean() + out["opacity"].mean()).backward()
    grad = model.embeddings.weight.grad
    assert grad[1].abs().sum() > 0 and grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0
    if geometry == "sdf":   # the sharpness learns too
        assert model.geometry.log_sharpness.grad.abs() > 0


def test_a_distance_grid_starts_as_a_sphere_in_front_of_the_cameras():
    cfg = small_config()
    model = Autodecoder(cfg.model, 1)
    grid = model(torch.tensor([0]))[0].detach()
    r = grid.shape[-1]
    assert grid[0, r // 2, r // 2, r // 2] < 0 < grid[0, 0, 0, 0]      # inside at the centre, outside at a corner
    verts, _, _ = grid_to_mesh(grid, Box((0.0, 0.0, 0.0), 1.0), geometry=model.geometry)
    assert np.linalg.norm(verts, axis=1).mean() == pytest.approx(0.35, abs=0.05)   # 0.7 half-box sizes


@pytest.mark.parametrize("preset, channels, out", [(tiny, 16, (3, 32)), (tiny_radiance, 64, (4, 32))])
def test_g1_g2_shapes_tiny(preset, channels, out):
    cfg = preset().model
    model = Autodecoder(cfg, 2)
    latent = model.g1(model.embeddings.weight)
    assert latent.shape == (2, channels, 8, 8, 8) == (2, cfg.latent_channels, 8, 8, 8)
    c, r = out
    assert model.g2(latent).shape == (2, c, r, r, r)


def test_a_linear_field_decoder_decodes_sums_of_latents_to_sums_of_fields():
    """What stage 2 relies on: a linear combination of latents (its expression mean, the change
    sample(expression) - sample(neutral)) decodes to the same combination of fields."""
    cfg = tiny().model
    assert cfg.field_decoder == "linear"
    g2 = Autodecoder(cfg, 1).g2
    torch.manual_seed(0)
    a, b = torch.randn(2, 1, cfg.latent_channels, 8, 8, 8)
    with torch.no_grad():
        zero = g2(torch.zeros_like(a))
        combined = g2(0.3 * a - 2.0 * b)
        expected = 0.3 * (g2(a) - zero) - 2.0 * (g2(b) - zero) + zero
    assert combined.shape == (1, 3, 32, 32, 32)
    assert torch.allclose(combined, expected, atol=1e-4)
    assert (g2(a) - zero).abs().max() > 1e-3          # and it is not a constant


@pytest.mark.parametrize("text,needle", [
    ("[model]\nfield_decoder = 'mlp'\n", "model.field_decoder: must be one of conv, linear"),
    ("[model]\noutput = 'radiance'\nfield_decoder = 'linear'\n", "'linear' only for deformation fields"),
])
def test_a_bad_field_decoder_names_itself(tmp_path, text, needle):
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ValueError, match=needle):
        load_config(tmp_path / "c.toml")


@pytest.mark.parametrize("preset, channels", [(paper, 3), (paper_radiance, 4)])
def test_g1_g2_shapes_paper_on_the_meta_device(preset, channels):
    cfg = preset().model
    with torch.device("meta"):
        model = Autodecoder(cfg, 2)
        latent = model.g1(model.embeddings.weight)
        grid = model.g2(latent)
    assert cfg.embedding_dim == 1024 and model.g1.fc.in_features == 1024
    assert latent.shape == (2, 256, 8, 8, 8)
    assert grid.shape == (2, channels, 64, 64, 64)


# ---------------------------------------------------------------------- config

def test_config_toml_round_trip(tmp_path):
    for cfg in (tiny(), paper()):
        save_config(cfg, tmp_path / "c.toml")
        assert load_config(tmp_path / "c.toml") == cfg


@pytest.mark.parametrize("text,needle", [
    ("[model]\nchanels = [1, 2]\n", "model.chanels: unknown key"),
    ("[train]\nlr = 'fast'\n", "train.lr: expected float"),
    ("[model]\nlatent_resolution = 6\n", "model.latent_resolution"),
    ("[bogus]\n", "bogus: unknown key"),
])
def test_bad_config_names_the_key(text, needle):
    with pytest.raises(ValueError, match=needle):
        config_from_toml(text, AutodecoderConfig)


# ---------------------------------------------------------------------- meshes

def test_marching_cubes_on_a_sphere_gives_its_radius_and_outward_normals():
    box = Box((0.0, 0.01, 0.03), 0.26)
    r = 33
    lin = torch.linspace(-0.13, 0.13, r)
    z, y, x = torch.meshgrid(lin, lin, lin, indexing="ij")
    dist = torch.sqrt(x * x + y * y + z * z)
    raw = torch.zeros(4, r, r, r)
    raw[0] = (0.08 - dist) * 300            # softplus(0) = ln 2: voxel opacity 0.5 at r = 8 cm
    verts, tris, colors = grid_to_mesh(raw, box, 0.5)
    radius = np.linalg.norm(verts - np.asarray(box.center), axis=1)
    assert abs(radius.mean() - 0.08) < 0.001
    tri = verts[tris]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    outward = (normals * (tri.mean(axis=1) - np.asarray(box.center))).sum(axis=1)
    assert (outward > 0).mean() > 0.99
    assert colors.shape == verts.shape and colors.dtype == np.uint8


@pytest.mark.parametrize("threshold,radius", [(0.5, 0.08), (0.9, 0.08 - math.log(9) / 4 * 0.26 / 32)])
def test_marching_cubes_on_a_distance_grid_finds_its_occupancy_level(threshold, radius):
    box = Box((0.0, 0.01, 0.03), 0.26)
    lin = torch.linspace(-0.13, 0.13, 33)
    z, y, x = torch.meshgrid(lin, lin, lin, indexing="ij")
    raw = torch.zeros(4, 33, 33, 33)
    raw[0] = (torch.sqrt(x * x + y * y + z * z) - 0.08) / box.voxel_size(33)   # voxels to an 8 cm sphere
    verts, tris, _ = grid_to_mesh(raw, box, threshold, geometry=SdfGeometry(4.0))
    # sigmoid(-s d) = threshold  <=>  d = -logit(threshold) / s voxels: 0.5 is the zero crossing.
    assert np.linalg.norm(verts - np.asarray(box.center), axis=1).mean() == pytest.approx(radius, abs=3e-4)
    tri = verts[tris]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert ((normals * (tri.mean(axis=1) - np.asarray(box.center))).sum(axis=1) > 0).mean() > 0.99


# ---------------------------------------------------------------------- training

def _losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r.get("kind") == "train"}


@pytest.mark.parametrize("geometry", ["density", "sdf"])
def test_short_overfit_of_one_object_cuts_the_loss(segments, tmp_path, geometry):
    from facestudio.models.train_autodecoder import train_autodecoder

    cfg = small_config(geometry, objects_per_batch=1, views_per_object=4, embedding_lr=1e-2, lr=2e-3,
                       betas=[0.9, 0.999])
    cfg.model.channels = [32, 16, 16]          # a 16^3 grid: more steps per second
    train_autodecoder(segments[:1], tmp_path / "run", cfg, "cpu", 150)
    losses = _losses(tmp_path / "run")
    first, last = np.mean([losses[s] for s in range(1, 6)]), np.mean([losses[s] for s in range(146, 151)])
    assert last < first / 4, (first, last)
    assert (tmp_path / "run" / "latent_stats.safetensors").exists()


def test_resume_gives_the_same_next_step_loss(segments, tmp_path):
    from facestudio.models.train_autodecoder import train_autodecoder

    cfg = small_config()
    train_autodecoder(segments, tmp_path / "straight", cfg, "cpu", 5)
    train_autodecoder(segments, tmp_path / "resumed", cfg, "cpu", 3)
    train_autodecoder(None, tmp_path / "resumed", None, "cpu", 5, resume=True)
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert sorted(resumed) == [1, 2, 3, 4, 5]
    assert resumed[4] == straight[4] and resumed[5] == straight[5]


def test_stop_event_ends_after_the_current_step_with_a_checkpoint(segments, tmp_path):
    import threading

    from facestudio.models.runs import Run
    from facestudio.models.train_autodecoder import train_autodecoder

    stop = threading.Event()
    summary = train_autodecoder(segments, tmp_path / "run", small_config(), "cpu", 100,
                                progress_cb=lambda p: stop.set() if p["step"] == 2 else None, stop_event=stop)
    assert summary["step"] == 2 and summary["stopped_early"]
    assert Run.open(tmp_path / "run").load_checkpoint().step == 2


def test_mesh_render_and_encode_from_a_run(segments, tmp_path):
    from facestudio.cli.main import main
    from facestudio.models.mesh import extract_mesh
    from facestudio.models.train_autodecoder import train_autodecoder

    run = tmp_path / "run"
    train_autodecoder(segments[:1], run, small_config(objects_per_batch=1, embedding_lr=1e-2, lr=2e-3), "cpu", 40)
    verts, tris, colors = extract_mesh(run, 0, threshold=0.2)
    assert len(verts) > 100 and tris.max() < len(verts) and colors.shape == verts.shape
    assert np.all(np.abs(verts - np.array([0.0, 0.01, 0.03])) <= 0.13 + 1e-6)
    assert main(["render", "0", str(tmp_path / "png"), "--model", str(run), "--views", "2", "--size", "32"]) == 0
    assert len(list((tmp_path / "png").glob("*.png"))) == 2
    assert main(["encode", str(segments[1]), "--model", str(run), "--seconds", "3"]) == 0
    assert len(list((run / "encoded").glob("*.safetensors"))) == 1


def test_perceptual_loss_loads_vgg19_weights_from_a_file_and_is_off_without(tmp_path, caplog):
    import logging

    from safetensors.torch import save_file

    from facestudio.models.config import LossConfig
    from facestudio.models.losses import AutodecoderLoss, VGG19Features

    with caplog.at_level(logging.INFO):
        assert AutodecoderLoss(LossConfig()).vgg is None
    assert "perceptual loss off" in caplog.text
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in VGG19Features().state_dict().items() if k.startswith("features.")},
              str(tmp_path / "vgg19.safetensors"))
    loss_fn = AutodecoderLoss(LossConfig(vgg19_weights=str(tmp_path / "vgg19.safetensors")))
    assert loss_fn.vgg is not None
    out = {"rgb": torch.rand(2, 32, 32, 3), "opacity": torch.rand(2, 32, 32), "depth": torch.rand(2, 32, 32)}
    total, terms = loss_fn(out, torch.rand(2, 32, 32, 3), torch.ones(2, 32, 32, dtype=torch.bool),
                           torch.rand(2, 32, 32), 0.26)
    assert terms["perceptual"] > 0 and torch.isfinite(total)
    save_file({"features.0.weight": torch.zeros(64, 3, 3, 3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="not a VGG-19"):
        AutodecoderLoss(LossConfig(vgg19_weights=str(tmp_path / "bad.safetensors")))


def test_cli_trains_from_a_toml_config_and_resumes(segments, tmp_path, library):
    from facestudio.cli.main import main

    save_config(small_config(), tmp_path / "small.toml")
    seg_root = segments[0].parents[2]
    assert main(["train", "autodecoder", "--config", str(tmp_path / "small.toml"), "--segments", str(seg_root),
                 "--max-steps", "2", "--device", "cpu", "--json"]) == 0
    (run,) = (library / "models" / "autodecoder").iterdir()
    assert load_config(run / "config.toml") == small_config()
    assert main(["train", "autodecoder", "--resume", run.name, "--max-steps", "3", "--json"]) == 0
    assert sorted(_losses(run)) == [1, 2, 3]
    assert main(["train", "autodecoder", "--config", "nope", "--json"]) == 2

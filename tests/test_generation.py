"""Stage 2 in use: diffusion training/resume, the Generator (CFG, determinism, smoothness), presets,
and a tiny end-to-end run (synthetic segments -> both stages -> generate -> PLY read back)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from facestudio.models.config import AutodecoderConfig, ModelConfig, RenderConfig, TrainConfig
from facestudio.models.diffusion_config import DiffusionConfig, load_diffusion_config, paper, tiny


def small_diffusion(**train: object) -> DiffusionConfig:
    """Smaller than `tiny` so a step takes a fraction of a second; a low mesh level for barely trained grids."""
    cfg = tiny()
    u = cfg.denoiser.unet
    u.model_channels, u.head_channels, u.context_dim = 16, 16, 32
    cfg.denoiser.conditioning.expression_hidden, cfg.denoiser.conditioning.identity_channels = 16, 16
    cfg.train = replace(cfg.train, batch_size=2, log_every=1, checkpoint_every=1000, **train)
    cfg.sampling = replace(cfg.sampling, preview_steps=2, final_steps=3, threshold=0.2)
    return cfg.validate()


@pytest.fixture(scope="module")
def autodecoder_run(tmp_path_factory) -> Path:
    """Neutral + one expression of one procedural identity, decoder trained until a surface appears."""
    from facestudio.models.synthetic_segments import make_synthetic_segments
    from facestudio.models.train_autodecoder import train_autodecoder

    root = tmp_path_factory.mktemp("gen")
    made = make_synthetic_segments(root / "train", 2, None, None, views=6, image_size=48)
    cfg = AutodecoderConfig(
        preset="test", model=ModelConfig(embedding_dim=16, channels=[32, 16, 16, 8], attention_resolutions=[8]),
        render=RenderConfig(image_size=32, samples_per_ray=24),
        train=TrainConfig(objects_per_batch=2, views_per_object=2, lr=2e-3, embedding_lr=1e-2, log_every=5,
                          checkpoint_every=1000)).validate()
    train_autodecoder([m.train for m in made], root / "autodecoder", cfg, "cpu", 40)
    return root / "autodecoder"


@pytest.fixture(scope="module")
def diffusion_run(autodecoder_run: Path) -> Path:
    from facestudio.models.train_diffusion import train_diffusion

    run = autodecoder_run.parent / "diffusion"
    train_diffusion(autodecoder_run, run, small_diffusion(), "cpu", 4)
    return run


@pytest.fixture(scope="module")
def generator(diffusion_run: Path):
    from facestudio.generation.generate import Generator

    return Generator(diffusion_run)


def _losses(run: Path) -> dict[int, float]:
    from facestudio.models.runs import Run

    return {r["step"]: r["loss"] for r in Run(run).metrics() if r.get("kind") == "train"}


# ---------------------------------------------------------------------- config and presets

def test_config_presets_round_trip_and_bad_keys_are_named(tmp_path):
    from facestudio.models.config import save_config

    for cfg in (tiny(), paper()):
        save_config(cfg, tmp_path / "c.toml")
        assert load_diffusion_config(tmp_path / "c.toml") == cfg
    assert paper().denoiser.unet.model_channels == 192 and paper().sampling.guidance == 3.0
    (tmp_path / "bad.toml").write_text("[train]\nlrr = 1.0\n")
    with pytest.raises(ValueError, match="train.lrr: unknown key"):
        load_diffusion_config(tmp_path / "bad.toml")
    with pytest.raises(ValueError, match="neither a preset"):
        load_diffusion_config("nope")


def test_presets_load_and_unknown_names_fail_clearly():
    from facestudio.faces.arkit import BLENDSHAPE_INDEX
    from facestudio.generation.presets import expression_vector, load_preset, preset_names

    names = preset_names()
    assert {"smile", "surprise", "anger", "sadness", "disgust", "kiss", "wink", "jaw_open", "brows_up"} <= set(names)
    for name in names:
        load_preset(name)
    vec = expression_vector("jawOpen=0.3", "smile")
    assert vec[BLENDSHAPE_INDEX["mouthSmileLeft"]] == pytest.approx(0.9)
    assert vec[BLENDSHAPE_INDEX["jawOpen"]] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="available: .*smile"):
        load_preset("grin")
    with pytest.raises(ValueError, match="unknown ARKit blendshape 'jawOpn'; valid names: eyeBlinkLeft"):
        expression_vector("jawOpn=0.5")
    with pytest.raises(ValueError, match=r"not a weight in \[0, 1\]"):
        expression_vector("jawOpen=1.5")


def test_cli_rejects_unknown_blendshapes_before_loading_a_model(tmp_path, capsys):
    from facestudio.cli.main import main

    assert main(["generate", "--person", "x", "--expr", "smileBig=1", "--out", str(tmp_path / "f.ply"),
                 "--json"]) == 2
    err = json.loads(capsys.readouterr().out.splitlines()[0])["error"]
    assert "smileBig" in err and "mouthSmileLeft" in err


# ---------------------------------------------------------------------- training

def test_diffusion_resume_gives_the_same_next_step_loss(autodecoder_run, tmp_path):
    from facestudio.models.runs import Run
    from facestudio.models.train_diffusion import train_diffusion

    cfg = small_diffusion()
    train_diffusion(autodecoder_run, tmp_path / "straight", cfg, "cpu", 4)
    train_diffusion(autodecoder_run, tmp_path / "resumed", small_diffusion(), "cpu", 2)
    summary = train_diffusion(None, tmp_path / "resumed", None, "cpu", 4, resume=True)
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert sorted(resumed) == [1, 2, 3, 4] and summary["step"] == 4
    assert resumed[3] == straight[3] and resumed[4] == straight[4]
    names = json.loads((tmp_path / "resumed" / "segments.json").read_text())["names"]
    assert len(names) == 2
    # The weight average resumes too: both runs end with the same live and averaged weights.
    a, b = (Run(tmp_path / name).load_checkpoint().model for name in ("straight", "resumed"))
    assert a.keys() == b.keys() and any(k.startswith("ema.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_draws_sigma_from_the_configured_distribution(autodecoder_run, tmp_path, monkeypatch):
    from facestudio.models import denoiser
    from facestudio.models.train_diffusion import train_diffusion

    seen, real_loss = [], denoiser.edm_loss

    def recording_loss(*args, **kwargs):
        seen.append((kwargs["p_mean"], kwargs["p_std"]))
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(denoiser, "edm_loss", recording_loss)
    train_diffusion(autodecoder_run, tmp_path / "run", small_diffusion(p_mean=0.5, p_std=0.3), "cpu", 1)
    assert seen == [(0.5, 0.3)]


def test_init_from_starts_at_the_source_weights(autodecoder_run, diffusion_run, tmp_path):
    from facestudio.models.ema import inference_weights, live
    from facestudio.models.runs import Run
    from facestudio.models.train_diffusion import train_diffusion

    train_diffusion(autodecoder_run, tmp_path / "ft", small_diffusion(lr=1e-12), "cpu", 1, init_from=diffusion_run)
    src, ft = Run(diffusion_run).load_checkpoint().model, Run(tmp_path / "ft").load_checkpoint().model
    start = inference_weights(src)                                # a fine-tune starts from the average
    assert start.keys() == live(ft).keys() and all(torch.allclose(start[k], ft[k], atol=1e-6) for k in start)
    assert start["model.net.conv_out.weight"].abs().max() > 0      # trained away from its zero init


# ---------------------------------------------------------------------- generator

def test_cfg_weight_one_equals_the_conditional_model(generator):
    from facestudio.models.edm import heun_sample

    identity = generator.person_identity("synth000")
    bs = np.zeros(52, np.float32)
    bs[17] = 0.7
    ours = generator.sample(identity, bs, seed=3, steps=3, guidance=1.0)
    model, b = generator.model, torch.from_numpy(bs)[None]
    direct = heun_sample(lambda x, s: model(x, s, b, identity[None]), generator.noise(3), 3)[0]
    assert torch.equal(ours, direct)
    guided = generator.sample(identity, bs, seed=3, steps=3, guidance=3.0)
    assert not torch.equal(ours, guided)


def test_guidance_contrasts_with_the_identity_only_model_unless_configured(generator, monkeypatch):
    """sampling.guide_identity = false (the presets): guidance amplifies the expression alone,
    D = D(e, i) + (w - 1) (D(e, i) - D(-, i)); true: against the unconditional model D(-, -)."""
    from facestudio.models.edm import cfg_combine, heun_sample

    identity = generator.person_identity("synth000")
    bs = np.zeros(52, np.float32)
    bs[17] = 0.7
    model, b, i = generator.model, torch.from_numpy(bs)[None], identity[None]
    dropped = torch.ones(1, dtype=torch.bool)
    results = []
    for guide_identity, drop_identity in ((False, ~dropped), (True, dropped)):
        monkeypatch.setattr(generator.config.sampling, "guide_identity", guide_identity)
        expected = heun_sample(lambda x, s: cfg_combine(model(x, s, b, i), model(x, s, b, i, dropped, drop_identity),
                                                        2.0), generator.noise(3), 3)[0]
        results.append(generator.sample(identity, bs, seed=3, steps=3, guidance=2.0))
        # batched 2B vs one at a time: float32 sums in another order (latents of magnitude ~5)
        assert torch.allclose(results[-1], expected, atol=1e-3, rtol=1e-4), (results[-1] - expected).abs().max()
    assert (results[0] - results[1]).abs().max() > 1e-2


def test_the_person_is_anchored_and_the_neutral_sample_is_reused(generator, monkeypatch):
    identity = generator.person_identity("synth000")
    bs = np.zeros(52, np.float32)
    assert torch.equal(generator.latent(identity, bs, seed=2, steps=3), identity)   # neutral = the person
    bs[17] = 0.7
    expected = identity + generator.sample(identity, bs, 2, 3) - generator.sample(identity, 0 * bs, 2, 3)
    calls, real_sample = [], generator.model.sample
    monkeypatch.setattr(generator.model, "sample", lambda *a, **k: calls.append(1) or real_sample(*a, **k))
    assert torch.allclose(generator.latent(identity, bs, seed=2, steps=3), expected, atol=1e-6)
    assert len(calls) == 1                     # the neutral sample of this person, seed and steps is cached
    generator.latent(identity, bs, seed=4, steps=3)
    assert len(calls) == 3                     # another seed: its own neutral sample
    monkeypatch.setattr(generator.config.sampling, "anchor_to_person", False)
    assert torch.equal(generator.latent(identity, bs, seed=2, steps=3), generator.sample(identity, bs, 2, 3))


def test_generation_is_deterministic_and_nearby_expressions_give_nearby_latents(generator):
    identity = generator.person_identity("synth000")
    bs = np.zeros(52, np.float32)
    bs[17] = 0.5
    assert torch.equal(generator.latent(identity, bs, seed=0, steps=3), generator.latent(identity, bs, seed=0, steps=3))
    # The sampler is a smooth map of the expression (the anchored latent is a difference of two samples).
    a = generator.sample(identity, bs, seed=0, steps=3)
    near = bs.copy()
    near[17] = 0.52
    far_seed = generator.sample(identity, bs, seed=1, steps=3)
    assert (generator.sample(identity, near, seed=0, steps=3) - a).norm() < 0.1 * (far_seed - a).norm()


def test_tiny_end_to_end_generate_writes_a_valid_ply(diffusion_run, tmp_path, capsys):
    import open3d as o3d

    from facestudio.cli.main import main

    out = tmp_path / "face.ply"
    assert main(["generate", "--model", str(diffusion_run), "--person", "synth000", "--preset", "smile",
                 "--expr", "jawOpen=0.4", "--seed", "0", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["vertices"] > 100 and result["expression"]["jawOpen"] == pytest.approx(0.4)
    mesh = o3d.io.read_triangle_mesh(str(out))
    assert len(mesh.vertices) == result["vertices"] and len(mesh.triangles) > 100 and mesh.has_vertex_colors()
    tri = np.asarray(mesh.triangles)
    assert tri.max() < len(mesh.vertices)


def test_bench_generate_reports_both_qualities_with_the_first_call_apart(diffusion_run, capsys):
    from facestudio.cli.main import main

    assert main(["bench", "generate", "--model", str(diffusion_run), "--repeats", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    for quality, steps in (("preview", 2), ("final", 3)):
        q = result[quality]
        assert q["steps"] == steps and q["network_calls"] == 2 * steps - 1 and q["vertices"] > 0
        assert 0 < q["min_s"] <= q["median_s"] <= q["max_s"] and q["first_call_s"] > 0
        assert q["meets_goal"] == (q["median_s"] <= q["goal_s"])


def test_preview_and_final_quality_both_give_meshes(generator):
    bs = np.zeros(52, np.float32)
    for quality in ("preview", "final"):
        v, t, c = generator.generate("synth000", bs, seed=0, quality=quality)
        assert v.dtype == np.float32 and t.dtype == np.int32 and c.dtype == np.uint8
        # A barely trained model's surface is small, but it is a valid colored mesh.
        assert len(t) > 0 and 0 <= t.min() and t.max() < len(v) == len(c)
    with pytest.raises(ValueError, match="neither a subject"):
        generator.person_identity("nobody")


def test_a_radiance_model_has_no_scan_to_move(generator):
    with pytest.raises(ValueError, match="trained without deformation"):
        generator.person_scan(generator.data.subjects[0])


def test_unseen_neutral_segment_is_encoded_once_and_cached(diffusion_run, tmp_path):
    from facestudio.generation.generate import Generator
    from facestudio.models.synthetic_segments import make_synthetic_segments

    new = make_synthetic_segments(tmp_path / "new", 1, None, None, views=6, image_size=64)[0].train
    gen = Generator(diffusion_run, encode_seconds=5)
    first = gen.person_identity(new)
    assert first.shape == gen.data.latents.shape[1:]
    assert torch.equal(Generator(diffusion_run).person_identity(new), first)   # read back from the cache
    assert len(gen.generate(new, np.zeros(52, np.float32), quality="preview")[0]) > 0


@pytest.mark.slow
def test_synthetic_library_records_and_fuses_takes(library):
    from facestudio.generation.synth import build_synthetic_library

    result = build_synthetic_library(library, 1, 2, None, frames_per_take=60)
    assert result["identities"] == 1 and result["segments"] >= 1
    assert (library / "takes" / "synth0000" / "virtual").is_dir()

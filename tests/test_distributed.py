"""Multi-process training: 2 CPU processes (gloo, loopback) against one process with their union batch.

With DDP each rank draws its share of the global batch from its shard of the objects and the
gradients are averaged; the step must equal the single-process step on the union of the rank
batches, per-object embeddings included. Rendering samples and EDM noise come from per-rank
RNG streams, so for the comparison they are made a function of the object alone (midpoint ray
samples, noise seeded by the latent's index) and the single-process run replays the ranks' draws.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from facestudio.models.config import AutodecoderConfig, ModelConfig, RenderConfig, TrainConfig, save_config
from facestudio.models.diffusion_config import DiffusionConfig

WORLD = 2
STEPS = 3


def tiny_config(**train: Any) -> AutodecoderConfig:
    """Smaller than the other tests' configs: a 16^3 grid, 16 px views, one thread per process."""
    return AutodecoderConfig(
        preset="test", model=ModelConfig(embedding_dim=8, channels=[16, 8, 8], attention_resolutions=[8]),
        render=RenderConfig(image_size=16, samples_per_ray=12),
        train=replace(TrainConfig(objects_per_batch=2, views_per_object=2, lr=2e-3, embedding_lr=1e-2,
                                  log_every=1, checkpoint_every=1000, num_threads=1), **train)).validate()


def tiny_diffusion() -> DiffusionConfig:
    from facestudio.models.diffusion_config import tiny

    cfg = tiny()
    u = cfg.denoiser.unet
    u.model_channels, u.head_channels, u.context_dim = 8, 8, 16
    cfg.denoiser.conditioning.expression_hidden, cfg.denoiser.conditioning.identity_channels = 8, 8
    cfg.train = replace(cfg.train, batch_size=2, log_every=1, checkpoint_every=1000, num_threads=1,
                        drop_expression=0.0, drop_identity=0.0)
    return cfg.validate()


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """The single-process reference runs set one thread, as the ranks do; later tests get theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def segments(tmp_path_factory) -> list[Path]:
    """Four objects: two per rank's shard, so each rank has a choice to make."""
    from facestudio.models.synthetic_segments import make_synthetic_segments

    root = tmp_path_factory.mktemp("ddp")
    return [s.train for s in make_synthetic_segments(root / "train", 4, views=4, image_size=32)]


@pytest.fixture(scope="module")
def autodecoder_run(segments, tmp_path_factory) -> Path:
    from facestudio.models.train_autodecoder import train_autodecoder

    run = tmp_path_factory.mktemp("ddp-ad") / "run"
    train_autodecoder(segments, run, tiny_config(), "cpu", 2)
    return run


# ---------------------------------------------------------------------- deterministic randomness

def _fixed_randomness(setattr_: Callable[[Any, str, Any], None]) -> None:
    """Midpoint ray samples, and EDM noise seeded by the latent's index: the same on any rank."""
    from facestudio.models import denoiser, edm, train_autodecoder, train_diffusion

    render = train_autodecoder.render_views
    setattr_(train_autodecoder, "render_views",
             lambda grid, K, pose, size, box, samples, stratified, bg, geometry=None:
             render(grid, K, pose, size, box, samples, False, bg, geometry))
    batch: list[int] = []
    step = train_diffusion.diffusion_step

    def indexed_step(training, data, idx, cfg, device):
        batch[:] = idx.tolist()
        return step(training, data, idx, cfg, device)

    def edm_loss(model, y, *cond, **kw):
        kw.pop("generator", None)
        return torch.cat([edm.edm_loss(model, y[i:i + 1], *(c[i:i + 1] for c in cond),
                                       generator=torch.Generator().manual_seed(batch[i]), **kw)
                          for i in range(len(y))])

    setattr_(train_diffusion, "diffusion_step", indexed_step)
    setattr_(denoiser, "edm_loss", edm_loss)


def _record_latents(path: Path, setattr_: Callable[[Any, str, Any], None]) -> None:
    """Save the latents stage 2 trains on: the comparison holds only if every process has the same."""
    from facestudio.models import train_diffusion

    load = train_diffusion.load_latent_set

    def recording(trained):
        data = load(trained)
        path.write_bytes(data.latents.numpy().tobytes())
        return data

    setattr_(train_diffusion, "load_latent_set", recording)


def _draws_target(kind: str):
    """The draw each trainer makes per step: (objects, views) for stage 1, latent indices for stage 2."""
    from facestudio.models import distributed, train_autodecoder

    return (train_autodecoder.Batcher, "draw") if kind == "autodecoder" else (distributed.Shard, "draw")


def _record_draws(kind: str, path: Path) -> None:
    owner, name = _draws_target(kind)
    draw = getattr(owner, name)

    def recording(self, *args):
        out = draw(self, *args)
        idx, views = out if kind == "autodecoder" else (out, [])
        with open(path, "a") as f:
            f.write(json.dumps({"idx": idx.tolist(), "views": [v.tolist() for v in views]}) + "\n")
        return out

    setattr(owner, name, recording)


def _replay_union(kind: str, files: list[Path], monkeypatch) -> None:
    """Make one process draw, at step k, the union of the ranks' step-k draws."""
    per_rank = [[json.loads(line) for line in f.read_text().splitlines()] for f in files]
    steps = iter(list(zip(*per_rank)))
    owner, name = _draws_target(kind)

    def replay(self, *args):
        draws = next(steps)
        idx = np.array([i for d in draws for i in d["idx"]])
        if kind == "diffusion":
            return idx
        return idx, [np.array(v) for d in draws for v in d["views"]]

    monkeypatch.setattr(owner, name, replay)


# ---------------------------------------------------------------------- spawning ranks

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_env(rank: int, port: int) -> dict[str, str]:
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_WORLD_SIZE": str(WORLD),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo"}


def _rank_main(rank: int, port: int, job: str, out: str, args: dict[str, Any]) -> None:
    """One spawned process: torchrun's environment, then a trainer; its summary goes to out/rank{N}.json."""
    import threading

    from facestudio.models.train_autodecoder import train_autodecoder
    from facestudio.models.train_diffusion import train_diffusion

    os.environ.update(_rank_env(rank, port))
    out_dir = Path(out)
    if job in ("autodecoder", "diffusion"):     # to compare with one process
        _fixed_randomness(lambda obj, name, value: setattr(obj, name, value))
        _record_draws(job, out_dir / f"draws{rank}.jsonl")
    if job == "diffusion":
        _record_latents(out_dir / f"latents{rank}.bin", lambda obj, name, value: setattr(obj, name, value))
        torch.set_num_threads(2)    # not the config's 1 thread, nor the single process's 3 below
    stop = threading.Event()
    if job == "stop":     # rank 0 asks to stop after step 2 (Ctrl+C in a terminal, say); rank 1 never does
        args["progress_cb"] = lambda p: stop.set() if p["step"] == 2 else None
    train = train_diffusion if job == "diffusion" else train_autodecoder
    summary = train(**args, device="cpu", stop_event=stop)
    (out_dir / f"rank{rank}.json").write_text(json.dumps(summary))


def _spawn(job: str, out: Path, timeout: float = 150.0, **args: Any) -> list[dict[str, Any]]:
    """Run ``job`` on WORLD processes; returns each rank's summary. Killed after ``timeout`` seconds."""
    import torch.multiprocessing as mp

    out.mkdir(parents=True, exist_ok=True)
    ctx = mp.start_processes(_rank_main, args=(_free_port(), job, str(out), args), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1.0):
            assert time.monotonic() < deadline, f"{WORLD} processes still running after {timeout} s"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


def _losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r.get("kind") == "train"]


def _assert_same_training(a: Path, b: Path, optimized: list[str], lr: float) -> None:
    """Same gradient history (Adam's moments) and same weights in runs ``a`` and ``b``.

    ``optimized`` names the parameters in optimizer order. Adam divides each gradient by its own
    size, so float noise in a tiny gradient becomes a step of up to ``lr`` in an arbitrary
    direction: weights must agree to 1% of a step, and only where the gradient is above 1e-4 of
    its tensor's largest, in tensors whose gradient is not all noise (about 1e-8 of the largest:
    weights the loss does not depend on, as a conv bias before a one-channel group norm). Weights
    that never had a gradient must be bit-equal.
    """
    from facestudio.models.runs import Run

    ca, cb = Run.open(a).load_checkpoint(), Run.open(b).load_checkpoint()
    assert ca.model.keys() == cb.model.keys()
    scale = {m: max(float(v.abs().max()) for k, v in cb.state.items() if k.endswith(f".{m}"))
             for m in ("exp_avg", "exp_avg_sq")}
    compared = total = 0
    for i, name in enumerate(optimized):
        for m in scale:
            torch.testing.assert_close(ca.state[f"optim.{i}.{m}"], cb.state[f"optim.{i}.{m}"], rtol=1e-4,
                                       atol=1e-6 * scale[m], msg=lambda msg: f"{name} {m}: {msg}")
        grad = cb.state[f"optim.{i}.exp_avg"].abs()
        real = (grad > 1e-4 * grad.max()) & (grad.max() > 1e-6 * scale["exp_avg"])
        torch.testing.assert_close(ca.model[name][real], cb.model[name][real], rtol=1e-4, atol=0.01 * lr,
                                   msg=lambda msg: f"{name}: {msg}")
        # No gradient ever in either run (a blendshape no segment uses): both kept their start. A
        # gradient of float noise (a bias before a group norm) can be exactly 0 in one run only.
        untouched = (grad == 0) & (ca.state[f"optim.{i}.exp_avg"] == 0)
        assert torch.equal(ca.model[name][untouched], cb.model[name][untouched]), name
        compared, total = compared + int(real.sum()), total + int((~untouched).sum())
    assert compared > 0.8 * total, (compared, total)   # most weights that trained


# ---------------------------------------------------------------------- tests

def test_two_autodecoder_processes_equal_one_with_their_union_batch(segments, tmp_path, monkeypatch):
    from facestudio.models.autodecoder import Autodecoder
    from facestudio.models.train_autodecoder import train_autodecoder

    ddp_run, single_run = tmp_path / "ddp", tmp_path / "single"
    summaries = _spawn("autodecoder", tmp_path / "out", segments=segments, run_dir=ddp_run,
                       config=tiny_config(), max_steps=STEPS)
    assert [s["step"] for s in summaries] == [STEPS, STEPS] and summaries[0]["processes"] == WORLD
    draws = [tmp_path / "out" / f"draws{r}.jsonl" for r in range(WORLD)]
    for r, f in enumerate(draws):   # each rank drew one object per step from its own shard
        idx = [d["idx"] for d in map(json.loads, f.read_text().splitlines())]
        assert len(idx) == STEPS and all(len(i) == 1 and i[0] % WORLD == r for i in idx)
    assert (ddp_run / "latent_stats.safetensors").exists()

    _fixed_randomness(monkeypatch.setattr)
    _replay_union("autodecoder", draws, monkeypatch)
    train_autodecoder(segments, single_run, tiny_config(), "cpu", STEPS)
    ddp_losses, single_losses = _losses(ddp_run), _losses(single_run)
    assert len(ddp_losses) == STEPS       # written once, by rank 0
    np.testing.assert_allclose(ddp_losses, single_losses, rtol=1e-5)
    model = Autodecoder(tiny_config().model, len(segments))
    names = {id(p): n for n, p in model.named_parameters()}
    optimized = [names[id(p)] for p in [*model.decoder_parameters(), *model.embeddings.parameters()]]
    assert optimized[-1] == "embeddings.weight"   # compared too: each row trained on one rank only
    _assert_same_training(ddp_run, single_run, optimized, tiny_config().train.lr)


def test_two_diffusion_processes_equal_one_with_their_union_batch(autodecoder_run, tmp_path, monkeypatch):
    from facestudio.models.denoiser import ConditionalDenoiser
    from facestudio.models.diffusion_config import load_diffusion_config
    from facestudio.models.train_diffusion import train_diffusion

    ddp_run, single_run = tmp_path / "ddp", tmp_path / "single"
    summaries = _spawn("diffusion", tmp_path / "out", autodecoder_run=autodecoder_run, run_dir=ddp_run,
                       config=tiny_diffusion(), max_steps=STEPS)
    assert [s["step"] for s in summaries] == [STEPS, STEPS]
    draws = [tmp_path / "out" / f"draws{r}.jsonl" for r in range(WORLD)]

    _fixed_randomness(monkeypatch.setattr)
    _replay_union("diffusion", draws, monkeypatch)
    _record_latents(tmp_path / "latents_single.bin", monkeypatch.setattr)
    torch.set_num_threads(3)     # the thread count a process starts with must not matter
    train_diffusion(autodecoder_run, single_run, tiny_diffusion(), "cpu", STEPS)
    single_latents = (tmp_path / "latents_single.bin").read_bytes()
    # Bit-identical: the latent pass runs on the configured threads in every process (float sums
    # over 1 and 2 threads differ, and Adam turns that noise into half the tolerance below).
    assert all((tmp_path / "out" / f"latents{r}.bin").read_bytes() == single_latents for r in range(WORLD))
    np.testing.assert_allclose(_losses(ddp_run), _losses(single_run), rtol=1e-5)
    config = load_diffusion_config(ddp_run / "config.toml")
    model = ConditionalDenoiser(config.denoiser)
    _assert_same_training(ddp_run, single_run, [n for n, _ in model.named_parameters()], config.train.lr)


def test_a_stopped_two_process_run_resumes_exactly_on_two_processes_and_also_on_one(segments, tmp_path):
    from facestudio.models.autodecoder import Autodecoder
    from facestudio.models.runs import Run
    from facestudio.models.train_autodecoder import train_autodecoder

    cfg = tiny_config(checkpoint_every=2)
    straight, stopped, alone = tmp_path / "straight", tmp_path / "stopped", tmp_path / "alone"
    _spawn("train", tmp_path / "a", segments=segments, run_dir=straight, config=cfg, max_steps=3)
    summaries = _spawn("stop", tmp_path / "b", segments=segments, run_dir=stopped, config=cfg, max_steps=3)
    assert [(s["step"], s["stopped_early"]) for s in summaries] == [(2, True), (2, True)]
    shutil.copytree(stopped, alone)

    # Rank 1's random streams (views, ray samples) restart from rank 0's saved state, as they did
    # at the uninterrupted run's step-2 checkpoint: the same losses, bit for bit.
    _spawn("resume", tmp_path / "c", segments=None, run_dir=stopped, max_steps=3, resume=True)
    assert _losses(stopped) == _losses(straight) and len(_losses(straight)) == 3

    ckpt = Run.open(alone).load_checkpoint()   # world-size free: the unwrapped module's keys
    assert ckpt.step == 2 and ckpt.model.keys() == Autodecoder(cfg.model, len(segments)).state_dict().keys()
    summary = train_autodecoder(None, alone, None, "cpu", 3, resume=True)
    assert summary["step"] == 3 and summary["processes"] == 1
    assert [r["step"] for r in Run.open(alone).metrics() if r.get("kind") == "train"] == [1, 2, 3]


def test_shards_split_the_global_batch_and_refuse_what_cannot_be_split(monkeypatch):
    from facestudio.models import distributed

    one = distributed.shard(5, 8, "train.objects_per_batch")          # one process: as before, clipped
    assert one.items.tolist() == [0, 1, 2, 3, 4] and one.batch == 5
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    two = distributed.shard(5, 4, "train.objects_per_batch")
    assert two.items.tolist() == [1, 3] and two.batch == 2
    with pytest.raises(ValueError, match="multiple of the 2"):
        distributed.shard(5, 3, "train.objects_per_batch")
    with pytest.raises(ValueError, match="1 training objects cannot be shared by 2"):
        distributed.shard(1, 2, "train.objects_per_batch")


def test_cli_under_torchrun_trains_and_only_rank_0_reports(segments, tmp_path):
    config = tmp_path / "tiny.toml"
    save_config(tiny_config(), config)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(WORLD),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "facestudio", "train", "autodecoder", "--config", str(config), "--device", "cpu",
           "--segments", os.path.commonpath(segments), "--max-steps", "2", "--json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1, proc.stdout
    report = reports[0]
    assert report["ok"] and report["step"] == 2 and report["processes"] == WORLD and report["segments"] == 4
    assert Path(report["run"]).parent == Path(os.environ["FACESTUDIO_HOME"]).resolve() / "models" / "autodecoder"

"""Training the stage-2 conditional diffusion model on an autodecoder run's latents.

EDM training (Karras et al. 2022; REFERENCE.md sec. 2) of :class:`ConditionalDenoiser` on the
robust-normalised G1 latents (:mod:`facestudio.models.latents`), conditioned on the segment's
52 blendshape weights and its subject's neutral latent, each condition dropped independently so
classifier-free guidance can drop either at sampling. Same run layout and guarantees as the
autodecoder (:mod:`facestudio.models.runs`): atomic checkpoints with optimizer and RNG state, so
a resumed run continues bit-for-bit; a stop event ends cleanly with a checkpoint.

    RUN/segments.json     {"names": [...training segments...], "autodecoder": "AUTODECODER_RUN"}
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facestudio.models.conditioning import ConditionDropout
from facestudio.models.denoiser import ConditionalDenoiser
from facestudio.models.diffusion_config import DiffusionConfig, load_diffusion_config, tiny
from facestudio.models.latents import LatentSet, load_latent_set
from facestudio.models.runs import (Checkpoint, Progress, Run, capture_rng, optimizer_from_checkpoint,
                                    optimizer_to_checkpoint, restore_rng)
from facestudio.models.train_autodecoder import load_trained, resolve_device, set_threads

log = logging.getLogger(__name__)

SEGMENTS_FILE = "segments.json"


def diffusion_step(model: ConditionalDenoiser, data: LatentSet, idx: np.ndarray, cfg: DiffusionConfig,
                   device: torch.device) -> torch.Tensor:
    """Mean EDM loss of one batch with independent CFG drops (global torch RNG: checkpointed)."""
    tc = cfg.train
    i = torch.from_numpy(idx)
    drop_e, drop_i = ConditionDropout(tc.drop_expression, tc.drop_identity)(len(idx))
    loss = model.loss(data.latents[i].to(device), data.blendshapes[i].to(device),
                      data.identity_latents[i].to(device), drop_e.to(device), drop_i.to(device))
    return loss.mean()


def train_diffusion(autodecoder_run: Path | None, run_dir: Path, config: DiffusionConfig | None = None,
                    device: str = "auto", max_steps: int | None = None, resume: bool = False,
                    init_from: Path | None = None,
                    progress_cb: Callable[[dict[str, Any]], None] | None = None,
                    stop_event: threading.Event | None = None) -> dict[str, Any]:
    """Train (or resume) a diffusion run in ``run_dir`` on ``autodecoder_run``'s latents.

    On resume the run's own config and autodecoder are used. ``init_from`` (a diffusion run)
    starts from its weights - pretraining on synthetic people, fine-tuning on a lab's captures;
    the U-Net shapes must match. ``stop_event`` ends after the current step, with a checkpoint.
    """
    run_dir = Path(run_dir)
    if resume:
        run = Run.open(run_dir)
        config = load_diffusion_config(run.config_path)
        recorded = Path(json.loads((run_dir / SEGMENTS_FILE).read_text(encoding="utf-8"))["autodecoder"])
        if autodecoder_run is not None and Path(autodecoder_run).resolve() != recorded.resolve():
            raise ValueError("--resume: the run was trained on another autodecoder; drop --autodecoder")
        autodecoder_run = recorded
    elif autodecoder_run is None:
        raise ValueError("no autodecoder run to train on (train one with `facestudio train autodecoder`)")
    dev = resolve_device(device)
    trained = load_trained(Path(autodecoder_run), str(dev))
    data = load_latent_set(trained)
    c, r = data.latents.shape[1], data.latents.shape[-1]
    if not resume:
        config = (config or tiny()).for_latents(c, r)
        run = Run.create(run_dir, config)
        (run_dir / SEGMENTS_FILE).write_text(json.dumps(
            {"names": data.names, "autodecoder": str(Path(autodecoder_run).resolve())}, indent=1), encoding="utf-8")
    assert config is not None
    if (config.denoiser.unet.in_channels, config.denoiser.unet.resolution) != (c, r):
        raise ValueError(f"the config expects {config.denoiser.unet.in_channels}x{config.denoiser.unet.resolution}^3 "
                         f"latents, the autodecoder makes {c}x{r}^3")
    threads = set_threads(config.train.num_threads)
    tc = config.train
    torch.manual_seed(tc.seed)
    model = ConditionalDenoiser(config.denoiser).to(dev)
    if init_from is not None and not resume:
        _init_weights(model, Path(init_from))
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=(tc.betas[0], tc.betas[1]))
    rng = np.random.default_rng(tc.seed)
    step = 0
    if resume:
        ckpt = run.load_checkpoint(device=str(dev))
        model.load_state_dict(ckpt.model)
        optimizer_from_checkpoint(optimizer, ckpt.state, ckpt.meta["optimizer"])
        restore_rng(ckpt.state, ckpt.meta["rng"], rng)
        step = ckpt.step
        run.truncate_metrics(step)
    total = max_steps if max_steps is not None else tc.max_steps
    batch = min(tc.batch_size, len(data.names))
    log.info("diffusion: %d latents %s, %s, %d threads, steps %d -> %d, run %s",
             len(data.names), tuple(data.latents.shape[1:]), dev, threads, step, total, run_dir)
    progress = Progress(total, step)
    started, last_saved, stopped, loss_value = time.monotonic(), step, False, float("nan")
    model.train()
    while step < total:
        if stop_event is not None and stop_event.is_set():
            stopped = True
            break
        idx = rng.choice(len(data.names), size=batch, replace=False)
        loss = diffusion_step(model, data, idx, config, dev)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        loss_value = float(loss.detach())
        info = {**progress.update(step), "loss": loss_value}
        if step % tc.log_every == 0 or step == total:
            run.log({"kind": "train", **info})
        if progress_cb is not None:
            progress_cb(info)
        if step % tc.checkpoint_every == 0:
            _save(run, model, optimizer, rng, step, tc.keep_checkpoints)
            last_saved = step
    if step != last_saved or run.latest_checkpoint() is None:
        _save(run, model, optimizer, rng, step, tc.keep_checkpoints)
    summary = {"run": str(run_dir), "autodecoder": str(autodecoder_run), "step": step, "stopped_early": stopped,
               "loss": loss_value, "latents": len(data.names), "subjects": len(set(data.subjects)),
               "latent_shape": list(data.latents.shape[1:]), "device": str(dev), "threads": threads,
               "parameters": sum(p.numel() for p in model.parameters()),
               "seconds": round(time.monotonic() - started, 1)}
    run.log({"kind": "summary", **summary})
    return summary


def _init_weights(model: ConditionalDenoiser, source: Path) -> None:
    weights = Run.open(source).load_checkpoint().model
    own = model.state_dict()
    bad = [k for k, v in weights.items() if k not in own or own[k].shape != v.shape]
    if bad or set(own) - set(weights):
        example = (bad or ["missing keys"])[0]
        raise ValueError(f"--init-from {source}: its U-Net differs from this config (e.g. {example})")
    model.load_state_dict(weights)


def _save(run: Run, model: ConditionalDenoiser, optimizer: torch.optim.Optimizer, rng: np.random.Generator,
          step: int, keep: int) -> Path:
    opt_tensors, opt_meta = optimizer_to_checkpoint(optimizer)
    rng_tensors, rng_meta = capture_rng(rng)
    return run.save_checkpoint(Checkpoint(step, model.state_dict(), {**opt_tensors, **rng_tensors},
                                          {"optimizer": opt_meta, "rng": rng_meta}), keep)

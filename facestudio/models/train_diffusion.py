"""Training the stage-2 conditional diffusion model on an autodecoder run's latents.

EDM training (Karras et al. 2022; REFERENCE.md sec. 2) of :class:`ConditionalDenoiser` on the
robust-normalised G1 latents (:mod:`facestudio.models.latents`), conditioned on the segment's
52 blendshape weights and its subject's neutral latent, each condition dropped independently so
classifier-free guidance can drop either at sampling. Generation samples with an exponential
moving average of the weights (:mod:`facestudio.models.ema`), as EDM does. Same run layout and
guarantees as the autodecoder (:mod:`facestudio.models.runs`): atomic checkpoints with optimizer
and RNG state, so a resumed run continues bit-for-bit; a stop event ends cleanly with a
checkpoint; under torchrun the latents are sharded over the processes
(:mod:`facestudio.models.distributed`).

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
from torch import nn

from facestudio.models import distributed
from facestudio.models.conditioning import ConditionDropout
from facestudio.models.denoiser import ConditionalDenoiser
from facestudio.models.diffusion_config import DiffusionConfig, load_diffusion_config, tiny
from facestudio.models.ema import WeightAverage, inference_weights
from facestudio.models.latents import LatentSet, load_latent_set
from facestudio.models.runs import Run, restore_state, run_steps, save_state
from facestudio.models.train_autodecoder import load_trained, resolve_device, set_threads

log = logging.getLogger(__name__)

SEGMENTS_FILE = "segments.json"


class EDMTraining(nn.Module):
    """The denoiser's per-sample training loss as a forward pass: DDP syncs gradients only for
    what runs through the forward of the module it wraps."""

    def __init__(self, model: ConditionalDenoiser, p_mean: float, p_std: float) -> None:
        super().__init__()
        self.model, self.p_mean, self.p_std = model, p_mean, p_std

    def forward(self, y: torch.Tensor, blendshapes: torch.Tensor, identity: torch.Tensor,
                drop_expression: torch.Tensor, drop_identity: torch.Tensor) -> torch.Tensor:
        return self.model.loss(y, blendshapes, identity, drop_expression, drop_identity,
                               p_mean=self.p_mean, p_std=self.p_std)


def diffusion_step(training: nn.Module, data: LatentSet, idx: np.ndarray, cfg: DiffusionConfig,
                   device: torch.device) -> torch.Tensor:
    """Mean EDM loss of one batch with independent CFG drops (global torch RNG: checkpointed).

    ``training`` is an :class:`EDMTraining`, or its DDP wrapper; bf16 autocast on a GPU.
    """
    tc = cfg.train
    i = torch.from_numpy(idx)
    drop_e, drop_i = ConditionDropout(tc.drop_expression, tc.drop_identity)(len(idx))
    with distributed.autocast(device):
        loss = training(data.latents[i].to(device), data.blendshapes[i].to(device),
                        data.identity_inputs(i).to(device), drop_e.to(device), drop_i.to(device))
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
    Under torchrun every process calls this and trains on its shard of the latents of rank 0's
    ``autodecoder_run`` in rank 0's ``run_dir`` (the CLI names it by the clock); only rank 0
    writes the run and calls ``progress_cb``.
    """
    with distributed.process_group(resolve_device(device)) as dev:
        autodecoder_run, run_dir, init_from = distributed.from_main((autodecoder_run, Path(run_dir), init_from))
        return _train(autodecoder_run, run_dir, config, dev, max_steps, resume, init_from, progress_cb, stop_event)


def _train(autodecoder_run: Path | None, run_dir: Path, config: DiffusionConfig | None, dev: torch.device,
           max_steps: int | None, resume: bool, init_from: Path | None,
           progress_cb: Callable[[dict[str, Any]], None] | None, stop_event: threading.Event | None
           ) -> dict[str, Any]:
    if resume:
        run = Run.open(run_dir)
        config = load_diffusion_config(run.config_path)
        recorded = Path(json.loads((run_dir / SEGMENTS_FILE).read_text(encoding="utf-8"))["autodecoder"])
        if autodecoder_run is not None and Path(autodecoder_run).resolve() != recorded.resolve():
            raise ValueError("--resume: the run was trained on another autodecoder; drop --autodecoder")
        autodecoder_run = recorded
    elif autodecoder_run is None:
        raise ValueError("no autodecoder run to train on (train one with `facestudio train autodecoder`)")
    config = config or tiny()
    # The latent pass is part of training: it runs on the configured threads too. Its float sums
    # depend on the thread count, so processes that computed it on different counts would train
    # on (slightly) different latents; and torchrun's processes must not each take every core.
    threads = set_threads(config.train.num_threads)
    trained = load_trained(Path(autodecoder_run), str(dev))
    data = load_latent_set(trained)
    c, r = data.latents.shape[1], data.latents.shape[-1]
    if not resume:
        identity = data.identity_inputs(torch.arange(len(data.names)))
        residual_std = float((data.latents - identity).std()) if identity.shape == data.latents.shape else 1.0
        config = config.for_latents(c, r, residual_std, identity.shape[1])
        run = Run.create(run_dir, config)
        run.write_json(SEGMENTS_FILE, {"names": data.names, "autodecoder": str(Path(autodecoder_run).resolve())})
    if (config.denoiser.unet.in_channels, config.denoiser.unet.resolution) != (c, r):
        raise ValueError(f"the config expects {config.denoiser.unet.in_channels}x{config.denoiser.unet.resolution}^3 "
                         f"latents, the autodecoder makes {c}x{r}^3")
    tc = config.train
    torch.manual_seed(tc.seed)
    model = ConditionalDenoiser(config.denoiser).to(dev)
    if init_from is not None and not resume:
        _init_weights(model, Path(init_from))
    elif model.mean is not None and not resume:
        model.mean.fit(model.diffused(data.latents, data.identity_inputs(torch.arange(len(data.names)))),
                       data.blendshapes)
    average = WeightAverage(model, tc.ema_halflife_steps, tc.ema_rampup)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=(tc.betas[0], tc.betas[1]))
    rng = np.random.default_rng(tc.seed)
    step = restore_state(run, model, optimizer, rng, dev, average) if resume else 0
    distributed.split_rng(rng)
    training = distributed.wrap(EDMTraining(model, tc.p_mean, tc.p_std), dev)
    total = max_steps if max_steps is not None else tc.max_steps
    shard = distributed.shard(len(data.names), tc.batch_size, "train.batch_size")
    log.info("diffusion: %d latents %s, %s x %d, %d threads, steps %d -> %d, run %s", len(data.names),
             tuple(data.latents.shape[1:]), dev, distributed.world_size(), threads, step, total, run_dir)
    started = time.monotonic()
    model.train()

    def batch_loss() -> tuple[torch.Tensor, dict[str, float]]:
        return diffusion_step(training, data, shard.draw(rng), config, dev), {}

    step, stopped, terms = run_steps(
        run, step, total, batch_loss, optimizer,
        lambda at: save_state(run, at, model, optimizer, rng, tc.keep_checkpoints, average), tc, progress_cb,
        stop_event, after_step=lambda at: average.update(model, at))
    summary = {"run": str(run_dir), "autodecoder": str(autodecoder_run), "step": step, "stopped_early": stopped,
               "loss": terms["loss"], "latents": len(data.names), "subjects": len(set(data.subjects)),
               "latent_shape": list(data.latents.shape[1:]), "device": str(dev),
               "processes": distributed.world_size(), "precision": distributed.precision(dev), "threads": threads,
               "parameters": sum(p.numel() for p in model.parameters()),
               "seconds": round(time.monotonic() - started, 1)}
    run.log({"kind": "summary", **summary})
    return summary


def _init_weights(model: ConditionalDenoiser, source: Path) -> None:
    weights = inference_weights(Run.open(source).load_checkpoint().model)
    own = model.state_dict()
    bad = [k for k, v in weights.items() if k not in own or own[k].shape != v.shape]
    if bad or set(own) - set(weights):
        example = (bad or ["missing keys"])[0]
        raise ValueError(f"--init-from {source}: its U-Net differs from this config (e.g. {example})")
    model.load_state_dict(weights)

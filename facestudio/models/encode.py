"""Bringing a segment the model never saw into its latent space, decoder frozen.

An autodecoder has no encoder: a new object's embedding is found by optimising it alone so its
rendering matches the new views (DeepSDF-style inversion, as the autodecoder in 3DVADER
implies). It starts from the mean training embedding and uses the training losses, with a
larger learning rate since only one small vector moves. The result is cached as
``RUN/encoded/<segment>.safetensors`` (embedding + latent) so render/export/stage 2 reuse it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from facestudio.dataset.segment import HEAD_BOX_CENTER, HEAD_BOX_SIZE, Segment, SegmentError
from facestudio.models.losses import AutodecoderLoss
from facestudio.models.render import Box
from facestudio.models.train_autodecoder import TrainedAutodecoder, load_views, render_views

log = logging.getLogger(__name__)

ENCODED_DIR = "encoded"


def encoded_path(trained: TrainedAutodecoder, segment: Path) -> Path:
    key = re.sub(r"[^A-Za-z0-9_.-]+", "__", Segment(segment).name)
    return trained.run_dir / ENCODED_DIR / f"{key}.safetensors"


def encode_segment(trained: TrainedAutodecoder, segment: Path, seconds: float = 60.0, max_steps: int = 400,
                   lr: float = 2e-2, views_per_step: int = 4, seed: int = 0,
                   progress_cb: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Fit an embedding for ``segment`` within ``seconds`` / ``max_steps``; cache and return a summary."""
    cfg = trained.config
    model = trained.model
    device = next(model.parameters()).device
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    views = load_views(Path(segment), cfg.render.image_size, cfg.render.background)
    z = model.embeddings.weight.mean(0, keepdim=True).detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr, betas=(0.9, 0.999))
    loss_fn = AutodecoderLoss(cfg.loss, cfg.model.geometry).to(device)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)   # stratified ray samples: the same segment and seed give the same code
    started = time.monotonic()
    step, loss_value = 0, float("nan")
    while step < max_steps and time.monotonic() - started < seconds:
        pick = torch.from_numpy(rng.choice(len(views.mask), size=min(views_per_step, len(views.mask)), replace=False))
        grid = model.decode(z)
        out = render_views(grid, views.K[pick][None].to(device), views.cam_to_head[pick][None].to(device),
                           cfg.render.image_size, views.box, cfg.render.samples_per_ray, True, cfg.render.background,
                           model.geometry)
        loss, _ = loss_fn(out, views.rgb[pick].to(device), views.mask[pick].to(device),
                          views.depth[pick].to(device), views.box.size, grid)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        loss_value = float(loss.detach())
        if progress_cb is not None:
            progress_cb({"step": step, "loss": loss_value, "elapsed_s": round(time.monotonic() - started, 2)})
    with torch.no_grad():
        latent = model.g1(z)
    path = encoded_path(trained, Path(segment))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"embedding": z.detach()[0].cpu().contiguous(), "latent": latent[0].cpu().contiguous()}, str(tmp),
              metadata={"segment": str(segment), "steps": str(step), "loss": f"{loss_value:.6f}"})
    tmp.replace(path)
    return {"segment": str(segment), "encoded": str(path), "steps": step, "loss": loss_value,
            "seconds": round(time.monotonic() - started, 1),
            "latent_shape": list(latent.shape[1:])}


def grid_for_segment(trained: TrainedAutodecoder, segment_or_index: int | str | Path
                     ) -> tuple[torch.Tensor, Box]:
    """The raw (4, R, R, R) grid and box of an embedding index, a training segment, or a new
    segment (encoded on first use, then read from the cache)."""
    model = trained.model
    device = next(model.parameters()).device
    index: int | None
    if isinstance(segment_or_index, int) or (isinstance(segment_or_index, str) and segment_or_index.isdigit()):
        index = int(segment_or_index)
        if not 0 <= index < model.embeddings.num_embeddings:
            raise ValueError(f"object index {index} out of range (0..{model.embeddings.num_embeddings - 1})")
        path = trained.segment_paths[index]
    else:
        index = trained.index_of(segment_or_index)
        path = trained.segment_paths[index] if index is not None else Path(segment_or_index)
    box = _box_of(path)
    with torch.no_grad():
        if index is not None:
            return model(torch.tensor([index], device=device))[0], box
        cached = encoded_path(trained, path)
        if not cached.exists():
            log.info("%s is not a training segment: encoding it (decoder frozen)", path)
            encode_segment(trained, path)
        return model.g2(load_file(str(cached))["latent"][None].to(device))[0], box


def _box_of(path: Path) -> Box:
    try:
        info = Segment(path).info
        return Box(tuple(info.box_center), info.box_size)
    except SegmentError:   # the segment moved since training: the box every model shares
        return Box(HEAD_BOX_CENTER, HEAD_BOX_SIZE)

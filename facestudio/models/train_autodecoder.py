"""Training the autodecoder on fused segments, resumable to the exact step.

Radiance output (``model.output = "radiance"``, 3DVADER): each step draws ``objects_per_batch``
segments and ``views_per_object`` of their views (4 in the paper), decodes every drawn object's
embedding to its grid, renders full views and takes the losses of :mod:`facestudio.models.losses`.
Deformation output (the presets): each segment's target is the field that moves its subject's
neutral scan into the segment's expression (:mod:`facestudio.models.deformation_targets`: the ICT
rig or ICP; cached in ``RUN/fields/``), and a step decodes the drawn objects' fields against
their targets. Embeddings and decoder train jointly (autodecoding, no encoder). After training, G1 maps every embedding to its latent volume and the robust
per-channel statistics (median, IQR) that stage 2 normalises with are stored in the run.
Under torchrun the objects are sharded over the processes (:mod:`facestudio.models.distributed`).

    RUN/segments.json           the training segments, in embedding order
    RUN/latent_stats.safetensors  median, iqr (C,) over all training latents
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from facestudio.dataset.segment import Segment
from facestudio.models import distributed
from facestudio.models.autodecoder import Autodecoder
from facestudio.models.config import AutodecoderConfig, load_config
from facestudio.models.deformation_targets import field_loss, prepare_targets
from facestudio.models.losses import AutodecoderLoss
from facestudio.models.render import Box, make_rays, render_rays
from facestudio.models.runs import Run, restore_state, run_steps, save_state

log = logging.getLogger(__name__)

SEGMENTS_FILE = "segments.json"
LATENT_STATS_FILE = "latent_stats.safetensors"


@dataclass
class ObjectViews:
    """One segment's views at training resolution, as tensors (targets composited over the background)."""

    name: str
    rgb: torch.Tensor        # (V, H, W, 3) float in [0, 1]
    mask: torch.Tensor       # (V, H, W) bool
    depth: torch.Tensor      # (V, H, W) float metres, 0 = invalid
    K: torch.Tensor          # (V, 3, 3)
    cam_to_head: torch.Tensor  # (V, 4, 4)
    box: Box


def load_views(path: Path, size: int, background: list[float]) -> ObjectViews:
    """Read a segment and resize its views to ``size`` x ``size`` (intrinsics scaled to match)."""
    seg = Segment(path)
    data = seg.load_all()
    n, h, w = data["masks"].shape
    sx, sy = size / w, size / h
    rgb = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA) for c in data["colors"]])
    mask = np.stack([cv2.resize(m.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) > 0.5
                     for m in data["masks"]])
    depth = np.stack([cv2.resize(d, (size, size), interpolation=cv2.INTER_NEAREST) for d in data["depths"]])
    K = data["K"].copy()
    K[:, 0, 0] *= sx
    K[:, 1, 1] *= sy
    K[:, 0, 2] = (K[:, 0, 2] + 0.5) * sx - 0.5
    K[:, 1, 2] = (K[:, 1, 2] + 0.5) * sy - 0.5
    bg = np.asarray(background, dtype=np.float32)
    rgb_f = np.where(mask[..., None], rgb.astype(np.float32) / 255.0, bg)
    return ObjectViews(seg.name, torch.from_numpy(rgb_f), torch.from_numpy(mask),
                       torch.from_numpy(depth.astype(np.float32)), torch.from_numpy(K).float(),
                       torch.from_numpy(data["cam_to_head"]).float(), segment_box(seg))


def segment_box(seg: Segment) -> Box:
    return Box(tuple(seg.info.box_center), seg.info.box_size)


def render_views(model_grid: torch.Tensor, K: torch.Tensor, cam_to_head: torch.Tensor, size: int,
                 box: Box, samples: int, stratified: bool, background: list[float],
                 geometry: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Render ``V`` views of each of ``B`` grids: K (B, V, 3, 3), cam_to_head (B, V, 4, 4);
    ``geometry`` is the model's (:attr:`Autodecoder.geometry`; default: density).

    Returns rgb (B*V, H, W, 3), depth and opacity (B*V, H, W).
    """
    b, v = K.shape[:2]
    origins, dirs = make_rays(K.reshape(-1, 3, 3), cam_to_head.reshape(-1, 4, 4), size, size)
    origins, dirs = origins.reshape(b, -1, 3), dirs.reshape(b, -1, 3)
    bg = torch.tensor(background, dtype=model_grid.dtype, device=model_grid.device)
    out = render_rays(model_grid, origins.to(model_grid), dirs.to(model_grid), box, samples, stratified, bg,
                      geometry)
    return {"rgb": out["rgb"].reshape(b * v, size, size, 3), "depth": out["depth"].reshape(b * v, size, size),
            "opacity": out["opacity"].reshape(b * v, size, size)}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r} (auto, cpu, cuda, mps)")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available to this torch build")
    return torch.device(name)


def set_threads(num_threads: int) -> int:
    """0 = every core (the CLI); the GUI passes cores - 1 so its thread stays responsive (REFERENCE.md sec. 5).

    Processes started together on one machine (torchrun) split its cores instead of each taking all.
    """
    n = num_threads or max(1, (os.cpu_count() or 1) // distributed.local_world_size())
    torch.set_num_threads(n)
    return n


class Batcher:
    """Draws (object, view) batches from its own numpy generator, whose state is checkpointed.

    ``objects`` holds (at least) the shard's objects, by their index among all training objects.
    """

    def __init__(self, objects: Mapping[int, ObjectViews], shard: distributed.Shard, views_per_object: int,
                 seed: int) -> None:
        self.objects = objects
        self.shard = shard
        self.v = views_per_object
        self.rng = np.random.default_rng(seed)

    def draw(self) -> tuple[np.ndarray, list[np.ndarray]]:
        idx = self.shard.draw(self.rng)
        views = [self.rng.choice(len(self.objects[i].mask), size=self.v, replace=len(self.objects[i].mask) < self.v)
                 for i in idx]
        return idx, views


def training_step(model: nn.Module, loss_fn: AutodecoderLoss, objects: Mapping[int, ObjectViews], idx: np.ndarray,
                  views: list[np.ndarray], cfg: AutodecoderConfig, device: torch.device, geometry: nn.Module
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one batch (forward only; the caller steps the optimizer).

    ``model`` is the :class:`Autodecoder`, or its DDP wrapper; ``geometry`` the Autodecoder's own.
    Only the decoder runs in bf16 on a GPU: ray positions and compositing need fp32, so the grids
    are rendered in fp32.
    """
    pick = lambda attr: torch.stack([getattr(objects[i], attr)[torch.from_numpy(v)] for i, v in zip(idx, views)])  # noqa: E731
    with distributed.autocast(device):
        grids = model(torch.from_numpy(idx).to(device))
    grids = grids.float()
    box = objects[int(idx[0])].box
    out = render_views(grids, pick("K").to(device), pick("cam_to_head").to(device), cfg.render.image_size, box,
                       cfg.render.samples_per_ray, True, cfg.render.background, geometry)
    flat = lambda t: t.reshape(-1, *t.shape[2:]).to(device)  # noqa: E731
    return loss_fn(out, flat(pick("rgb")), flat(pick("mask")), flat(pick("depth")), box.size, grids)


def train_autodecoder(segments: list[Path] | None, run_dir: Path, config: AutodecoderConfig | None = None,
                      device: str = "auto", max_steps: int | None = None, resume: bool = False,
                      progress_cb: Callable[[dict[str, Any]], None] | None = None,
                      stop_event: threading.Event | None = None) -> dict[str, Any]:
    """Train (or resume) a run in ``run_dir``; returns a summary dict.

    On resume the run's own config.toml and segment list are used (``config``/``segments`` must be
    None or the same). ``stop_event`` ends the run cleanly after the current step, with a checkpoint.
    Under torchrun every process calls this and trains on rank 0's ``segments`` in rank 0's
    ``run_dir`` (the CLI names it by the clock); only rank 0 writes the run and calls ``progress_cb``.
    """
    with distributed.process_group(resolve_device(device)) as dev:
        segments, run_dir = distributed.from_main((segments, Path(run_dir)))
        return _train(segments, run_dir, config, dev, max_steps, resume, progress_cb, stop_event)


def _train(segments: list[Path] | None, run_dir: Path, config: AutodecoderConfig | None, dev: torch.device,
           max_steps: int | None, resume: bool, progress_cb: Callable[[dict[str, Any]], None] | None,
           stop_event: threading.Event | None) -> dict[str, Any]:
    if resume:
        run = Run.open(run_dir)
        config = load_config(run.config_path)
        names = json.loads((run_dir / SEGMENTS_FILE).read_text(encoding="utf-8"))
        paths = [Path(p) for p in names["paths"]]
        if segments is not None and [str(p) for p in segments] != [str(p) for p in paths]:
            raise ValueError("--resume: the run was trained on other segments; resume without --segments")
    else:
        if not segments:
            raise ValueError("no segments to train on (fuse takes first, or pass --segments DIR)")
        config = (config or load_config("tiny")).validate()
        paths = [Path(p) for p in segments]
        run = Run.create(run_dir, config)
    assert config is not None
    threads = set_threads(config.train.num_threads)
    tc = config.train
    segs = [Segment(p) for p in paths]   # metadata only: each process loads the views of its shard
    boxes = {segment_box(s) for s in segs}
    if len(boxes) > 1:   # one decoder, one grid: every object must live in the same box
        raise ValueError(f"segments use different head boxes {sorted(map(str, boxes))}; re-fuse them alike")
    if not resume:
        run.write_json(SEGMENTS_FILE, {"paths": [str(p) for p in paths], "names": [s.name for s in segs]})
    shard = distributed.shard(len(paths), tc.objects_per_batch, "train.objects_per_batch")
    deformation = config.model.output == "deformation"
    if deformation:
        box = segment_box(segs[0])
        targets = prepare_targets(run_dir, segs, list(shard.items), box, config.model.output_resolution,
                                  config.registration, progress_cb if distributed.is_main() else None)
    else:
        objects = {int(i): load_views(paths[i], config.render.image_size, config.render.background)
                   for i in shard.items}
    torch.manual_seed(tc.seed)
    model = Autodecoder(config.model, len(paths)).to(dev)
    optimizer = torch.optim.Adam([{"params": model.decoder_parameters(), "lr": tc.lr},
                                  {"params": model.embeddings.parameters(), "lr": tc.embedding_lr}],
                                 betas=(tc.betas[0], tc.betas[1]))
    loss_fn = None if deformation else AutodecoderLoss(config.loss, config.model.geometry).to(dev)
    batcher = Batcher(objects if not deformation else {}, shard, tc.views_per_object, tc.seed)
    step = restore_state(run, model, optimizer, batcher.rng, dev) if resume else 0
    distributed.split_rng(batcher.rng)
    ddp = distributed.wrap(model, dev)
    total = max_steps if max_steps is not None else tc.max_steps
    log.info("autodecoder (%s): %d segments, %s x %d, %d threads, steps %d -> %d, run %s", config.model.output,
             len(paths), dev, distributed.world_size(), threads, step, total, run_dir)
    started = time.monotonic()
    model.train()

    def batch_loss() -> tuple[torch.Tensor, dict[str, float]]:
        if deformation:
            idx = batcher.shard.draw(batcher.rng)
            with distributed.autocast(dev):
                fields = ddp(torch.from_numpy(idx).to(dev))
            return field_loss(fields.float(), [targets[int(i)] for i in idx]), {}
        idx, views = batcher.draw()
        loss, terms = training_step(ddp, loss_fn, objects, idx, views, config, dev, model.geometry)
        return loss, {**terms, **model.geometry.metrics()}

    step, stopped, terms = run_steps(
        run, step, total, batch_loss, optimizer,
        lambda at: save_state(run, at, model, optimizer, batcher.rng, tc.keep_checkpoints), tc, progress_cb, stop_event)
    stats = compute_latent_stats(model, dev)
    if distributed.is_main():
        save_file(stats, str(run_dir / LATENT_STATS_FILE))
    summary = {"run": str(run_dir), "step": step, "stopped_early": stopped, "loss": terms["loss"],
               "segments": len(paths), "device": str(dev), "processes": distributed.world_size(),
               "precision": distributed.precision(dev), "threads": threads,
               "output": config.model.output,
               **({} if loss_fn is None else
                  {"perceptual_loss": "on" if loss_fn.vgg is not None else "off (no VGG-19 weights file)"}),
               "seconds": round(time.monotonic() - started, 1),
               "latent_shape": [config.model.latent_channels] + [config.model.latent_resolution] * 3,
               "latent_median_mean": float(stats["median"].mean()), "latent_iqr_mean": float(stats["iqr"].mean())}
    run.log({"kind": "summary", **summary})
    return summary


@torch.no_grad()
def compute_latent_stats(model: Autodecoder, device: torch.device, chunk: int = 16) -> dict[str, torch.Tensor]:
    """Per-channel median and IQR of G1(embeddings) over objects and voxels (3DVADER sec. 3.2).

    The paper normalises latents as (F - median) / IQR before diffusion: mean/std normalisation
    made diffusion diverge on its data, because a few voxels carry extreme values.
    """
    was_training = model.training
    model.eval()
    n = model.embeddings.num_embeddings
    latents = torch.cat([model.g1(model.embeddings.weight[i:i + chunk].to(device)).cpu()
                         for i in range(0, n, chunk)])
    model.train(was_training)
    flat = latents.transpose(0, 1).reshape(latents.shape[1], -1)
    q = torch.quantile(flat, torch.tensor([0.25, 0.5, 0.75]), dim=1)
    return {"median": q[1].contiguous(), "iqr": (q[2] - q[0]).clamp_min(1e-8).contiguous()}


@dataclass
class TrainedAutodecoder:
    """A run's newest weights, config and segment list, ready for inference."""

    run_dir: Path
    config: AutodecoderConfig
    model: Autodecoder
    segment_paths: list[Path]
    segment_names: list[str]
    step: int

    def latent_stats(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.run_dir / LATENT_STATS_FILE))

    def index_of(self, segment: Path | str) -> int | None:
        """Embedding index of a training segment given by path or name, else None."""
        key = str(segment)
        for i, (p, name) in enumerate(zip(self.segment_paths, self.segment_names)):
            if key == name or (Path(key).exists() and Path(key).resolve() == p.resolve()):
                return i
        return None


def load_trained(run_dir: Path, device: str = "cpu") -> TrainedAutodecoder:
    run = Run.open(Path(run_dir))
    config = load_config(run.config_path)
    seg = json.loads((run.path / SEGMENTS_FILE).read_text(encoding="utf-8"))
    ckpt = run.load_checkpoint(device=device)
    model = Autodecoder(config.model, len(seg["paths"])).to(device)
    model.load_state_dict(ckpt.model)
    model.eval()
    return TrainedAutodecoder(run.path, config, model, [Path(p) for p in seg["paths"]], seg["names"], ckpt.step)

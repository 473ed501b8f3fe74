"""A training run on disk and the training loop, shared by both trainers (autodecoder, diffusion).

    RUN/
        config.toml              the full typed config, written when the run starts
        metrics.jsonl            one JSON object per logged step / evaluation, appended
        checkpoints/latest       name of the newest complete checkpoint (replaced atomically)
        checkpoints/step_NNNNNNNN/
            model.safetensors    model weights (a diffusion run adds their average as ema.*)
            state.safetensors    optimizer tensors + torch RNG state
            meta.json            step, optimizer scalars/param groups, numpy/python RNG, extras

A checkpoint folder is written under a temporary name and renamed when complete, and
``latest`` changes only after that, so a crash at any point leaves the previous checkpoint
usable. Everything that influences the next step (weights, Adam moments, every RNG the
trainer draws from) is saved, so a resumed run continues bit-for-bit like an uninterrupted one.

In a multi-process run (:mod:`facestudio.models.distributed`) every rank calls these methods
and only rank 0 writes; the others wait for each checkpoint to be complete.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save as safetensors_bytes
from torch import nn

from facestudio.models import distributed, ema
from facestudio.models.config import save_config
from facestudio.storage import writing

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LATEST = "latest"


@dataclass
class Checkpoint:
    step: int
    model: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


class Run:
    """One run folder: config, metrics log and atomic checkpoints."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: Path, config: Any) -> "Run":
        path = Path(path)
        if distributed.is_main():
            if (path / CONFIG_FILE).exists():
                raise ValueError(f"{path} already holds a run; resume it or choose another folder")
            (path / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
            _atomic_write(path / CONFIG_FILE, lambda tmp: save_config(config, tmp))
        return cls(path)

    @classmethod
    def open(cls, path: Path) -> "Run":
        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise ValueError(f"{path} is not a training run (no {CONFIG_FILE})")
        return cls(path)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    # ------------------------------------------------------------------ metrics

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (a line); each line is flushed so a crash loses at most that line."""
        if not distributed.is_main():
            return
        with open(self.path / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **record}, allow_nan=False) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        path = self.path / METRICS_FILE
        if not path.exists():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:   # a line cut by a crash
                continue
        return out

    def truncate_metrics(self, step: int) -> None:
        """Drop records after ``step`` (written after the checkpoint a resume starts from)."""
        if not distributed.is_main():
            return
        kept = [r for r in self.metrics() if r.get("step", 0) <= step]
        _atomic_write(self.path / METRICS_FILE, lambda tmp: tmp.write_text(
            "".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8"))

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, ckpt: Checkpoint, keep: int = 2) -> Path:
        root = self.path / CHECKPOINTS
        name = f"step_{ckpt.step:08d}"
        if distributed.is_main():
            self._write_checkpoint(ckpt, root, name, keep)
        distributed.barrier()
        return root / name

    def _write_checkpoint(self, ckpt: Checkpoint, root: Path, name: str, keep: int) -> None:
        """Written beside as ``.tmp-NAME`` and renamed: a kill leaves the previous checkpoint
        current. Old ones are renamed to ``.old-NAME`` before deletion, so a kill mid-delete
        never leaves a half-deleted ``step_*``; dot-folders left by a kill go on the next save.
        A full disk raises a StorageError naming the run and leaves no partial folder."""
        root.mkdir(exist_ok=True)
        for leftover in [*root.glob(".tmp-step_*"), *root.glob(".old-step_*")]:
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = root / f".tmp-{name}"
        files = {"model.safetensors": safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in ckpt.model.items()}),
                 "state.safetensors": safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in ckpt.state.items()}),
                 "meta.json": json.dumps({"step": ckpt.step, **ckpt.meta}).encode()}
        try:
            with writing(root):
                tmp.mkdir()
                for file_name, data in files.items():
                    with open(tmp / file_name, "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        self._write_atomic(root / LATEST, name.encode())
        for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
            doomed = old.with_name(".old-" + old.name)
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def write_json(self, name: str, data: Any) -> None:
        """A small file of the run (e.g. its segment list), atomically, by rank 0 only."""
        if distributed.is_main():
            self._write_atomic(self.path / name, json.dumps(data, indent=1).encode())

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        with writing(path):
            _atomic_write(path, lambda tmp: tmp.write_bytes(data))

    def latest_checkpoint(self) -> Path | None:
        pointer = self.path / CHECKPOINTS / LATEST
        if not pointer.exists():
            return None
        path = self.path / CHECKPOINTS / pointer.read_text(encoding="utf-8").strip()
        return path if (path / "meta.json").exists() else None

    def load_checkpoint(self, path: Path | None = None, device: str = "cpu") -> Checkpoint:
        path = path or self.latest_checkpoint()
        if path is None:
            raise ValueError(f"{self.path} has no checkpoint yet")
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        return Checkpoint(int(meta.pop("step")), load_file(str(path / "model.safetensors"), device=device),
                          load_file(str(path / "state.safetensors")), meta)


# ---------------------------------------------------------------------- optimizer and RNG state

def optimizer_to_checkpoint(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (safetensors) and JSON-able scalars."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_checkpoint(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                              meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, scalars in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(scalars)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def capture_rng(generator: np.random.Generator | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every RNG a trainer may draw from: torch (CPU and CUDA), numpy global, python, and its own."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {"numpy": [kind, keys.tolist(), pos, has_gauss, cached],
            "python": _listify(random.getstate()),
            "generator": generator.bit_generator.state if generator is not None else None}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                generator: np.random.Generator | None = None) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    if generator is not None and meta.get("generator") is not None:
        generator.bit_generator.state = meta["generator"]


def _listify(value: Any) -> Any:
    return [_listify(v) for v in value] if isinstance(value, (tuple, list)) else value


# ---------------------------------------------------------------------- a trainer's state and loop

def save_state(run: Run, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
               generator: np.random.Generator, keep: int, average: ema.WeightAverage | None = None) -> Path:
    """Checkpoint everything the next step depends on: weights (and their ``average``, if the
    trainer keeps one), optimizer, every RNG.

    ``model`` is the unwrapped module, so the checkpoint is the same for any number of
    processes; the RNG is rank 0's, from which the other ranks then re-derive theirs.
    """
    opt_tensors, opt_meta = optimizer_to_checkpoint(optimizer)
    rng_tensors, rng_meta = capture_rng(generator)
    weights = {**model.state_dict(), **(average.state_dict() if average is not None else {})}
    path = run.save_checkpoint(Checkpoint(step, weights, {**opt_tensors, **rng_tensors},
                                          {"optimizer": opt_meta, "rng": rng_meta}), keep)
    distributed.split_rng(generator)
    return path


def restore_state(run: Run, model: nn.Module, optimizer: torch.optim.Optimizer, generator: np.random.Generator,
                  device: torch.device, average: ema.WeightAverage | None = None) -> int:
    """Load the newest checkpoint into a freshly built trainer; returns its step. Metrics logged
    after that checkpoint (by a run that crashed or was killed later) are dropped."""
    ckpt = run.load_checkpoint(device=str(device))
    model.load_state_dict(ema.live(ckpt.model))
    if average is not None:
        average.load(ckpt.model, model)
    optimizer_from_checkpoint(optimizer, ckpt.state, ckpt.meta["optimizer"])
    restore_rng(ckpt.state, ckpt.meta["rng"], generator)
    run.truncate_metrics(ckpt.step)
    return ckpt.step


def run_steps(run: Run, step: int, total: int, batch_loss: Callable[[], tuple[torch.Tensor, dict[str, float]]],
              optimizer: torch.optim.Optimizer, save: Callable[[int], Path], train: Any,
              progress_cb: Callable[[dict[str, Any]], None] | None = None,
              stop_event: threading.Event | None = None,
              after_step: Callable[[int], None] | None = None) -> tuple[int, bool, dict[str, float]]:
    """The loop every trainer shares: optimizer steps from ``step`` to ``total``, logging every
    ``train.log_every``, checkpointing every ``train.checkpoint_every`` and at the end.

    ``batch_loss()`` draws a batch and returns its loss and loss terms. A stop request on any
    process ends every process before the next step. The logged loss is the global batch's (the
    mean over processes); only rank 0 logs and calls ``progress_cb``. Returns the final step,
    whether it stopped early and the last step's loss terms ("loss" first; None when no step ran,
    so the summary stays valid JSON). ``after_step(step)``
    runs after each optimizer step (e.g. a weight average's update).
    """
    progress = Progress(total, step)
    last_saved, stopped, terms = step, False, {"loss": None}
    while step < total:
        if distributed.any_rank(stop_event is not None and stop_event.is_set()):
            stopped = True
            break
        loss, parts = batch_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if after_step is not None:
            after_step(step)
        terms = distributed.mean_over_ranks({"loss": float(loss.detach()), **parts})
        info = {**progress.update(step), **terms}
        if step % train.log_every == 0 or step == total:
            run.log({"kind": "train", **info})
        if progress_cb is not None and distributed.is_main():
            progress_cb(info)
        if step % train.checkpoint_every == 0:
            save(step)
            last_saved = step
    if step != last_saved or run.latest_checkpoint() is None:
        save(step)
    return step, stopped, terms


# ---------------------------------------------------------------------- progress

class Progress:
    """Steps/s and ETA from an exponential moving average of step times (robust to a slow first step)."""

    def __init__(self, total_steps: int, start_step: int = 0, smoothing: float = 0.1) -> None:
        self.total, self.start = total_steps, start_step
        self.smoothing = smoothing
        self.started = self._last = time.monotonic()
        self.step_time: float | None = None

    def update(self, step: int) -> dict[str, Any]:
        now = time.monotonic()
        dt, self._last = now - self._last, now
        self.step_time = dt if self.step_time is None else (1 - self.smoothing) * self.step_time + self.smoothing * dt
        remaining = max(self.total - step, 0)
        return {"step": step, "total_steps": self.total, "elapsed_s": round(now - self.started, 2),
                "steps_per_s": round(1.0 / max(self.step_time, 1e-9), 3),
                "eta_s": round(remaining * self.step_time, 1)}


def format_progress(p: dict[str, Any]) -> str:
    if p.get("phase") == "registering":   # deformation autodecoders, before the first step
        return f"registering segments onto their neutral scans {p['done']}/{p['total']}"
    eta = int(p["eta_s"])
    loss = f"  loss {p['loss']:.4f}" if "loss" in p else ""
    return (f"step {p['step']}/{p['total_steps']}{loss}  {p['steps_per_s']:.2f} steps/s  "
            f"ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}")


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    _fsync(tmp)
    os.replace(tmp, path)

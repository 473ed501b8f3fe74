"""EDM's exponential moving average of the denoiser's weights, which generation samples with.

Karras et al. 2022 (NVlabs/edm training_loop.py) sample from an EMA of the weights whose
half-life grows with training: ``halflife = min(halflife_steps, step * rampup)`` and
``beta = 0.5 ** (1 / halflife)``: the weights of single small-batch steps are noisy and their
average samples better over long runs. At the tiny preset's ~2,000 CPU steps it made no
measurable difference (BENCHMARKS.md); it is kept as EDM's method for the paper preset.

A checkpoint keeps both: the live weights (what training resumes from) under their own names
and the average under ``ema.<name>``; :func:`inference_weights` picks the average when there is
one (runs from before the EMA have none and keep their live weights).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

PREFIX = "ema."


class WeightAverage:
    """The EMA shadow of ``model`` (an independent copy, never trained, never wrapped by DDP)."""

    def __init__(self, model: nn.Module, halflife_steps: float, rampup: float) -> None:
        self.shadow = copy.deepcopy(model).requires_grad_(False).eval()
        self.halflife_steps, self.rampup = halflife_steps, rampup

    def beta(self, step: int) -> float:
        """EDM's decay after optimizer step ``step`` (1-based); 0 (copy the weights) while off."""
        halflife = min(self.halflife_steps, step * self.rampup) if self.rampup > 0 else self.halflife_steps
        return 0.5 ** (1.0 / halflife) if halflife > 0 else 0.0

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        beta = self.beta(step)
        for avg, current in zip(self.shadow.parameters(), model.parameters()):
            avg.lerp_(current.detach(), 1.0 - beta)
        for avg, current in zip(self.shadow.buffers(), model.buffers()):
            avg.copy_(current)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {PREFIX + k: v for k, v in self.shadow.state_dict().items()}

    def load(self, weights: dict[str, torch.Tensor], model: nn.Module) -> None:
        """The average from a checkpoint, or the live weights of ``model`` when it has none."""
        saved = averaged(weights)
        self.shadow.load_state_dict(saved if saved else model.state_dict())


def averaged(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(PREFIX):]: v for k, v in weights.items() if k.startswith(PREFIX)}


def live(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in weights.items() if not k.startswith(PREFIX)}


def inference_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What to generate with: the average if the checkpoint has one, else the live weights."""
    return averaged(weights) or live(weights)

"""Stage-2 training data: robust-normalised autodecoder latents with their conditions.

3DVADER normalises G1's latents per channel as (F - median) / IQR before diffusion and inverts
that before G2; mean/std normalisation made its diffusion fail to converge (REFERENCE.md sec. 1).
The identity condition of a segment comes from its subject's neutral segment (label "neutral",
else the one with the smallest blendshape norm): for a radiance autodecoder its normalised latent
(a new person's neutral take is encoded with the decoder frozen), for a deformation autodecoder
the neutral's fused scan as a volume (:func:`facestudio.models.deformation.identity_volume`),
which a new person has as soon as their neutral take is fused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from facestudio.dataset.segment import Segment, SegmentError
from facestudio.faces.arkit import NUM_BLENDSHAPES
from facestudio.models.deformation import identity_volume
from facestudio.models.deformation_targets import load_scan
from facestudio.models.render import Box
from facestudio.models.train_autodecoder import TrainedAutodecoder


def normalise(latent: torch.Tensor, stats: dict[str, torch.Tensor]) -> torch.Tensor:
    """(F - median) / IQR per channel; latent (..., C, R, R, R)."""
    shape = (-1, 1, 1, 1)
    return (latent - stats["median"].to(latent).view(shape)) / stats["iqr"].to(latent).view(shape)


def denormalise(latent: torch.Tensor, stats: dict[str, torch.Tensor]) -> torch.Tensor:
    shape = (-1, 1, 1, 1)
    return latent * stats["iqr"].to(latent).view(shape) + stats["median"].to(latent).view(shape)


@dataclass
class LatentSet:
    """Every training segment of an autodecoder run: normalised latent and conditions."""

    names: list[str]
    subjects: list[str]
    labels: list[str]
    latents: torch.Tensor        # (N, C, R, R, R) normalised
    blendshapes: torch.Tensor    # (N, 52)
    identity_index: list[int]    # per segment: the index of its subject's neutral segment
    stats: dict[str, torch.Tensor]
    scan_volumes: dict[int, torch.Tensor] | None = None   # deformation runs: neutral index -> scan volume

    def identity_of(self, subject: str) -> torch.Tensor:
        return self.identity(self.identity_index[self.subjects.index(subject)])

    def identity(self, neutral: int) -> torch.Tensor:
        """Stage 2's identity input from the neutral segment at index ``neutral``."""
        return self.latents[neutral] if self.scan_volumes is None else self.scan_volumes[neutral]

    def identity_inputs(self, index: torch.Tensor) -> torch.Tensor:
        """The identity inputs of the segments at ``index``: a batch's, not all N copied each step."""
        return torch.stack([self.identity(self.identity_index[int(i)]) for i in torch.as_tensor(index).reshape(-1)])


@torch.no_grad()
def load_latent_set(trained: TrainedAutodecoder) -> LatentSet:
    """G1 of every embedding, normalised with the run's stored statistics, plus segment metadata."""
    model = trained.model
    device = next(model.parameters()).device
    stats = trained.latent_stats()
    raw = torch.cat([model.g1(model.embeddings.weight[i:i + 16].to(device)).cpu()
                     for i in range(0, model.embeddings.num_embeddings, 16)])
    subjects, labels, shapes = [], [], []
    for path, name in zip(trained.segment_paths, trained.segment_names):
        try:
            info = Segment(path).info
        except SegmentError as exc:
            raise ValueError(f"training segment {name} cannot be read ({exc}); stage 2 needs its "
                             "subject, label and blendshapes") from None
        if len(info.blendshapes) != NUM_BLENDSHAPES:
            raise ValueError(f"segment {name}: {len(info.blendshapes)} blendshapes, expected {NUM_BLENDSHAPES}")
        subjects.append(info.subject)
        labels.append(info.label)
        shapes.append(info.blendshapes)
    bs = torch.tensor(np.asarray(shapes, dtype=np.float32))
    neutral = {s: neutral_index(subjects, labels, bs, s) for s in set(subjects)}
    volumes = None
    if trained.config.model.output == "deformation":
        box = Box(tuple(Segment(trained.segment_paths[0]).info.box_center), Segment(trained.segment_paths[0]).info.box_size)
        volumes = {i: identity_volume(*load_scan(trained.segment_paths[i])[:2], box, trained.config.model.latent_resolution)
                   for i in sorted(set(neutral.values()))}
    return LatentSet(list(trained.segment_names), subjects, labels, normalise(raw, stats), bs,
                     [neutral[s] for s in subjects], stats, volumes)


def neutral_index(subjects: list[str], labels: list[str], blendshapes: torch.Tensor, subject: str) -> int:
    """The subject's "neutral" segment, else its segment with the smallest blendshape norm."""
    own = [i for i, s in enumerate(subjects) if s == subject]
    labelled = [i for i in own if labels[i] == "neutral"]
    if labelled:
        return labelled[0]
    return min(own, key=lambda i: float(blendshapes[i].norm()))

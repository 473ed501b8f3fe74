"""Stage 1 of a deformation autodecoder: every expression segment as a field of its subject's
neutral scan, registered once, then learned by the autodecoder.

Each training segment's target is the forward field that moves its subject's neutral scan (the
neutral segment's fused ``mesh.ply``) into the segment's expression: with a face model
(``registration.face_model``), the ICT rig fitted to the neutral scan and moved by the segment's
recorded ARKit weights (:func:`facestudio.models.deformation.fit_field`; in the template frame
with the rig's mouth interior, :mod:`facestudio.models.mouth_interior`), optionally refined onto
the segment's own fused scan; without one, non-rigid ICP onto that scan
(:func:`facestudio.models.deformation.register`). The neutral segment's own target is no motion. The autodecoder then fits
embedding -> G1 -> latent -> G2 -> field to these targets with a squared error weighted to the
voxels that move the scan (:func:`facestudio.models.deformation.surface_weight`).

Registration is the slow part (seconds per segment on a CPU), so each target is cached in the run:

    RUN/fields/NNNN.safetensors     field (3, R, R, R) cm, weight (R, R, R), for training segment NNNN
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open3d as o3d
import torch
from safetensors.torch import load_file, save_file

from facestudio.dataset.segment import MESH_FILE, Segment
from facestudio.models.deformation import (FIELD_UNIT_M, RegistrationConfig, fit_field, register,
                                           surface_weight, vertex_normals)
from facestudio.models.mouth_interior import INTERIOR_WEIGHT
from facestudio.models.render import Box
from facestudio.models.template_frame import TemplateFrame, frame_of, load_frame, save_frame
from facestudio.storage import writing

log = logging.getLogger(__name__)

FIELDS_DIR = "fields"
FRAMES_DIR = "frames"
NEUTRAL_MAX_WEIGHT = 0.15    # a segment with every blendshape weight at most this is a neutral face


@dataclass
class FieldTarget:
    field: torch.Tensor      # (3, R, R, R) centimetres (G2's unit)
    weight: torch.Tensor     # (R, R, R)


def load_scan(segment: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices (N, 3) float32 m, triangles (M, 3) int32, colors (N, 3) uint8) of a segment's fused
    scan; a missing or empty mesh is a ValueError that says what to do."""
    path = Path(segment) / MESH_FILE
    if not path.is_file():
        raise ValueError(f"{segment}: no fused scan ({MESH_FILE}); fuse the take again")
    mesh = o3d.io.read_triangle_mesh(str(path))
    if len(mesh.triangles) == 0:
        raise ValueError(f"{path}: the fused scan is empty (nothing was observed often enough)")
    colors = np.asarray(mesh.vertex_colors)
    colors = (np.clip(colors, 0, 1) * 255).astype(np.uint8) if len(colors) else \
        np.full((len(mesh.vertices), 3), 180, np.uint8)
    return (np.asarray(mesh.vertices, dtype=np.float32), np.asarray(mesh.triangles, dtype=np.int32), colors)


def is_neutral(blendshapes: list[float]) -> bool:
    return float(np.max(np.abs(blendshapes), initial=0.0)) <= NEUTRAL_MAX_WEIGHT


def neutral_segments(segments: list[Segment]) -> list[int]:
    """Per segment, the index of its subject's neutral segment among ``segments`` (label
    "neutral", else the subject's smallest blendshape norm - the rule of stage 2's identity).

    A subject with no segment at all near neutral cannot be a deformation of its own neutral scan:
    its expressions would be registered onto another face.
    """
    out = []
    for seg in segments:
        own = [i for i, s in enumerate(segments) if s.info.subject == seg.info.subject]
        labelled = [i for i in own if segments[i].info.label == "neutral"]
        if labelled:
            out.append(labelled[0])
            continue
        best = min(own, key=lambda i: float(np.linalg.norm(segments[i].info.blendshapes)))
        if not is_neutral(segments[best].info.blendshapes):
            raise ValueError(f"subject {seg.info.subject} has no neutral segment among the training segments; "
                             "a deformation model moves each person's neutral scan (record or fuse a neutral take)")
        out.append(best)
    return out


def uses_template_frame(registration: RegistrationConfig) -> bool:
    """Whether a deformation run reads its fields in the face model's template frame."""
    return bool(registration.face_model) and registration.template_frame


def frame_path(run_dir: Path, neutral: int) -> Path:
    return Path(run_dir) / FIELDS_DIR / FRAMES_DIR / f"{neutral:04d}.safetensors"


def target_path(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / FIELDS_DIR / f"{index:04d}.safetensors"


def prepare_targets(run_dir: Path, segments: list[Segment], items: list[int], box: Box, resolution: int,
                    registration: RegistrationConfig,
                    progress: Callable[[dict[str, Any]], None] | None = None) -> Mapping[int, FieldTarget]:
    """The targets of the training segments at ``items`` (a process's shard), registering those not
    cached in ``run_dir`` (and, in the template frame, the subjects' frames)."""
    neutral_of = neutral_segments(segments)
    scans: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    rig = _Rig(registration.face_model, registration.eyeballs_back_m) if registration.face_model else None
    template = uses_template_frame(registration)
    frames: dict[int, TemplateFrame] = {}

    def scan(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if i not in scans:
            scans[i] = load_scan(segments[i].path)
        return scans[i]

    def frame(n: int) -> TemplateFrame | None:
        if not template:
            return None
        if n not in frames:
            path = frame_path(run_dir, n)
            if not path.exists():
                save_frame(path, rig.frame(n, scan(n)))
            frames[n] = load_frame(path)
        return frames[n]

    targets: dict[int, FieldTarget] = {}
    for done, i in enumerate(items):
        n = neutral_of[i]
        path = target_path(run_dir, i)
        if path.exists():
            frame(n)
            data = load_file(str(path))
            targets[i] = FieldTarget(data["field"], data["weight"])
            continue
        neutral, f = scan(n)[0], frame(n)
        inside = f is not None and f.interior is not None
        where = neutral if f is None else f.coords
        weight = surface_weight(where, box, resolution)
        if inside:   # voxels only the mouth interior moves count INTERIOR_WEIGHT
            weight = torch.maximum(weight, INTERIOR_WEIGHT * surface_weight(f.interior.coords, box, resolution))
        if n == i:
            field = torch.zeros(3, resolution, resolution, resolution)
        else:
            vertices, triangles, _ = scan(i)
            initial = None
            if rig is not None:
                blendshapes = segments[i].info.blendshapes
                motion = rig.moved(n, scan(n), blendshapes) - neutral
                if f is not None:
                    motion = motion @ f.rotation
                weights = None
                if inside:   # the mouth behind the lips moves as the rig's interior does
                    weights = np.repeat([1.0, INTERIOR_WEIGHT], [len(where), len(f.interior.coords)])
                    where = np.concatenate([where, f.interior.coords])
                    motion = np.concatenate([motion, rig.interior_motion(n, scan(n), blendshapes)])
                initial = fit_field(where, motion, box, resolution, seed=registration.seed, weights=weights)
            if initial is not None and registration.refine_steps == 0:
                field = initial / FIELD_UNIT_M
            else:
                field = register(neutral, vertices, vertex_normals(vertices, triangles), box, resolution,
                                 registration, initial, f) / FIELD_UNIT_M
        targets[i] = FieldTarget(field, weight)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with writing(tmp):
            save_file({"field": field.contiguous(), "weight": weight.contiguous()}, str(tmp))
        tmp.replace(path)
        log.info("registered %s onto its neutral (%d/%d)", segments[i].name, done + 1, len(items))
        if progress is not None:
            progress({"phase": "registering", "done": done + 1, "total": len(items)})
    return targets


def run_frame(run_dir: Path, registration: RegistrationConfig, neutral: int) -> TemplateFrame | None:
    """The template frame stored for training neutral segment ``neutral`` (None: head frame)."""
    return load_frame(frame_path(run_dir, neutral)) if uses_template_frame(registration) else None


class _Rig:
    """The ICT face model fitted to each subject's neutral scan (once), moving it by ARKit weights."""

    def __init__(self, path: str, eyeballs_back_m: float = 0.0) -> None:
        self.model = load_face_model(path)
        self.eyeballs_back_m = eyeballs_back_m
        self.fits: dict[int, Any] = {}

    def _fit(self, neutral: int, scan: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Any:
        from facestudio.faces.fit import fit_ict

        if neutral not in self.fits:
            self.fits[neutral] = fit_ict(self.model, scan[0], vertex_normals(scan[0], scan[1]))
        return self.fits[neutral]

    def moved(self, neutral: int, scan: tuple[np.ndarray, np.ndarray, np.ndarray],
              blendshapes: list[float]) -> np.ndarray:
        from facestudio.faces.fit import transfer

        return transfer(self._fit(neutral, scan), scan[0], np.asarray(blendshapes, np.float32))

    def interior_motion(self, neutral: int, scan: tuple[np.ndarray, np.ndarray, np.ndarray],
                        blendshapes: list[float]) -> np.ndarray:
        """(K, 3) m, in the model's axes: the fitted interior's (mouth_interior) motion."""
        from facestudio.faces.arkit import NUM_BLENDSHAPES
        from facestudio.models.mouth_interior import MOUTH_REGIONS

        fit = self._fit(neutral, scan)
        keep = fit.model.region_mask(*MOUTH_REGIONS)
        moved = fit.vertices(np.asarray(blendshapes, np.float32)) - fit.vertices(np.zeros(NUM_BLENDSHAPES, np.float32))
        return moved[keep] @ fit.rotation

    def frame(self, neutral: int, scan: tuple[np.ndarray, np.ndarray, np.ndarray]) -> TemplateFrame:
        return frame_of(self._fit(neutral, scan), scan[0], eyeballs_back_m=self.eyeballs_back_m)


def load_face_model(path: str) -> Any:
    """The ICT model a deformation run registers with (and reads its template frame from)."""
    from facestudio.faces.ict import IctFaceModel

    if not Path(path).is_file():
        raise ValueError(f"registration.face_model: {path} does not exist (import one with "
                         "`facestudio facemodel import-ict`, or set it to \"\" for ICP alone)")
    return IctFaceModel.load(Path(path))


def field_loss(fields: torch.Tensor, targets: list[FieldTarget]) -> torch.Tensor:
    """Weighted mean squared error (cm^2) of decoded fields (B, 3, R, R, R) against their targets."""
    target = torch.stack([t.field for t in targets]).to(fields)
    weight = torch.stack([t.weight for t in targets]).to(fields)[:, None]
    return (weight * (fields - target) ** 2).sum() / (3 * weight.sum())


@torch.no_grad()
def decoded_scan(trained: Any, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training segment ``index`` as a deformation autodecoder reproduces it: its subject's neutral
    scan (with its mouth interior, in the template frame) moved by the decoded field (the
    segment's minus the neutral's, so the neutral segment gives its scan exactly)."""
    from facestudio.models.mouth_interior import avatar

    segments = [Segment(p) for p in trained.segment_paths]
    neutral = neutral_segments(segments)[index]
    decoded = trained.model(torch.tensor([index, neutral])) * FIELD_UNIT_M
    box = Box(tuple(segments[index].info.box_center), segments[index].info.box_size)
    frame = run_frame(trained.run_dir, trained.config.registration, neutral)
    return avatar(load_scan(segments[neutral].path), decoded[0] - decoded[1], box, frame)

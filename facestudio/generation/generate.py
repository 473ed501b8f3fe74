"""A person + an expression -> a colored mesh: sampling, de-normalisation, G2, then the mesh.

The person is given by a neutral segment (a subject name, a training segment, or a segment the
model never saw - no diffusion retraining). Sampling is the deterministic EDM Heun sampler from
initial noise fixed by the seed, so the same seed with nearby expressions gives nearby faces
(the probability-flow ODE is a smooth map; REFERENCE.md sec. 2) - what slider dragging needs.

With a deformation autodecoder (the presets) the person is their fused neutral scan - the mesh
the Library shows - and G2 decodes the sampled latent to a displacement field that moves every
vertex of it (:meth:`Generator.field`): the avatar keeps the scan's detail, colours and
vertices (plus, in the template frame, the face model's mouth interior behind the lips, moved
by the same field: :mod:`facestudio.models.mouth_interior`). The field is the sampled
expression's minus the sampled neutral expression's from the same noise, so the neutral
expression gives exactly the scan. A new person needs only their fused neutral take.

With a radiance autodecoder (3DVADER's own stage 1) the person is their neutral latent (an
unseen segment is encoded once, decoder frozen), the sampled change from the neutral expression
is added to it (:meth:`Generator.latent`), and the mesh is marching cubes on the decoded grid
(preview on the raw grid, final on an upsampled one).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from facestudio.dataset.segment import HEAD_BOX_CENTER, HEAD_BOX_SIZE, Segment, SegmentError
from facestudio.faces.arkit import NUM_BLENDSHAPES
from facestudio.models.denoiser import ConditionalDenoiser
from facestudio.models.diffusion_config import DiffusionConfig, load_diffusion_config
from facestudio.models.ema import inference_weights
from facestudio.models.latents import denormalise, load_latent_set, normalise
from facestudio.models.mesh import grid_to_mesh
from facestudio.models.render import Box
from facestudio.models.runs import Run
from facestudio.models.template_frame import TemplateFrame
from facestudio.models.train_autodecoder import load_trained
from facestudio.models.train_diffusion import SEGMENTS_FILE

log = logging.getLogger(__name__)

Mesh = tuple[np.ndarray, np.ndarray, np.ndarray]   # vertices (N, 3) f32 m, triangles (M, 3) i32, colors (N, 3) u8


@dataclass(frozen=True)
class Quality:
    steps: int
    mesh_upsample: int


class Generator:
    """A trained diffusion run with its autodecoder, ready to generate meshes."""

    def __init__(self, run_dir: Path, device: str = "cpu", encode_seconds: float = 60.0) -> None:
        run = Run.open(Path(run_dir))
        self.run_dir = run.path
        self.config: DiffusionConfig = load_diffusion_config(run.config_path)
        meta = json.loads((run.path / SEGMENTS_FILE).read_text(encoding="utf-8"))
        self.device = torch.device(device)
        self.autodecoder = load_trained(Path(meta["autodecoder"]), device)
        self.data = load_latent_set(self.autodecoder)
        self.model = ConditionalDenoiser(self.config.denoiser).to(self.device)
        ckpt = run.load_checkpoint(device=device)
        self.model.load_state_dict(inference_weights(ckpt.model))
        self.model.eval()
        self.step = ckpt.step
        self.encode_seconds = encode_seconds
        self.box = _box(self.autodecoder.segment_paths[0])
        self.deformation = self.autodecoder.config.model.output == "deformation"
        self._people: dict[str, torch.Tensor] = {}
        self._scans: dict[str, Mesh] = {}
        self._frames: dict[str, TemplateFrame | None] = {}
        self._neutral_samples: list[tuple[torch.Tensor, tuple[int, int, float], torch.Tensor]] = []
        s = self.config.sampling
        self.quality = {"preview": Quality(s.preview_steps, s.preview_mesh_upsample),
                        "final": Quality(s.final_steps, s.final_mesh_upsample)}

    # ------------------------------------------------------------------ people

    def person_identity(self, person: str | Path) -> torch.Tensor:
        """Stage 2's identity input for a person - a subject of the model, a training segment (name
        or path) or a segment folder - prepared once, then cached: the neutral latent (radiance;
        an unseen segment is encoded with the decoder frozen) or the neutral scan's volume
        (deformation)."""
        key = str(person)
        if key not in self._people:
            self._people[key] = self._prepare_scan(key) if self.deformation else self._resolve(key)
        return self._people[key]

    def person_frame(self, person: str | Path) -> TemplateFrame | None:
        """Where a deformation model reads its field for ``person``'s scan: the template frame
        (stored for a training subject; a new person's scan is fitted with the run's face model,
        ~5 s, once) or None for the head frame."""
        self.person_scan(person)
        return self._frames[str(person)]

    def person_scan(self, person: str | Path) -> Mesh:
        """The fused neutral scan a deformation model moves for ``person``."""
        if not self.deformation:
            raise ValueError("this model was trained without deformation (a radiance autodecoder): it generates "
                             "decoded volumes, not the person's scan; train a deformation autodecoder (preset tiny)")
        self.person_identity(person)
        return self._scans[str(person)]

    def _training_index(self, key: str) -> int | None:
        """The training segment that stands for ``key`` - a subject's neutral or a training segment -
        else None when ``key`` is a segment folder; anything else is a ValueError."""
        if key in self.data.subjects:
            return self.data.identity_index[self.data.subjects.index(key)]
        index = self.autodecoder.index_of(key)
        if index is not None:
            return index
        if not (Path(key) / "segment.json").is_file():
            subjects = ", ".join(sorted(set(self.data.subjects)))
            raise ValueError(f"--person {key!r} is neither a subject of the model ({subjects}), "
                             "a training segment, nor a segment folder")
        return None

    def _neutral_segment(self, key: str) -> Path:
        """The neutral segment folder of a subject, training segment or segment folder."""
        from facestudio.models.deformation_targets import is_neutral

        index = self._training_index(key)
        if index is not None:
            return self.autodecoder.segment_paths[self.data.identity_index[index]]
        path = Path(key)
        info = Segment(path).info
        if info.label != "neutral" and not is_neutral(info.blendshapes):
            raise ValueError(f"{path} holds the expression {info.label!r}, not a neutral face: a person is "
                             "generated from their neutral segment (record or fuse a neutral take)")
        return path

    def _prepare_scan(self, key: str) -> torch.Tensor:
        from facestudio.models.deformation import identity_volume
        from facestudio.models.deformation_targets import load_face_model, load_scan, run_frame, uses_template_frame
        from facestudio.models.template_frame import fit_frame

        index = self._training_index(key)
        neutral = self.data.identity_index[index] if index is not None else None
        scan = load_scan(self._neutral_segment(key))
        registration = self.autodecoder.config.registration
        frame = run_frame(self.autodecoder.run_dir, registration, neutral) if neutral is not None else None
        if frame is not None and len(frame.coords) != len(scan[0]):
            # the subject's neutral take was fused again after training: its stored frame is of the old mesh
            log.info("%s: the neutral scan changed since training; fitting the face model to it again", key)
            frame = None
        if frame is None and uses_template_frame(registration):
            log.info("%s: fitting the face model to the neutral scan", key)
            frame = fit_frame(load_face_model(registration.face_model), scan[0], scan[1], registration.eyeballs_back_m)
        self._scans[key], self._frames[key] = scan, frame
        return identity_volume(scan[0], scan[1], self.box, self.autodecoder.config.model.latent_resolution)

    def _resolve(self, key: str) -> torch.Tensor:
        from facestudio.models.encode import encode_segment, encoded_path

        index = self._training_index(key)
        if index is not None:
            return self.data.latents[index]
        path = Path(key)
        cached = encoded_path(self.autodecoder, path)
        if not cached.exists():
            log.info("%s is a new person: encoding its neutral segment (decoder frozen)", path)
            encode_segment(self.autodecoder, path, seconds=self.encode_seconds)
        return normalise(load_file(str(cached))["latent"], self.data.stats)

    # ------------------------------------------------------------------ generation

    def noise(self, seed: int) -> torch.Tensor:
        """The seed's initial noise, drawn on the CPU so a seed means the same face on any device."""
        gen = torch.Generator().manual_seed(int(seed))
        return torch.randn((1, *self.model.latent_shape), generator=gen)

    @torch.no_grad()
    def sample(self, identity: torch.Tensor, blendshapes: np.ndarray | torch.Tensor, seed: int = 0,
               steps: int | None = None, guidance: float | None = None) -> torch.Tensor:
        """The diffusion model's normalised latent (C, R, R, R) for a normalised identity latent and
        52 weights, from the seed's noise."""
        bs = torch.as_tensor(np.asarray(blendshapes, dtype=np.float32)).reshape(1, -1)
        if bs.shape[1] != NUM_BLENDSHAPES:
            raise ValueError(f"expected {NUM_BLENDSHAPES} blendshape weights, got {bs.shape[1]}")
        out = self.model.sample(bs.to(self.device), identity[None].to(self.device), noise=self.noise(seed),
                                num_steps=steps or self.config.sampling.final_steps,
                                guidance=self.config.sampling.guidance if guidance is None else guidance,
                                guide_identity=self.config.sampling.guide_identity)
        return out[0]

    def _neutral_sample(self, identity: torch.Tensor, seed: int, steps: int | None, guidance: float | None
                        ) -> torch.Tensor:
        """sample(neutral expression) for the person and seed, cached per steps and guidance (a
        slider drag then costs one sample)."""
        key = (seed, steps or self.config.sampling.final_steps,
               self.config.sampling.guidance if guidance is None else guidance)
        neutral = next((n for i, k, n in self._neutral_samples if k == key and torch.equal(i, identity)), None)
        if neutral is None:
            neutral = self.sample(identity, np.zeros(NUM_BLENDSHAPES, np.float32), *key)
            self._neutral_samples = [(identity, key, neutral), *self._neutral_samples[:7]]
        return neutral

    @torch.no_grad()
    def latent(self, identity: torch.Tensor, blendshapes: np.ndarray | torch.Tensor, seed: int = 0,
               steps: int | None = None, guidance: float | None = None) -> torch.Tensor:
        """A radiance model's normalised latent (C, R, R, R) of the person with the expression.

        With ``sampling.anchor_to_person`` (the presets) it is the person's own latent plus the
        sampled change: sample(expression) - sample(neutral expression), both from the seed's
        noise. The sampled face drifts from the person (its neutral decodes farther from the
        true face than the encoded latent does); the difference of two samples from the same
        noise keeps the expression and cancels most of that drift, so the neutral expression
        gives exactly the encoded person.
        """
        sampled = self.sample(identity, blendshapes, seed, steps, guidance)
        if not self.config.sampling.anchor_to_person:
            return sampled
        return identity.to(sampled.device) + (sampled - self._neutral_sample(identity, seed, steps, guidance))

    @torch.no_grad()
    def decode_field(self, latent: torch.Tensor) -> torch.Tensor:
        """A deformation model's normalised latent -> de-normalise -> G2 -> field (3, R, R, R) in metres."""
        from facestudio.models.deformation import FIELD_UNIT_M

        return self.autodecoder.model.g2(denormalise(latent.to(self.device), self.data.stats)[None])[0] * FIELD_UNIT_M

    @torch.no_grad()
    def field(self, identity: torch.Tensor, blendshapes: np.ndarray | torch.Tensor, seed: int = 0,
              steps: int | None = None, guidance: float | None = None) -> torch.Tensor:
        """A deformation model's field (3, R, R, R), metres, that gives the person the expression:
        field(sample(expression)) - field(sample(neutral expression)) with ``anchor_to_person``,
        so the scan's own neutral is exactly kept and the drift both samples share cancels."""
        moved = self.decode_field(self.sample(identity, blendshapes, seed, steps, guidance))
        if not self.config.sampling.anchor_to_person:
            return moved
        return moved - self.decode_field(self._neutral_sample(identity, seed, steps, guidance))

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, mesh_upsample: int = 2) -> Mesh:
        """A radiance model's normalised latent -> de-normalise -> G2 -> marching cubes (colors from the grid)."""
        raw = self.autodecoder.model.g2(denormalise(latent.to(self.device), self.data.stats)[None])[0]
        return grid_to_mesh(raw, self.box, self.config.sampling.threshold, mesh_upsample,
                            self.autodecoder.model.geometry)

    def generate(self, person: str | Path, blendshapes: np.ndarray, seed: int = 0, steps: int | None = None,
                 guidance: float | None = None, quality: str = "final") -> Mesh:
        """(vertices, triangles, vertex_colors) of ``person`` with ``blendshapes`` (52 ARKit weights):
        the person's scan deformed, with the mouth interior behind it in the template frame
        (deformation models: the scan's vertices first, :func:`~facestudio.models.mouth_interior.avatar`),
        or a decoded grid's surface (radiance)."""
        if quality not in self.quality:
            raise ValueError(f"quality must be one of {', '.join(self.quality)}")
        q = self.quality[quality]
        identity = self.person_identity(person)
        if self.deformation:
            from facestudio.models.mouth_interior import avatar

            field = self.field(identity, blendshapes, seed, steps or q.steps, guidance)
            return avatar(self.person_scan(person), field, self.box, self.person_frame(person))
        return self.decode(self.latent(identity, blendshapes, seed, steps or q.steps, guidance), q.mesh_upsample)


def _box(path: Path) -> Box:
    try:
        info = Segment(path).info
        return Box(tuple(info.box_center), info.box_size)
    except SegmentError:   # the training segment moved: the box every model shares
        return Box(HEAD_BOX_CENTER, HEAD_BOX_SIZE)

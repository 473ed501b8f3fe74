"""Typed config of the stage-2 diffusion model, saved as RUN/config.toml with every run.

Same conventions as the autodecoder's config (:mod:`facestudio.models.config`): plain
dataclasses, strict TOML round-trip (an unknown or mistyped key names itself), presets ``tiny``
(minutes on a 2-core CPU) and ``paper`` (3DVADER's U-Net sizes, REFERENCE.md sec. 1).
The latent channel count is not configured here: it is the autodecoder run's, filled in by
:func:`for_latents` when training starts, as is the data's standard deviation for the residual
target (``denoiser.sigma_data``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from facestudio.models import denoiser
from facestudio.models.config import _check, config_from_toml, read_config_file
from facestudio.models.denoiser import DenoiserConfig


@dataclass
class DiffusionTrainConfig:
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    batch_size: int = 16
    max_steps: int = 2000
    p_mean: float = -1.2                # EDM log-normal sigma: ln s ~ N(p_mean, p_std^2) (Karras et al. Table 1)
    p_std: float = 1.2
    drop_expression: float = 0.1        # CFG: each condition dropped independently (Ho & Salimans 2022)
    drop_identity: float = 0.1
    ema_halflife_steps: float = 500.0   # weight average (models.ema): half-life in optimizer steps ...
    ema_rampup: float = 0.05            # ... at most this fraction of the steps so far (EDM's ramp-up)
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 10
    keep_checkpoints: int = 2
    num_threads: int = 0                # 0 = all cores; a GUI passes cores - 1

    def validate(self) -> None:
        _check(self.lr > 0, "train.lr", "must be > 0")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "train.betas",
               "must be two values in [0, 1)")
        _check(self.p_std > 0, "train.p_std", "must be > 0")
        _check(self.ema_halflife_steps >= 0 and self.ema_rampup >= 0, "train.ema_*",
               "half-life and ramp-up must be >= 0")
        for name in ("drop_expression", "drop_identity"):
            _check(0 <= getattr(self, name) < 1, f"train.{name}", "must be in [0, 1)")
        for name in ("batch_size", "max_steps", "checkpoint_every", "log_every", "keep_checkpoints"):
            _check(getattr(self, name) >= 1, f"train.{name}", "must be >= 1")
        _check(self.num_threads >= 0, "train.num_threads", "must be >= 0")


@dataclass
class SamplingConfig:
    """Heun steps (2N - 1 network calls each, EDM Alg. 1) for the live preview and the final mesh."""

    preview_steps: int = 4
    final_steps: int = 16
    guidance: float = 1.0               # CFG weight; 1 = the conditional model alone (one call per step)
    guide_identity: bool = False        # guidance against: true, the unconditional model; false, the
                                        # identity-only one (guides the expression alone)
    anchor_to_person: bool = True       # person's latent + sampled change from the neutral (Generator.latent)
    preview_mesh_upsample: int = 1      # marching cubes on the raw grid (preview) or upsampled (final)
    final_mesh_upsample: int = 2
    threshold: float = 0.5              # per-voxel opacity level (models.mesh)

    def validate(self) -> None:
        _check(self.preview_steps >= 1 and self.final_steps >= 1, "sampling.steps", "must be >= 1")
        _check(self.guidance >= 0, "sampling.guidance", "must be >= 0")
        _check(self.preview_mesh_upsample >= 1 and self.final_mesh_upsample >= 1, "sampling.mesh_upsample",
               "must be >= 1")
        _check(0 < self.threshold < 1, "sampling.threshold", "must be in (0, 1)")


@dataclass
class DiffusionConfig:
    preset: str = "tiny"
    denoiser: DenoiserConfig = field(default_factory=denoiser.tiny)
    train: DiffusionTrainConfig = field(default_factory=DiffusionTrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def validate(self) -> "DiffusionConfig":
        self.denoiser.validate()
        self.train.validate()
        self.sampling.validate()
        return self

    def for_latents(self, channels: int, resolution: int, residual_std: float,
                    identity_channels: int | None = None) -> "DiffusionConfig":
        """The config with the U-Net sized to an autodecoder's latent (C, R, R, R) and identity
        input (the neutral latent's C channels, or a deformation run's scan volume), and, for the
        residual target, EDM's sigma_data set to the training residuals' standard deviation."""
        self.denoiser.unet.in_channels, self.denoiser.unet.resolution = channels, resolution
        identity_channels = channels if identity_channels is None else identity_channels
        if identity_channels != channels and self.denoiser.target == "residual":
            raise ValueError("denoiser.target = 'residual' needs the neutral latent as identity; "
                             "a deformation autodecoder's latents are already changes from the neutral")
        self.denoiser.conditioning.identity_input_channels = 0 if identity_channels == channels else identity_channels
        if self.denoiser.target == "residual":
            self.denoiser.sigma_data = max(float(residual_std), 1e-4)
        return self.validate()


def tiny() -> DiffusionConfig:
    """denoiser.tiny with one residual block per level (~2.8 M parameters): 3D convolutions dominate
    on a CPU and one block per level roughly halves them (measured ~4x fewer ms per call than 2
    blocks); batch 4, since a batch-16 step took ~1-13 s on 2 shared cores and minutes must buy
    hundreds of steps. Guidance 1 (one network call per evaluation): guiding the expression alone
    helped one of five measured runs and hurt four (BENCHMARKS.md); 3 preview / 12 final Heun
    steps (5 / 23 calls) aim at the 300 ms / 2 s latency goals on 2 cores. The U-Net denoises
    around a linear function of the blendshapes fitted to the training latents
    (denoiser.ExpressionMean): a few hundred latents are too few to learn that mean from noise."""
    den = denoiser.tiny()
    den.unet.num_blocks = 1
    den.linear_mean = True
    return DiffusionConfig(preset="tiny", denoiser=den,
                           train=DiffusionTrainConfig(lr=5e-4, batch_size=4, max_steps=3000),
                           sampling=SamplingConfig(preview_steps=3, final_steps=12)).validate()


def paper() -> DiffusionConfig:
    """3DVADER: base 192, 3 blocks per level, 8^3 and 4^3 with self- and cross-attention, CFG
    weight 3, 32 final sampling steps (16/32/64 reported; REFERENCE.md sec. 1); EDM's weight
    average (half-life 500k images, ramp-up 0.05)."""
    return DiffusionConfig(
        preset="paper", denoiser=denoiser.paper(),
        train=DiffusionTrainConfig(lr=1e-4, batch_size=64, max_steps=200_000, checkpoint_every=2000, log_every=50,
                                   ema_halflife_steps=7800),   # EDM's 500k images at batch 64
        sampling=SamplingConfig(preview_steps=6, final_steps=32, guidance=3.0)).validate()


PRESETS = {"tiny": tiny, "paper": paper}


def load_diffusion_config(spec: str | Path) -> DiffusionConfig:
    """A preset name or a TOML file (as written into every run, or by hand)."""
    if str(spec) in PRESETS:
        return PRESETS[str(spec)]()
    return config_from_toml(read_config_file(spec, PRESETS), DiffusionConfig, source=str(spec))

"""The conditional EDM denoiser of stage 2: encoders + 3D U-Net + EDM preconditioning.

D(x; sigma, expression, identity) denoises robust-normalised autodecoder latents (B, C, 8, 8, 8)
(normalise before training, de-normalise before G2 - REFERENCE.md sec. 1). The identity input
is the person's neutral latent in the same normalised space.

What is diffused (``target``): the expression latent itself, as in 3DVADER (both presets), or
its *residual* from the person's neutral latent, which the sampler adds back (EDM's sigma_data is
then the residuals' own standard deviation, filled in from the training data). The residual looks
like the easier problem - an expression moves a face by millimetres - but measured on the
synthetic protocol it was worse in both runs: 2.29 and 1.83 mm expression error against 1.27
and 1.19 mm for the latent target with the neutral latent as input channels (BENCHMARKS.md,
`eval expression --targets latent,residual`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from facestudio.models.conditioning import ConditioningConfig, ExpressionEncoder, IdentityEncoder, identity_volume
from facestudio.models.edm import SIGMA_DATA, EDMPrecond, cfg_combine, edm_loss, heun_sample
from facestudio.models.unet3d import UNet3D, UNet3DConfig


TARGETS = ("latent", "residual")


@dataclass
class DenoiserConfig:
    unet: UNet3DConfig = field(default_factory=UNet3DConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    target: str = "latent"              # "latent" (3DVADER) or "residual" (latent - neutral latent)
    sigma_data: float = SIGMA_DATA      # for "residual": the residuals' std, set when training starts

    def validate(self) -> "DenoiserConfig":
        self.unet.validate()
        self.conditioning.validate()
        if self.unet.resolution % self.conditioning.identity_patch:
            raise ValueError("conditioning.identity_patch: must divide unet.resolution")
        if self.target not in TARGETS:
            raise ValueError(f"denoiser.target: must be one of {', '.join(TARGETS)}")
        if self.sigma_data <= 0:
            raise ValueError("denoiser.sigma_data: must be > 0")
        return self


def tiny(latent_channels: int = 64) -> DenoiserConfig:
    """CPU-sized (~3.5 M parameters): base 32, 2 blocks per level, attention at 8^3 and 4^3, 128-d
    tokens; the neutral latent also enters as input channels (conditioning.identity_volume)."""
    return DenoiserConfig(unet=UNet3DConfig(in_channels=latent_channels),
                          conditioning=ConditioningConfig(identity_volume=True)).validate()


def paper(latent_channels: int = 256) -> DenoiserConfig:
    """3DVADER's sizes: base 192 (paper 128-192), 3 blocks per level, attention at 8^3 and 4^3."""
    return DenoiserConfig(
        unet=UNet3DConfig(in_channels=latent_channels, model_channels=192, num_blocks=3, head_channels=64,
                          context_dim=512, dropout=0.1),
        conditioning=ConditioningConfig(expression_hidden=512, identity_channels=256,
                                        identity_volume=True)).validate()


class ConditionalDenoiser(nn.Module):
    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        u, c = cfg.unet, cfg.conditioning
        self.expression = ExpressionEncoder(u.context_dim, c.expression_hidden)
        self.identity = IdentityEncoder(u.in_channels, u.context_dim, c.identity_channels, c.identity_patch,
                                        u.resolution)
        self.model = EDMPrecond(UNet3D(u, u.in_channels + 1 if c.identity_volume else 0), cfg.sigma_data)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        r = self.cfg.unet.resolution
        return (self.cfg.unet.in_channels, r, r, r)

    def encode(self, blendshapes: torch.Tensor, identity_latent: torch.Tensor,
               drop_expression: torch.Tensor | None = None, drop_identity: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, ...]:
        """The U-Net's conditions: tokens (B, 9 + 64, D), their mask (B, 9 + 64) - drops clear the
        mask only - and, with ``identity_volume``, the neutral latent as input channels."""
        te, me = self.expression(blendshapes, drop_expression)
        ti, mi = self.identity(identity_latent, drop_identity)
        cond = (torch.cat([te, ti], dim=1), torch.cat([me, mi], dim=1))
        if self.cfg.conditioning.identity_volume:
            cond += (identity_volume(identity_latent, drop_identity),)
        return cond

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, blendshapes: torch.Tensor,
                identity_latent: torch.Tensor, drop_expression: torch.Tensor | None = None,
                drop_identity: torch.Tensor | None = None) -> torch.Tensor:
        """D(x; sigma) given the conditions; drop flags (B,) bool mask a condition out (CFG training)."""
        return self.model(x, sigma, *self.encode(blendshapes, identity_latent, drop_expression, drop_identity))

    def diffused(self, latents: torch.Tensor, identity_latent: torch.Tensor) -> torch.Tensor:
        """What the diffusion runs on for these (normalised) latents: themselves or their residual."""
        return latents - identity_latent if self.cfg.target == "residual" else latents

    def loss(self, y: torch.Tensor, blendshapes: torch.Tensor, identity_latent: torch.Tensor,
             drop_expression: torch.Tensor | None = None, drop_identity: torch.Tensor | None = None,
             generator: torch.Generator | None = None, p_mean: float = -1.2, p_std: float = 1.2) -> torch.Tensor:
        """Per-sample EDM training loss (edm.edm_loss; ln sigma ~ N(p_mean, p_std^2)) for expression
        latents ``y``, shape (B,)."""
        context = self.encode(blendshapes, identity_latent, drop_expression, drop_identity)
        return edm_loss(self.model, self.diffused(y, identity_latent), *context, p_mean=p_mean, p_std=p_std,
                        sigma_data=self.cfg.sigma_data, generator=generator)

    @torch.no_grad()
    def sample(self, blendshapes: torch.Tensor, identity_latent: torch.Tensor, *, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None, num_steps: int = 32, guidance: float = 1.0,
               guide_identity: bool = True, **sampler: Any) -> torch.Tensor:
        """Normalised expression latents (B, C, R, R, R) by the Heun sampler with classifier-free
        guidance (for the residual target: the neutral latent plus the sampled residual).

        ``noise`` (standard normal, the latents' shape) or else ``generator`` fixes the result
        (with no churn). Guidance contrasts the full condition with the unconditional model
        (``guide_identity``) or with the identity-only model (guide the expression alone). With
        guidance != 1 both branches run as one batch of 2B per call; guidance == 1 runs only the
        conditional branch. ``sampler``: heun_sample's keywords (sigma_min, rho, s_churn, ...).
        """
        b = blendshapes.shape[0]
        device = identity_latent.device
        if noise is None:
            noise = torch.randn((b, *self.latent_shape), generator=generator,
                                device=generator.device if generator is not None else device)
        noise = noise.to(device=device, dtype=identity_latent.dtype)
        cond = self.encode(blendshapes, identity_latent)
        if guidance == 1.0:
            def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
                return self.model(x, sigma, *cond)
        else:
            drop_e = torch.ones(b, dtype=torch.bool, device=device)
            uncond = self.encode(blendshapes, identity_latent, drop_e, drop_e if guide_identity else ~drop_e)
            both = [torch.cat(pair) for pair in zip(cond, uncond)]

            def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
                d_cond, d_uncond = self.model(torch.cat([x, x]), torch.cat([sigma, sigma]), *both).chunk(2)
                return cfg_combine(d_cond, d_uncond, guidance)

        out = heun_sample(denoise, noise, num_steps, generator=generator, **sampler)
        return out + identity_latent if self.cfg.target == "residual" else out

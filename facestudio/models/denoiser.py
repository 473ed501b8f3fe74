"""The conditional EDM denoiser of stage 2: encoders + 3D U-Net + EDM preconditioning.

D(x; sigma, expression, identity) denoises robust-normalised autodecoder latents (B, C, 8, 8, 8)
(normalise before training, de-normalise before G2 - REFERENCE.md sec. 1). The identity input
is the person's neutral latent in the same normalised space (radiance autodecoders) or the
person's fused neutral scan as a volume on the latent's grid (deformation autodecoders,
:func:`facestudio.models.deformation.identity_volume`).

With ``linear_mean`` (the tiny preset) the denoiser is D = m(e) + D_unet(x - m(e)), m a linear
function of the blendshapes initialised by ridge regression on the training latents
(:class:`ExpressionMean`): measured, the U-Net alone learned nothing from a few hundred
deformation latents in 800 steps (loss ~1, expressions worse than none) and with m the
expression error fell 65% below the unchanged scan (BENCHMARKS.md, issue 14).

What is diffused (``target``): the expression latent itself, as in 3DVADER (both presets), or
its *residual* from the person's neutral latent, which the sampler adds back (EDM's sigma_data is
then the residuals' own standard deviation, filled in from the training data). The residual looks
like the easier problem - an expression moves a face by millimetres - but measured on the
synthetic protocol it was worse in both runs: 2.29 and 1.83 mm expression error against 1.27
and 1.19 mm for the latent target with the neutral latent as input channels (BENCHMARKS.md,
`eval expression --targets latent,residual`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from facestudio.faces.arkit import NUM_BLENDSHAPES
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
    linear_mean: bool = False           # D = m(e) + D'(x - m(e)), m linear in the blendshapes (ExpressionMean)

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


class ExpressionMean(nn.Module):
    """m(e) = W e + b: a latent-shaped linear function of the 52 blendshape weights (a learned
    constant when the expression is dropped), zero at initialisation.

    Why: the denoiser's optimum at high noise is the conditional mean E[y | e, identity], and for
    deformation latents most of it is linear in e - a blendshape rig is a linear model of the
    same displacements (baseline (d) of `eval expression`). With D = m(e) + D'(x - m(e)) that
    part is one matrix learned by the EDM loss itself, and the U-Net models only what is left
    (identity-dependent, non-linear); the whole is still an EDM denoiser, sampled as usual. With a
    linear field decoder (autodecoder.LinearFieldDecoder, preset tiny) m is exactly a linear
    blendshape model of the decoded fields; through the convolutional G2 it was not, and a ridge
    map fitted to the decoded fields themselves beat the whole diffusion model (BENCHMARKS.md).
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape
        size = math.prod(shape)
        self.weight = nn.Parameter(torch.zeros(NUM_BLENDSHAPES, size))
        self.bias = nn.Parameter(torch.zeros(size))
        self.dropped = nn.Parameter(torch.zeros(size))

    @torch.no_grad()
    def fit(self, latents: torch.Tensor, blendshapes: torch.Tensor, ridge: float = 1e-3) -> None:
        """Start from the ridge-regression fit to the training latents (the dropped value: their
        mean): the EDM loss then refines a good m instead of growing one from zero by Adam's
        small steps. ``ridge`` is relative to the mean squared blendshape weight; the bias is not
        penalised."""
        x = torch.cat([blendshapes.double(), torch.ones(len(blendshapes), 1, dtype=torch.float64)], dim=1)
        penalty = torch.full((x.shape[1],), ridge * float((x[:, :-1] ** 2).sum(1).mean()), dtype=torch.float64)
        penalty[-1] = 0.0
        y = latents.reshape(len(latents), -1).double()
        solution = torch.linalg.solve(x.T @ x + torch.diag(penalty), x.T @ y)
        self.weight.copy_(solution[:-1])
        self.bias.copy_(solution[-1])
        self.dropped.copy_(y.mean(0))

    def forward(self, blendshapes: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        m = blendshapes.to(self.weight.dtype) @ self.weight + self.bias
        if drop is not None:
            m = torch.where(drop.to(m.device)[:, None], self.dropped.expand_as(m), m)
        return m.view(-1, *self.shape)


class ConditionalDenoiser(nn.Module):
    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        u, c = cfg.unet, cfg.conditioning
        identity_in = c.identity_input_channels or u.in_channels
        self.expression = ExpressionEncoder(u.context_dim, c.expression_hidden)
        self.identity = IdentityEncoder(identity_in, u.context_dim, c.identity_channels, c.identity_patch,
                                        u.resolution)
        self.model = EDMPrecond(UNet3D(u, identity_in + 1 if c.identity_volume else 0), cfg.sigma_data)
        self.mean = ExpressionMean(self.latent_shape) if cfg.linear_mean else None

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        r = self.cfg.unet.resolution
        return (self.cfg.unet.in_channels, r, r, r)

    def encode(self, blendshapes: torch.Tensor, identity: torch.Tensor,
               drop_expression: torch.Tensor | None = None, drop_identity: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, ...]:
        """The U-Net's conditions: tokens (B, 9 + 64, D), their mask (B, 9 + 64) - drops clear the
        mask only - and, with ``identity_volume``, the neutral latent as input channels."""
        te, me = self.expression(blendshapes, drop_expression)
        ti, mi = self.identity(identity, drop_identity)
        cond = (torch.cat([te, ti], dim=1), torch.cat([me, mi], dim=1))
        if self.cfg.conditioning.identity_volume:
            cond += (identity_volume(identity, drop_identity),)
        return cond

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, blendshapes: torch.Tensor,
                identity: torch.Tensor, drop_expression: torch.Tensor | None = None,
                drop_identity: torch.Tensor | None = None) -> torch.Tensor:
        """D(x; sigma) given the conditions; drop flags (B,) bool mask a condition out (CFG training)."""
        context = self.encode(blendshapes, identity, drop_expression, drop_identity)
        return self._denoise(x, sigma, context, self._mean(blendshapes, drop_expression))

    def _mean(self, blendshapes: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor | None:
        return None if self.mean is None else self.mean(blendshapes, drop)

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor, context: tuple[torch.Tensor, ...],
                 mean: torch.Tensor | None) -> torch.Tensor:
        """EDM's preconditioned network, around the expression's linear mean when there is one."""
        return self.model(x, sigma, *context) if mean is None else self._around_mean(x, sigma, mean, *context)

    def _around_mean(self, x: torch.Tensor, sigma: torch.Tensor, mean: torch.Tensor, *context: torch.Tensor
                     ) -> torch.Tensor:
        return mean + self.model(x - mean, sigma, *context)

    def diffused(self, latents: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """What the diffusion runs on for these (normalised) latents: themselves or their residual."""
        return latents - identity if self.cfg.target == "residual" else latents

    def loss(self, y: torch.Tensor, blendshapes: torch.Tensor, identity: torch.Tensor,
             drop_expression: torch.Tensor | None = None, drop_identity: torch.Tensor | None = None,
             generator: torch.Generator | None = None, p_mean: float = -1.2, p_std: float = 1.2) -> torch.Tensor:
        """Per-sample EDM training loss (edm.edm_loss; ln sigma ~ N(p_mean, p_std^2)) for expression
        latents ``y``, shape (B,)."""
        context = self.encode(blendshapes, identity, drop_expression, drop_identity)
        mean = self._mean(blendshapes, drop_expression)
        net, cond = (self.model, context) if mean is None else (self._around_mean, (mean, *context))
        return edm_loss(net, self.diffused(y, identity), *cond, p_mean=p_mean, p_std=p_std,
                        sigma_data=self.cfg.sigma_data, generator=generator)

    @torch.no_grad()
    def sample(self, blendshapes: torch.Tensor, identity: torch.Tensor, *, noise: torch.Tensor | None = None,
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
        device = identity.device
        if noise is None:
            noise = torch.randn((b, *self.latent_shape), generator=generator,
                                device=generator.device if generator is not None else device)
        noise = noise.to(device=device, dtype=identity.dtype)
        cond, mean = self.encode(blendshapes, identity), self._mean(blendshapes, None)
        if guidance == 1.0:
            def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
                return self._denoise(x, sigma, cond, mean)
        else:
            drop_e = torch.ones(b, dtype=torch.bool, device=device)
            uncond = self.encode(blendshapes, identity, drop_e, drop_e if guide_identity else ~drop_e)
            both = [torch.cat(pair) for pair in zip(cond, uncond)]
            means = None if mean is None else torch.cat([mean, self._mean(blendshapes, drop_e)])

            def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
                d_cond, d_uncond = self._denoise(torch.cat([x, x]), torch.cat([sigma, sigma]), both, means).chunk(2)
                return cfg_combine(d_cond, d_uncond, guidance)

        out = heun_sample(denoise, noise, num_steps, generator=generator, **sampler)
        return out + identity if self.cfg.target == "residual" else out

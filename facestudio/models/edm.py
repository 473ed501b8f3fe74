"""EDM: preconditioning, training loss, sigma schedule and the Heun sampler.

Karras, Aittala, Aila, Laine, "Elucidating the Design Space of Diffusion-Based Generative
Models" (NeurIPS 2022), Table 1 and Algorithms 1-2; written after NVlabs/edm's compact math.
3DVADER (REFERENCE.md sec. 1-2) trains its latent 3D U-Net with exactly this recipe.

Conventions: ``sigma`` is a per-sample tensor of shape (B,) (a scalar broadcasts); a *denoise*
callable maps ``(x, sigma) -> D(x; sigma)``, the denoised estimate, with the same shape as ``x``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

SIGMA_DATA = 0.5
Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _per_sample(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """sigma as (B, 1, ..., 1) so it broadcasts against x; float32 at least for the coefficients."""
    sigma = torch.as_tensor(sigma, device=x.device)
    dtype = torch.promote_types(sigma.dtype, torch.float32) if sigma.is_floating_point() else torch.float32
    return sigma.to(dtype).reshape(-1).expand(x.shape[0]).reshape(-1, *([1] * (x.ndim - 1)))


def precond_coefficients(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise) of Karras et al. Table 1 ("Ours") / eq. 7.

    c_in gives the network unit-variance input, c_skip/c_out make its target unit-variance and
    the error of F amplified as little as possible at every sigma; c_noise = ln(sigma)/4.
    """
    s2, sd2 = sigma ** 2, sigma_data ** 2
    return sd2 / (s2 + sd2), sigma * sigma_data / (s2 + sd2).sqrt(), 1 / (s2 + sd2).sqrt(), sigma.log() / 4


def loss_weight(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2 = 1 / c_out^2 (Table 1)."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


class EDMPrecond(nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise, ...) around any raw network F (eq. 7).

    ``net(x, c_noise, *cond, **cond_kw)`` gets c_noise with shape (B,); extra arguments are passed
    through untouched, so the same wrapper serves conditional and unconditional networks.
    """

    def __init__(self, net: nn.Module, sigma_data: float = SIGMA_DATA) -> None:
        super().__init__()
        self.net, self.sigma_data = net, sigma_data

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, *cond: Any, **cond_kw: Any) -> torch.Tensor:
        sigma = _per_sample(sigma, x)
        c_skip, c_out, c_in, c_noise = precond_coefficients(sigma, self.sigma_data)
        f = self.net((c_in * x).to(x.dtype), c_noise.flatten().to(x.dtype), *cond, **cond_kw)
        return (c_skip * x + c_out * f.to(c_skip.dtype)).to(x.dtype)


def edm_loss(denoiser: Callable[..., torch.Tensor], y: torch.Tensor, *cond: Any,
             p_mean: float = -1.2, p_std: float = 1.2, sigma_data: float = SIGMA_DATA,
             generator: torch.Generator | None = None, **cond_kw: Any) -> torch.Tensor:
    """Per-sample EDM loss (Karras et al. eq. 8 with Table 1's p_train and lambda), shape (B,).

    ln sigma ~ N(p_mean, p_std^2), n ~ N(0, sigma^2 I), loss = lambda(sigma) ||D(y + n; sigma) - y||^2,
    averaged over the elements of each sample (a constant factor of the squared norm, so the
    unit-scale weighting stays ~1 at initialisation). ``denoiser(x, sigma, *cond, **cond_kw)``.
    """
    shape = (y.shape[0],) + (1,) * (y.ndim - 1)
    rnd = torch.randn(shape, generator=generator, device=y.device, dtype=y.dtype)
    sigma = (rnd * p_std + p_mean).exp()
    n = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype) * sigma
    d = denoiser(y + n, sigma.flatten(), *cond, **cond_kw)
    return (loss_weight(sigma, sigma_data) * (d - y) ** 2).flatten(1).mean(1)


def sigma_steps(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """t_0 .. t_{N-1} of eq. 5 (sigma_max down to sigma_min, uniform in sigma^(1/rho)), then t_N = 0.

    rho = 7 shortens the steps near sigma_min where curvature is largest. N = 1 gives [sigma_max, 0].
    """
    i = torch.arange(num_steps, dtype=dtype)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    t = (a + i / max(num_steps - 1, 1) * (b - a)) ** rho
    return torch.cat([t, t.new_zeros(1)])


def cfg_combine(d_cond: torch.Tensor, d_uncond: torch.Tensor, weight: float) -> torch.Tensor:
    """Classifier-free guidance D_u + w (D_c - D_u), written as D_c + (w - 1)(D_c - D_u).

    Same value, but at w = 1 the second term is exactly zero, so the result is bit-identical to
    the conditional model (Ho & Salimans 2022; on denoised outputs, as in EDM-based samplers).
    """
    return d_cond if weight == 1.0 else d_cond + (weight - 1.0) * (d_cond - d_uncond)


def guided(cond: Denoise, uncond: Denoise, weight: float) -> Denoise:
    """A denoiser applying CFG with ``weight``; w = 1 returns ``cond`` itself (one call per step)."""
    if weight == 1.0:
        return cond
    return lambda x, sigma: cfg_combine(cond(x, sigma), uncond(x, sigma), weight)


def heun_step(denoise: Denoise, x: torch.Tensor, t_cur: torch.Tensor, t_next: torch.Tensor,
              second_order: bool = True) -> torch.Tensor:
    """x at t_next from x at t_cur along the probability-flow ODE dx/dt = (x - D(x; t)) / t (eq. 4
    with sigma(t) = t, s(t) = 1): an Euler step, then the trapezoidal (Heun) correction."""
    d_cur = (x - denoise(x, t_cur)) / t_cur
    x_next = x + (t_next - t_cur) * d_cur
    if not second_order:
        return x_next
    d_prime = (x_next - denoise(x_next, t_next)) / t_next
    return x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)


@torch.no_grad()
def heun_sample(denoise: Denoise, latents: torch.Tensor, num_steps: int = 18, sigma_min: float = 0.002,
                sigma_max: float = 80.0, rho: float = 7.0, s_churn: float = 0.0, s_min: float = 0.0,
                s_max: float = float("inf"), s_noise: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Karras et al. Algorithm 2 (Algorithm 1 when s_churn = 0): the EDM 2nd-order sampler.

    ``latents`` is the standard-normal initial noise (x_0 = latents * t_0), which alone fixes the
    result when s_churn = 0: the probability-flow ODE is deterministic, so the same seed with
    nearby conditions gives nearby samples. Every step is a :func:`heun_step`, first-order only
    into t_N = 0 (where dx/dt is undefined): 2N - 1 calls of ``denoise``. Churn raises t_i to
    t_hat = (1 + gamma) t_i with fresh noise from ``generator`` (on the latents' device; gamma =
    min(s_churn / N, sqrt 2 - 1) for t_i in [s_min, s_max]). The ODE is integrated in float64;
    ``denoise`` receives x in the latents' dtype and sigma of shape (B,).
    """
    t = sigma_steps(num_steps, sigma_min, sigma_max, rho).to(latents.device)
    b, dtype = latents.shape[0], latents.dtype

    def d(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return denoise(x.to(dtype), sigma.to(dtype).expand(b)).to(torch.float64)

    x = latents.to(torch.float64) * t[0]
    for i, (t_cur, t_next) in enumerate(zip(t[:-1], t[1:])):
        gamma = min(s_churn / num_steps, math.sqrt(2) - 1) if s_min <= t_cur <= s_max else 0.0
        t_hat = t_cur + gamma * t_cur
        if gamma > 0:
            eps = torch.randn(x.shape, generator=generator, dtype=torch.float64, device=x.device)
            x = x + (t_hat ** 2 - t_cur ** 2).sqrt() * s_noise * eps
        x = heun_step(d, x, t_hat, t_next, second_order=i < num_steps - 1)
    return x.to(dtype)

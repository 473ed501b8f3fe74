"""EDM math against hand-computed values (Karras et al. 2022, Table 1, eq. 5, Algorithm 1-2)."""

from __future__ import annotations

import math

import pytest
import torch

from facestudio.models.edm import (EDMPrecond, cfg_combine, edm_loss, guided, heun_sample, heun_step, loss_weight,
                                   precond_coefficients, sigma_steps)

SD = 0.5


def optimal(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The exact denoiser for data ~ N(0, SD^2): E[y | y + n] = x SD^2 / (sigma^2 + SD^2)."""
    s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return x * SD ** 2 / (s ** 2 + SD ** 2)


def exact_flow(x0: torch.Tensor, t0: float, t: float) -> torch.Tensor:
    """Closed-form ODE solution for that denoiser: dx/dt = x t / (t^2 + SD^2)."""
    return x0 * math.sqrt(t ** 2 + SD ** 2) / math.sqrt(t0 ** 2 + SD ** 2)


@pytest.mark.parametrize("sigma, c_skip, c_out, c_in, c_noise", [
    # 0.25 / (s^2 + 0.25), 0.5 s / sqrt(s^2 + 0.25), 1 / sqrt(s^2 + 0.25), ln(s) / 4
    (0.5, 0.5, 0.25 / math.sqrt(0.5), 1 / math.sqrt(0.5), -0.17328679513998632),
    (1.0, 0.2, 0.5 / math.sqrt(1.25), 1 / math.sqrt(1.25), 0.0),
    (80.0, 3.906097418069607e-05, 40 / math.sqrt(6400.25), 1 / math.sqrt(6400.25), 1.0955066586684703),
])
def test_preconditioning_coefficients(sigma, c_skip, c_out, c_in, c_noise):
    got = precond_coefficients(torch.tensor(sigma, dtype=torch.float64))
    assert [g.item() for g in got] == pytest.approx([c_skip, c_out, c_in, c_noise], rel=1e-12, abs=1e-15)


def test_precond_wraps_network():
    seen = {}

    def net(x_in, c_noise, token):
        seen.update(x_in=x_in, c_noise=c_noise, token=token)
        return torch.full_like(x_in, 2.0)

    x = torch.ones(2, 3, 4, 4, 4)
    d = EDMPrecond(net)(x, torch.tensor([1.0, 0.5]), "cond")
    assert seen["token"] == "cond"
    assert torch.allclose(seen["x_in"][0], torch.full((3, 4, 4, 4), 1 / math.sqrt(1.25)))
    assert torch.allclose(seen["c_noise"], torch.tensor([0.0, math.log(0.5) / 4]))
    # D = c_skip * 1 + c_out * 2
    assert torch.allclose(d[0], torch.full((3, 4, 4, 4), 0.2 + 2 * 0.5 / math.sqrt(1.25)))
    assert torch.allclose(d[1], torch.full((3, 4, 4, 4), 0.5 + 2 * 0.25 / math.sqrt(0.5)))


def test_loss_weight_values():
    assert loss_weight(torch.tensor(1.0)).item() == pytest.approx(5.0)        # 1.25 / 0.25
    assert loss_weight(torch.tensor(0.5)).item() == pytest.approx(8.0)        # 0.5 / 0.0625
    s = torch.tensor([0.002, 0.3, 80.0], dtype=torch.float64)
    assert torch.allclose(loss_weight(s), 1 / precond_coefficients(s)[1] ** 2)


def test_edm_loss_sigma_noise_and_weighting():
    y = torch.randn(4096, 2, 2, 2, 2, generator=torch.Generator().manual_seed(1)) * SD
    seen = {}

    def denoiser(x, sigma):
        seen.update(sigma=sigma, noise=x - y)
        return y + 0.1                                    # constant error: ||D - y||^2 per element = 0.01

    loss = edm_loss(denoiser, y, generator=torch.Generator().manual_seed(0))
    sigma = seen["sigma"]
    assert loss.shape == (4096,)
    assert torch.allclose(loss, loss_weight(sigma) * 0.01, rtol=1e-4)
    ln = sigma.log()
    assert ln.mean().item() == pytest.approx(-1.2, abs=0.06) and ln.std().item() == pytest.approx(1.2, abs=0.06)
    z = seen["noise"] / sigma.reshape(-1, 1, 1, 1, 1)
    assert z.mean().item() == pytest.approx(0.0, abs=0.02) and z.std().item() == pytest.approx(1.0, abs=0.02)


def test_optimal_denoiser_has_unit_weighted_loss():
    """For N(0, SD^2) data the optimal D's weighted error is exactly 1 in expectation at every sigma
    (lambda = 1/c_out^2 and the posterior variance is c_out^2): the weighting Table 1 aims for."""
    y = torch.randn(200_000, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * SD
    loss = edm_loss(optimal, y, generator=torch.Generator().manual_seed(3))
    assert loss.mean().item() == pytest.approx(1.0, rel=0.02)


def test_sigma_schedule_closed_form():
    t = sigma_steps(18)
    assert t.shape == (19,) and t.dtype == torch.float64
    assert t[0].item() == pytest.approx(80.0, rel=1e-12)
    assert t[-2].item() == pytest.approx(0.002, rel=1e-12)
    assert t[-1].item() == 0.0
    assert bool((t[1:] < t[:-1]).all())
    a, b = 80 ** (1 / 7), 0.002 ** (1 / 7)
    closed = [(a + i / 17 * (b - a)) ** 7 for i in range(18)] + [0.0]
    assert t.tolist() == pytest.approx(closed, rel=1e-12)
    # N = 3 by hand: the middle value is ((80^(1/7) + 0.002^(1/7)) / 2)^7
    assert sigma_steps(3).tolist() == pytest.approx([80.0, 2.515218976147159, 0.002, 0.0], rel=1e-12)


def test_one_euler_and_one_heun_step_by_hand():
    """t = 2 -> 1 from x = 1: slope x t / (t^2 + 0.25) is 2/4.25 at t = 2 and 0.52941/1.25 at t = 1."""
    x, t0, t1 = torch.ones(1, 1, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64), torch.tensor(1.0)
    euler = heun_step(optimal, x, t0, t1, second_order=False).item()
    heun = heun_step(optimal, x, t0, t1).item()
    assert euler == pytest.approx(1 - 2 / 4.25, rel=1e-12)                            # 0.529412
    assert heun == pytest.approx(1 - 0.5 * (2 / 4.25 + (1 - 2 / 4.25) / 1.25), rel=1e-12)  # 0.552941
    exact = exact_flow(x, 2.0, 1.0).item()                                            # 0.542326
    assert abs(heun - exact) < abs(euler - exact)


def test_sampler_follows_the_exact_flow_with_second_order_convergence():
    """Against the closed-form x(0): Heun's error falls ~4x per doubling of N (2nd order), Euler's ~2x."""
    z = torch.randn(8, 1, 2, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = exact_flow(z * 80.0, 80.0, 0.0)                 # x(0) = x(80) * 0.5 / sqrt(6400.25)

    def err(x: torch.Tensor) -> float:
        return ((x - target).norm() / target.norm()).item()

    def euler(n: int) -> torch.Tensor:
        t, x = sigma_steps(n), z * 80.0
        for t_cur, t_next in zip(t[:-1], t[1:]):
            x = heun_step(optimal, x, t_cur, t_next, second_order=False)
        return x

    heun_32, heun_64 = err(heun_sample(optimal, z, 32)), err(heun_sample(optimal, z, 64))
    euler_32, euler_64 = err(euler(32)), err(euler(64))
    assert heun_64 < 0.005 and heun_64 < euler_64 / 10
    assert 3.5 < heun_32 / heun_64 < 4.5
    assert 1.7 < euler_32 / euler_64 < 2.3


@pytest.mark.parametrize("steps", [1, 2, 5, 18])
def test_sampler_makes_2n_minus_1_calls(steps):
    calls = []

    def counting(x, sigma):
        calls.append(sigma)
        assert sigma.shape == (3,)
        return optimal(x, sigma)

    heun_sample(counting, torch.randn(3, 2), num_steps=steps)
    assert len(calls) == 2 * steps - 1
    calls.clear()
    heun_sample(counting, torch.randn(3, 2), num_steps=steps, s_churn=10.0, generator=torch.Generator())
    assert len(calls) == 2 * steps - 1


def test_cfg_weight_one_is_the_conditional_model():
    def cond(x, sigma):
        return optimal(x, sigma) + 0.3

    def uncond(x, sigma):
        raise AssertionError("w = 1 must not call the unconditional model")

    x, s = torch.randn(4, 3), torch.full((4,), 0.7)
    assert torch.equal(guided(cond, uncond, 1.0)(x, s), cond(x, s))
    d_c, d_u = torch.randn(5, 7), torch.randn(5, 7)
    assert torch.equal(cfg_combine(d_c, d_u, 1.0), d_c)
    assert torch.allclose(cfg_combine(d_c, d_u, 3.0), d_u + 3.0 * (d_c - d_u), atol=1e-6)
    assert torch.allclose(cfg_combine(d_c, d_u, 0.0), d_u, atol=1e-6)
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(heun_sample(guided(cond, uncond, 1.0), z, 6), heun_sample(cond, z, 6))


def test_sampler_is_deterministic():
    z = torch.randn(2, 3, 2, 2, 2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(heun_sample(optimal, z, 8), heun_sample(optimal, z, 8))
    churn = dict(num_steps=8, s_churn=40.0, s_min=0.05, s_max=50.0)
    a = heun_sample(optimal, z, generator=torch.Generator().manual_seed(5), **churn)
    b = heun_sample(optimal, z, generator=torch.Generator().manual_seed(5), **churn)
    c = heun_sample(optimal, z, generator=torch.Generator().manual_seed(6), **churn)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == z.dtype and a.shape == z.shape

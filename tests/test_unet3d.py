"""3D U-Net, conditioning encoders and the conditional EDM denoiser: shapes, masking, CFG, learning."""

from __future__ import annotations

import pytest
import tomli_w
import torch

from facestudio.faces.arkit import BLENDSHAPE_NAMES
from facestudio.models.conditioning import EXPRESSION_TOKENS, REGIONS, ConditionDropout, ConditioningConfig
from facestudio.models.config import config_from_toml, to_dict
from facestudio.models.denoiser import ConditionalDenoiser, DenoiserConfig, paper, tiny
from facestudio.models.edm import cfg_combine, heun_sample
from facestudio.models.unet3d import Block, UNet3D, UNet3DConfig


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are small: one thread is as fast and immune to other processes' load
    (two OpenMP threads on a busy 2-core machine slow down ~10x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def micro(channels: int = 2, identity_volume: bool = False) -> DenoiserConfig:
    return DenoiserConfig(
        UNet3DConfig(in_channels=channels, model_channels=16, num_blocks=1, attention_resolutions=[4],
                     head_channels=16, context_dim=32),
        ConditioningConfig(expression_hidden=32, identity_channels=16, identity_volume=identity_volume))


def randomize_zero_init(module: torch.nn.Module) -> torch.nn.Module:
    """The zero-initialised output layers make an untrained F identically 0; give them weights."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return module


def inputs(cfg: DenoiserConfig, b: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (b, cfg.unet.in_channels, 8, 8, 8)
    return torch.randn(shape, generator=g), torch.rand(b, 52, generator=g), torch.randn(shape, generator=g)


def test_regions_cover_every_blendshape_once():
    names = [n for group in REGIONS.values() for n in group]
    assert sorted(names) == sorted(BLENDSHAPE_NAMES)
    assert EXPRESSION_TOKENS == 9


def test_tiny_shapes():
    cfg = tiny()
    model = ConditionalDenoiser(cfg)
    x, bs, ident = inputs(cfg, 2)
    tokens, mask, volume = model.encode(bs, ident)
    assert tokens.shape == (2, 9 + 64, 128) and mask.shape == (2, 73) and mask.dtype == torch.bool
    assert volume.shape == (2, 64 + 1, 8, 8, 8) and torch.equal(volume[:, :64], ident) and (volume[:, 64] == 1).all()
    out = model(x, torch.tensor([0.3, 4.0]), bs, ident)
    assert out.shape == x.shape == (2, 64, 8, 8, 8)
    # No tokens: the null token only; the condition volume is required.
    assert model.model.net(x, torch.zeros(2), volume=volume).shape == x.shape
    with pytest.raises(ValueError, match="65-channel condition volume"):
        model.model.net(x, torch.zeros(2))
    assert sum(p.numel() for p in model.parameters()) < 5e6


def test_paper_sized_forward():
    cfg = paper()
    model = ConditionalDenoiser(cfg).eval()
    unet = model.model.net
    assert unet.conv_in.weight.shape == (192, 256 + 257, 3, 3, 3)                      # latent + identity volume
    assert unet.mid[0].res.conv1.weight.shape == (384, 384, 3, 3, 3)                  # 4^3 level: 2 x 192
    assert sum(isinstance(m, Block) for m in unet.down) == 6                            # 3 blocks x 2 levels
    assert unet.down[0].attn is not None and unet.down[-1].attn is not None           # attention at 8^3 and 4^3
    x, bs, ident = inputs(cfg, 1)
    with torch.no_grad():
        assert model(x, torch.tensor([1.0]), bs, ident).shape == (1, 256, 8, 8, 8)


def test_cross_attention_ignores_masked_tokens():
    cfg = micro()
    unet = randomize_zero_init(UNet3D(cfg.unet)).eval()
    g = torch.Generator().manual_seed(1)
    x, c_noise = torch.randn(2, 2, 8, 8, 8, generator=g), torch.tensor([0.1, -0.5])
    context = torch.randn(2, 6, 32, generator=g)
    mask = torch.tensor([[True, True, False, True, False, False], [False, True, True, True, True, True]])
    with torch.no_grad():
        base = unet(x, c_noise, context, mask)
        masked_changed = context.clone()
        masked_changed[~mask] = torch.randn(int((~mask).sum()), 32, generator=g) * 10
        assert torch.allclose(unet(x, c_noise, masked_changed, mask), base, atol=1e-6)
        present_changed = context.clone()
        present_changed[0, 1] += 1.0
        out = unet(x, c_noise, present_changed, mask)
        assert (out[0] - base[0]).abs().max() > 1e-3
        assert torch.allclose(out[1], base[1], atol=1e-6)                           # samples stay independent
        # Everything masked: well defined (the null token) and equal to having no tokens at all.
        none = torch.zeros_like(mask)
        empty = unet(x, c_noise, context, none)
        assert torch.isfinite(empty).all()
        assert torch.allclose(empty, unet(x, c_noise, masked_changed * 3, none), atol=1e-6)
        assert torch.allclose(empty, unet(x, c_noise), atol=1e-5)   # other SDPA path: rounding only


@pytest.mark.parametrize("identity_volume", [False, True])
def test_dropping_a_condition_removes_its_influence(identity_volume):
    cfg = micro(identity_volume=identity_volume)
    model = randomize_zero_init(ConditionalDenoiser(cfg)).eval()
    x, bs, ident = inputs(cfg, 2)
    _, bs2, ident2 = inputs(cfg, 2, seed=5)
    sigma, yes, no = torch.tensor([0.5, 2.0]), torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        def d(b, i, drop_e, drop_i):
            return model(x, sigma, b, i, drop_e, drop_i)

        assert torch.allclose(d(bs, ident, yes, no), d(bs2, ident, yes, no), atol=1e-6)
        assert torch.allclose(d(bs, ident, no, yes), d(bs, ident2, no, yes), atol=1e-6)
        assert (d(bs, ident, no, no) - d(bs2, ident, no, no)).abs().max() > 1e-4
        assert (d(bs, ident, no, no) - d(bs, ident2, no, no)).abs().max() > 1e-4
        # A neutral expression (all zeros) is a condition, not the same as a dropped one.
        zeros = torch.zeros_like(bs)
        assert (d(zeros, ident, no, no) - d(zeros, ident, yes, no)).abs().max() > 1e-4


def test_gradients_reach_the_conditioning_encoders():
    cfg = micro()
    model = randomize_zero_init(ConditionalDenoiser(cfg))
    y, bs, ident = inputs(cfg, 2)
    model.loss(y, bs, ident, generator=torch.Generator().manual_seed(0)).mean().backward()
    for encoder in (model.expression, model.identity):
        assert all(p.grad is not None and p.grad.abs().max() > 0 for p in encoder.parameters())
    model.zero_grad(set_to_none=True)
    drop = torch.ones(2, dtype=torch.bool)
    model.loss(y, bs, ident, drop, drop, generator=torch.Generator().manual_seed(0)).mean().backward()
    for encoder in (model.expression, model.identity):                  # dropped conditions: no signal
        assert all(p.grad is None or not p.grad.any() for p in encoder.parameters())


def test_condition_dropout_rates_and_determinism():
    dropout = ConditionDropout(p_expression=0.2, p_identity=0.5)
    drop_e, drop_i = dropout(20_000, generator=torch.Generator().manual_seed(0))
    assert drop_e.dtype == torch.bool and drop_e.shape == (20_000,)
    assert drop_e.float().mean().item() == pytest.approx(0.2, abs=0.015)
    assert drop_i.float().mean().item() == pytest.approx(0.5, abs=0.015)
    assert (drop_e & drop_i).float().mean().item() == pytest.approx(0.1, abs=0.015)   # independent
    again = dropout(20_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(drop_e, again[0]) and torch.equal(drop_i, again[1])


def test_cfg_weight_one_is_the_conditional_model_and_batched_cfg_is_exact():
    cfg = micro()
    model = randomize_zero_init(ConditionalDenoiser(cfg)).eval()
    noise, bs, ident = inputs(cfg, 2, seed=3)
    conditional = heun_sample(lambda x, s: model(x, s, bs, ident), noise, num_steps=4)
    assert torch.equal(model.sample(bs, ident, noise=noise, num_steps=4, guidance=1.0), conditional)

    drop = torch.ones(2, dtype=torch.bool)

    def two_calls(x, s):
        return cfg_combine(model(x, s, bs, ident), model(x, s, bs, ident, drop, drop), 2.5)

    expected = heun_sample(two_calls, noise, num_steps=4)
    got = model.sample(bs, ident, noise=noise, num_steps=4, guidance=2.5)
    assert (got - expected).abs().max() < 1e-4 * expected.abs().max()     # batch-size-dependent rounding only
    assert (got - conditional).abs().max() > 1e-3


def test_residual_target_diffuses_the_difference_and_adds_the_neutral_back():
    latent_cfg = micro(identity_volume=True)
    residual_cfg = micro(identity_volume=True)
    residual_cfg.target = "residual"
    latent = randomize_zero_init(ConditionalDenoiser(latent_cfg)).eval()
    residual = ConditionalDenoiser(residual_cfg).eval()
    residual.load_state_dict(latent.state_dict())          # the same network, another target
    noise, bs, ident = inputs(latent_cfg, 2, seed=4)
    y = ident + 0.05 * noise
    gen = lambda: torch.Generator().manual_seed(9)  # noqa: E731
    with torch.no_grad():
        assert torch.equal(residual.loss(y, bs, ident, generator=gen()), latent.loss(y - ident, bs, ident, generator=gen()))
        got = residual.sample(bs, ident, noise=noise, num_steps=3)
        assert torch.allclose(got, latent.sample(bs, ident, noise=noise, num_steps=3) + ident, atol=1e-6)


def test_linear_mean_fit_recovers_a_linear_latent_and_the_untrained_unet_samples_it():
    """m(e) fitted by ridge regression reproduces latents linear in the blendshapes; with the
    U-Net still at its zero output (D = m + c_skip (x - m), the optimal denoiser of N(m, sigma_data^2))
    the sampler lands on m(e) + sigma_data * noise."""
    cfg = micro()
    cfg.linear_mean = True
    model = ConditionalDenoiser(cfg).eval()
    g = torch.Generator().manual_seed(3)
    weights, bias = torch.randn(52, 2 * 8 ** 3, generator=g), torch.randn(2 * 8 ** 3, generator=g)
    bs = torch.rand(80, 52, generator=g)
    latents = (bs @ weights + bias).view(80, 2, 8, 8, 8)
    model.mean.fit(latents, bs, ridge=1e-8)
    torch.testing.assert_close(model.mean(bs[:5]), latents[:5], atol=1e-3, rtol=1e-3)
    dropped = model.mean(bs[:2], torch.tensor([True, False]))
    torch.testing.assert_close(dropped[0], latents.mean(0), atol=1e-4, rtol=1e-4)   # no expression: the mean
    torch.testing.assert_close(dropped[1], latents[1], atol=1e-3, rtol=1e-3)
    noise, _, ident = inputs(cfg, 2, seed=5)
    with torch.no_grad():
        got = model.sample(bs[:2], ident, noise=noise, num_steps=32)
    torch.testing.assert_close(got - latents[:2], 0.5 * noise, atol=0.15, rtol=0)   # Heun, 32 steps: ~2% off
    # the mean is part of the denoiser: the EDM loss reaches it
    model.train()
    model.loss(latents[:4], bs[:4], ident[:1].expand(4, -1, -1, -1, -1)).mean().backward()
    assert model.mean.weight.grad is not None and model.mean.weight.grad.abs().sum() > 0


def test_residual_target_takes_sigma_data_from_the_training_residuals():
    from facestudio.models.diffusion_config import tiny as diffusion_tiny

    cfg = diffusion_tiny()
    assert cfg.denoiser.target == "latent"
    assert cfg.for_latents(16, 8, residual_std=0.07).denoiser.sigma_data == 0.5      # EDM's default stays
    cfg.denoiser.target = "residual"
    assert cfg.for_latents(16, 8, residual_std=0.07).denoiser.sigma_data == pytest.approx(0.07)


def test_generation_is_deterministic_for_a_seed():
    cfg = micro()
    model = randomize_zero_init(ConditionalDenoiser(cfg)).eval()
    _, bs, ident = inputs(cfg, 1)

    def run(seed: int, **kw) -> torch.Tensor:
        return model.sample(bs, ident, generator=torch.Generator().manual_seed(seed), num_steps=3, guidance=2.0, **kw)

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    assert torch.equal(run(7, s_churn=5.0), run(7, s_churn=5.0))
    assert run(0).shape == (1, 2, 8, 8, 8)


def test_config_round_trips_through_toml():
    cfg = paper()
    back = config_from_toml(tomli_w.dumps(to_dict(cfg)), DenoiserConfig)
    assert back == cfg
    with pytest.raises(ValueError, match="attention_resolutions"):
        UNet3DConfig(attention_resolutions=[16]).validate()


def test_tiny_unet_overfits_four_latents():
    """EDM loss (fixed evaluation draws of sigma and noise) of 4 smooth latents with fixed, distinct
    conditions falls > 3.5x in 200 Adam steps: the network, preconditioning and loss learn together."""
    torch.manual_seed(0)
    cfg = micro()
    model = ConditionalDenoiser(cfg)
    g = torch.Generator().manual_seed(0)
    y = torch.nn.functional.interpolate(torch.randn(4, 2, 2, 2, 2, generator=g), size=8, mode="trilinear")
    y = 0.5 * y / y.std()                                      # data at sigma_data
    bs, ident = torch.rand(4, 52, generator=g), torch.randn(4, 2, 8, 8, 8, generator=g)

    def repeat(n: int) -> tuple[torch.Tensor, ...]:
        return y.repeat(n, 1, 1, 1, 1), bs.repeat(n, 1), ident.repeat(n, 1, 1, 1, 1)

    def eval_loss() -> float:
        with torch.no_grad():
            return model.loss(*repeat(8), generator=torch.Generator().manual_seed(123)).mean().item()

    initial = eval_loss()
    assert initial == pytest.approx(1.0, abs=0.15)              # D = c_skip x at init: weighted loss ~1
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        loss = model.loss(*repeat(2), generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert eval_loss() < initial / 3.5

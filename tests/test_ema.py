"""The weight average generation samples with (models.ema): EDM's decay, the update, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from facestudio.models.ema import WeightAverage, inference_weights, live


def test_beta_follows_edms_ramped_half_life():
    avg = WeightAverage(nn.Linear(2, 2), halflife_steps=500, rampup=0.05)
    assert avg.beta(100) == pytest.approx(0.5 ** (1 / 5))        # ramp-up: half-life 0.05 * 100 = 5 steps
    assert avg.beta(20_000) == pytest.approx(0.5 ** (1 / 500))   # capped at 500 steps
    assert WeightAverage(nn.Linear(2, 2), 0, 0.05).beta(10) == 0.0   # off: the average is the live weights
    assert WeightAverage(nn.Linear(2, 2), 8, 0).beta(1) == pytest.approx(0.5 ** (1 / 8))   # no ramp-up


def test_update_moves_the_average_towards_the_live_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    avg = WeightAverage(model, halflife_steps=4, rampup=0)
    before = avg.shadow[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(2.0)
    avg.update(model, step=1)
    beta = 0.5 ** (1 / 4)
    assert torch.allclose(avg.shadow[0].weight, beta * before + (1 - beta) * model[0].weight)
    assert torch.equal(avg.shadow[1].running_mean, model[1].running_mean)   # buffers are copied
    assert not avg.shadow[0].weight.requires_grad


def test_checkpoint_weights_round_trip_and_old_checkpoints_keep_their_live_weights():
    model = nn.Linear(2, 2)
    avg = WeightAverage(model, 10, 0)
    with torch.no_grad():
        avg.shadow.weight.fill_(7.0)
    saved = {**model.state_dict(), **avg.state_dict()}
    assert set(saved) == {"weight", "bias", "ema.weight", "ema.bias"}
    assert torch.equal(inference_weights(saved)["weight"], torch.full((2, 2), 7.0))
    assert live(saved).keys() == model.state_dict().keys()
    old = inference_weights(model.state_dict())                          # a run from before the average
    assert old.keys() == {"weight", "bias"} and torch.equal(old["weight"], model.weight)
    fresh = WeightAverage(nn.Linear(2, 2), 10, 0)
    fresh.load(model.state_dict(), model)                                 # resuming such a run
    assert torch.equal(fresh.shadow.weight, model.weight)

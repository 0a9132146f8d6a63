"""GHM-C and GHM-R against float64 transcriptions of mmdetection's formulas.

Provenance: mmdetection ``mmdet/models/losses/ghm_loss.py`` (``GHMC`` and ``GHMR`` with
``momentum=0``): edges ``arange(bins + 1) / bins`` with the last edge raised past 1, one pass per
bin, ``weights[inds] = tot / num_in_bin``, the weights divided by the number of non-empty bins,
the weighted sum divided by ``tot`` (GHM-C: BCE with logits; GHM-R: ``sqrt(d^2 + mu^2) - mu``).
mmcv cannot be installed here, so the formulas are written out below in plain float64 loops.
"""

from __future__ import annotations

import math

import pytest
import torch

import losskit


def _mmdet_weights(g: torch.Tensor, valid: torch.Tensor, bins: int, tot: float, last_edge: float) -> torch.Tensor:
    edges = [i / bins for i in range(bins + 1)]
    edges[-1] = last_edge
    weights = torch.zeros_like(g)
    filled = 0
    for i in range(bins):
        inds = (g >= edges[i]) & (g < edges[i + 1]) & valid
        count = int(inds.sum())
        if count > 0:
            weights[inds] = tot / count
            filled += 1
    return weights / filled if filled else weights


def _mmdet_ghmc(pred, target, label_weight, bins=10):
    g = (torch.sigmoid(pred) - target).abs()
    valid = label_weight > 0
    tot = max(float(valid.sum()), 1.0)
    weights = _mmdet_weights(g, valid, bins, tot, 1.0 + 1e-6)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(pred, target, weights, reduction="sum")
    return bce / tot


def _mmdet_ghmr(pred, target, label_weight, mu=0.02, bins=10):
    diff = pred - target
    loss = torch.sqrt(diff * diff + mu * mu) - mu
    g = (diff / torch.sqrt(mu * mu + diff * diff)).abs()
    valid = label_weight > 0
    tot = max(float(label_weight.sum()), 1.0)
    weights = _mmdet_weights(g, valid, bins, tot, 1e3)
    return (loss * weights).sum() / tot


@pytest.mark.parametrize("bins", [10, 30, 1])
def test_ghmc_matches_mmdetection(bins):
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(64, 5, generator=gen, dtype=torch.float64) * 3
    target = (torch.rand(64, 5, generator=gen) < 0.2).double()
    label_weight = (torch.rand(64, 5, generator=gen) < 0.8).double()
    expected = _mmdet_ghmc(pred, target, label_weight, bins)
    ours = losskit.ghmc_loss(pred, target, bins=bins, weight=label_weight)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-12)
    unweighted = _mmdet_ghmc(pred, target, torch.ones_like(pred), bins)
    assert losskit.ghmc_loss(pred, target, bins=bins).item() == pytest.approx(unweighted.item(), rel=1e-12)


@pytest.mark.parametrize(("mu", "bins"), [(0.02, 10), (0.5, 4)])
def test_ghmr_matches_mmdetection(mu, bins):
    gen = torch.Generator().manual_seed(1)
    pred = torch.randn(50, 4, generator=gen, dtype=torch.float64) * 0.2
    target = torch.randn(50, 4, generator=gen, dtype=torch.float64) * 0.2
    label_weight = (torch.rand(50, 4, generator=gen) < 0.7).double()
    expected = _mmdet_ghmr(pred, target, label_weight, mu, bins)
    ours = losskit.ghmr_loss(pred, target, mu=mu, bins=bins, weight=label_weight)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-12)


def test_ghm_gradient_treats_the_density_as_constant():
    # d/dx of beta * BCE is beta * (sigmoid(x) - t): the bins are not differentiated (as mmdetection)
    gen = torch.Generator().manual_seed(2)
    pred = (torch.randn(40, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    target = (torch.rand(40, generator=gen) < 0.3).double()
    losskit.ghmc_loss(pred, target, reduction="sum").backward()
    beta = losskit.ghmc_loss(pred.detach(), target, reduction="none") / losskit.binary_cross_entropy(
        pred.detach(), target, reduction="none")
    torch.testing.assert_close(pred.grad, beta * (torch.sigmoid(pred.detach()) - target), rtol=1e-10, atol=0)


def test_ghmr_keeps_its_digits_for_tiny_residuals():
    # ASL1(d) = sqrt(d^2 + mu^2) - mu = d^2 / (2 mu) (1 - d^2 / (4 mu^2) + ...): 1e-8 / 0.04 at d = 1e-4
    pred = torch.tensor([1e-4], dtype=torch.float32)
    value = losskit.ghmr_loss(pred, torch.zeros(1), reduction="none")
    assert value.item() == pytest.approx(1e-8 / 0.04 * (1 - 1e-8 / (4 * 4e-4)), rel=1e-6)


def test_every_element_in_one_bin_gives_plain_bce_and_the_mean_of_the_weights_is_one():
    pred = torch.zeros(6, dtype=torch.float64)
    target = torch.ones(6, dtype=torch.float64)  # g = 0.5 for all: one bin, beta = 6 / 6 = 1
    assert losskit.ghmc_loss(pred, target).item() == pytest.approx(math.log(2), rel=1e-15)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(200, generator=gen, dtype=torch.float64) * 4
    t = (torch.rand(200, generator=gen) < 0.5).double()
    beta = losskit.ghmc_loss(x, t, reduction="none") / losskit.binary_cross_entropy(x, t, reduction="none")
    assert beta.mean().item() == pytest.approx(1.0, rel=1e-12)

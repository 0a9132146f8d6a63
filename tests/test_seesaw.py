"""seesaw_loss against a float64 transcription of mmdetection's seesaw_ce_loss.

Provenance: mmdetection ``mmdet/models/losses/seesaw_loss.py``, ``seesaw_ce_loss``: with counts
clamped at 1, ``sample_ratio = N_j / N_i``, the mitigation factor ``ratio ** p`` where it is below
1 (else 1) taken at row ``y``; the compensation factor ``(score_j / max(score_y, eps)) ** q`` where
above 1 (else 1) from the softmax of the detached logits; ``x + log(weights) * (1 - one_hot)`` then
cross-entropy. mmcv cannot be installed here, so the formula is written out below.
"""

from __future__ import annotations

import pytest
import torch

import losskit


def _mmdet_seesaw(cls_score, labels, cum_samples, p=0.8, q=2.0, eps=1e-2):
    onehot = torch.nn.functional.one_hot(labels, cls_score.shape[1]).double()
    weights = torch.ones_like(cls_score)
    if p > 0:
        ratio = cum_samples[None, :].clamp(min=1) / cum_samples[:, None].clamp(min=1)
        index = (ratio < 1.0).double()
        weights = weights * (ratio.pow(p) * index + (1 - index))[labels]
    if q > 0:
        scores = torch.softmax(cls_score.detach(), 1)
        own = scores[torch.arange(len(scores)), labels]
        matrix = scores / own[:, None].clamp(min=eps)
        index = (matrix > 1.0).double()
        weights = weights * (matrix.pow(q) * index + (1 - index))
    adjusted = cls_score + weights.log() * (1 - onehot)
    return torch.nn.functional.cross_entropy(adjusted, labels, reduction="none")


@pytest.mark.parametrize(("p", "q", "eps"), [(0.8, 2.0, 1e-2), (0.0, 2.0, 1e-2), (0.8, 0.0, 1e-2), (1.5, 1.0, 0.3)])
def test_seesaw_matches_mmdetection_values_and_its_detached_gradient(p, q, eps):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 6, generator=gen, dtype=torch.float64) * 3
    labels = torch.randint(6, (300,), generator=gen)
    counts = torch.tensor([5000.0, 800.0, 120.0, 30.0, 2.0, 0.0], dtype=torch.float64)
    ours_x, ref_x = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = losskit.seesaw_loss(ours_x, labels, class_counts=counts, p=p, q=q, eps=eps, detach_compensation=True,
                               reduction="none")
    expected = _mmdet_seesaw(ref_x, labels, counts, p, q, eps)
    # 1e-9: the transcription exponentiates, divides and takes logs of powers of probabilities, which
    # loses up to about 1e-10 relative where losskit stays in log space
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-15)
    ours.sum().backward()
    expected.sum().backward()
    # atol 1e-8: a few samples have another class's score within rounding of the true class's, the
    # kink of the compensation factor, where the two forms decide the branch differently
    torch.testing.assert_close(ours_x.grad, ref_x.grad, rtol=1e-9, atol=1e-8)
    # the default differentiates the compensation factor: same values, the true gradient
    same = losskit.seesaw_loss(logits, labels, class_counts=counts, p=p, q=q, eps=eps, reduction="none")
    torch.testing.assert_close(same, ours.detach(), rtol=1e-14, atol=0)


def test_with_both_factors_off_it_is_cross_entropy():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    labels = torch.randint(4, (50,), generator=gen)
    ours = losskit.seesaw_loss(logits, labels, class_counts=torch.ones(4), p=0.0, q=0.0)
    assert ours.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-14)


def test_near_converged_keeps_its_digits_in_float32():
    # every other logit 20 behind: l = log(1 + sum_j S_j e^-20) with S_j = (N_j / N_y)^0.8 <= 1
    logits = torch.tensor([[20.0, 0.0, 0.0]])
    counts = torch.tensor([100.0, 100.0, 10.0])
    expected = torch.log1p((1 + 0.1**0.8) * torch.exp(torch.tensor(-20.0, dtype=torch.float64)))
    value = losskit.seesaw_loss(logits, torch.tensor([0]), class_counts=counts)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)

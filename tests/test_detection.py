"""Dense-detection losses against independent references, hand-worked values and peer conventions.

References used, per loss (``tests/reference_detection.py``, float64 loops written from the papers):
* varifocal: Zhang et al. 2021 Eq. 2; Ultralytics (label tensor, ``.mean(1).sum()``, RT-DETR
  alpha/gamma) and mmdetection (positives q > 0, avg_factor) from the math in peers.md 3.3.
* quality_focal: Li et al. 2020 Eq. 5; mmdetection's (label, score) form summed over classes (3.4).
* distribution_focal: Li et al. 2020 Eq. 6; Ultralytics' BboxLoss DFL term (16 bins, clamp 14.99,
  mean over sides) and mmdetection's GFLHead (17 bins, head clamp 15.9, avg_factor 4) (3.5, 4.1).
* gaussian_focal: CornerNet Eq. 1 / CenterNet, normalised by the number of peaks.
Ultralytics golden vectors are produced separately into tests/golden/.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import losskit
from tests import reference_detection as ref

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)
LOSSES = ["varifocal_loss", "quality_focal_loss", "distribution_focal_loss", "gaussian_focal_loss"]


def close(actual, expected, rtol=1e-7, atol=1e-9):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=rtol, atol=atol)


def t64(values):
    return torch.tensor(values, dtype=torch.float64)


def quality_targets(gen, shape, fraction=0.3):
    """IoU-like scores on a fraction of the entries, 0 elsewhere."""
    positive = torch.rand(shape, generator=gen) < fraction
    score = torch.rand(shape, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    return torch.where(positive, score, torch.zeros_like(score))


# --- hand-worked values -------------------------------------------------------------------------


def test_varifocal_hand_worked():
    # x = 0 (p = 1/2), q = 0.8: positive, weight q; BCE(0, q) = ln 2 for any q  -> 0.8 ln 2
    # x = ln 3 (p = 3/4), q = 0: weight 0.75 * (3/4)^2 = 0.421875; BCE = -ln(1/4) = ln 4
    # x = -ln 3 (p = 1/4), q = 0: weight 0.75 * (1/4)^2 = 0.046875; BCE = -ln(3/4)
    logits, q = t64([0.0, LN3, -LN3]), t64([0.8, 0.0, 0.0])
    expected = [0.8 * LN2, 0.421875 * LN4, 0.046875 * -math.log(0.75)]  # 0.55452, 0.58484, 0.01349
    close(losskit.varifocal_loss(logits, q, reduction="none"), expected)
    close(losskit.varifocal_loss(logits, q), sum(expected) / 3)
    close(losskit.varifocal_loss(logits, q, reduction="sum"), sum(expected))


def test_quality_focal_hand_worked():
    # x = ln 3 (p = 3/4), q = 0.5: BCE = -(0.5 ln 0.75 + 0.5 ln 0.25) = 0.83698; |0.5 - 0.75|^2 = 1/16
    # x = 0 (p = 1/2), q = 0: BCE = ln 2; p^2 = 1/4
    logits, q = t64([LN3, 0.0]), t64([0.5, 0.0])
    expected = [-(0.5 * math.log(0.75) + 0.5 * math.log(0.25)) / 16, LN2 / 4]  # 0.05231, 0.17329
    close(losskit.quality_focal_loss(logits, q, reduction="none"), expected)


def test_distribution_focal_hand_worked():
    # logits [0, ln 2, ln 3] over 3 bins: softmax = [1, 2, 3] / 6
    # y = 0.25: bins 0 and 1 with weights 0.75 and 0.25 -> 0.75 ln 6 + 0.25 ln 3 = 1.61847
    # y = 2 (> 3 - 1 - 0.01): clamped to 1.99, bins 1 and 2 with weights 0.01 and 0.99
    #   -> 0.01 ln 3 + 0.99 ln 2 = 0.69720
    # y = 1.5 in a 2-side batch checks shapes: 0.5 ln 3 + 0.5 ln 2
    logits = t64([0.0, LN2, LN3]).expand(3, 3)
    target = t64([0.25, 2.0, 1.5])
    expected = [0.75 * math.log(6) + 0.25 * LN3, 0.01 * LN3 + 0.99 * LN2, 0.5 * LN3 + 0.5 * LN2]
    close(losskit.distribution_focal_loss(logits, target, reduction="none"), expected)
    # clamp_margin=0: y = 2 is the last bin exactly -> -log(1/2) = ln 2, no out-of-range bin
    close(losskit.distribution_focal_loss(logits[1], target[1], clamp_margin=0.0, reduction="none"), LN2)


def test_gaussian_focal_hand_worked():
    # x = ln 3 (p = 3/4), t = 1 (peak): (1 - 3/4)^2 * -ln(3/4) = 0.01798
    # x = ln 3, t = 0.5: (1 - 0.5)^4 * (3/4)^2 * -ln(1/4) = 0.0625 * 0.5625 * ln 4 = 0.04874
    # x = ln 3, t = 0: (3/4)^2 * ln 4 = 0.77979
    logits, heat = t64([LN3, LN3, LN3]), t64([1.0, 0.5, 0.0])
    expected = [0.0625 * -math.log(0.75), 0.0625 * 0.5625 * LN4, 0.5625 * LN4]
    close(losskit.gaussian_focal_loss(logits, heat, reduction="none"), expected)
    # pos_threshold=0.5 makes t = 0.5 a peak: (1/4)^2 * -ln(3/4)
    close(losskit.gaussian_focal_loss(logits, heat, pos_threshold=0.5, reduction="none")[1], expected[0])


# --- papers' formulas, random inputs ----------------------------------------------------------


@pytest.mark.parametrize(("alpha", "gamma"), [(0.75, 2.0), (0.25, 1.5), (0.5, 0.5)])
def test_varifocal_matches_reference(gen, alpha, gamma):
    logits = torch.randn(5, 6, 4, generator=gen, dtype=torch.float64) * 3
    q = quality_targets(gen, (5, 6, 4))
    close(losskit.varifocal_loss(logits, q, alpha=alpha, gamma=gamma, reduction="none"),
          ref.varifocal(logits, q, alpha=alpha, gamma=gamma))
    label = (torch.rand(5, 6, 4, generator=gen) < 0.4).double()
    close(losskit.varifocal_loss(logits, q * label, alpha=alpha, gamma=gamma, positives="label", label=label,
                                 reduction="none"),
          ref.varifocal(logits, q * label, alpha=alpha, gamma=gamma, label=label))


@pytest.mark.parametrize("beta", [2.0, 1.0, 0.5, 0.0])
def test_quality_focal_matches_reference(gen, beta):
    logits = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 3
    q = quality_targets(gen, (6, 5), fraction=0.5)
    close(losskit.quality_focal_loss(logits, q, beta=beta, reduction="none"), ref.quality_focal(logits, q, beta=beta))


@pytest.mark.parametrize(("bins", "margin"), [(16, 0.01), (17, 0.1), (5, 0.0), (2, 0.5)])
def test_distribution_focal_matches_reference(gen, bins, margin):
    logits = torch.randn(7, 4, bins, generator=gen, dtype=torch.float64) * 2
    target = torch.rand(7, 4, generator=gen, dtype=torch.float64) * (bins + 1)  # some above the clamp
    close(losskit.distribution_focal_loss(logits, target, clamp_margin=margin, reduction="none"),
          ref.distribution_focal(logits, target, clamp_max=bins - 1 - margin))


@pytest.mark.parametrize(("alpha", "gamma"), [(2.0, 4.0), (1.0, 2.0), (0.5, 0.0)])
def test_gaussian_focal_matches_reference(gen, alpha, gamma):
    logits = torch.randn(2, 3, 5, 5, generator=gen, dtype=torch.float64) * 3
    heat = torch.rand(2, 3, 5, 5, generator=gen, dtype=torch.float64) ** 2
    heat = torch.where(torch.rand(2, 3, 5, 5, generator=gen) < 0.1, torch.ones_like(heat), heat)
    close(losskit.gaussian_focal_loss(logits, heat, alpha=alpha, gamma=gamma, reduction="none"),
          ref.gaussian_focal(logits, heat, alpha=alpha, gamma=gamma))


def test_gradients_match_naive_autograd(gen):
    """Gradients against autograd through the probability-space formulas (moderate logits); VFL's
    weight is differentiated too (neither peer detaches it)."""
    x = torch.randn(4, 5, generator=gen, dtype=torch.float64) * 2
    q = quality_targets(gen, (4, 5), fraction=0.5)

    def bce(x, t):
        p = torch.sigmoid(x)
        return -(t * torch.log(p) + (1 - t) * torch.log(1 - p))

    def naive_vfl(x):
        p = torch.sigmoid(x)
        return (torch.where(q > 0, q, 0.75 * p**2) * bce(x, q)).sum()

    def naive_qfl(x):
        return (bce(x, q) * (q - torch.sigmoid(x)).abs() ** 2).sum()

    def naive_gfl(x):
        p = torch.sigmoid(x)
        peak = q > 0.9
        return torch.where(peak, -((1 - p) ** 2) * torch.log(p), -((1 - q) ** 4) * p**2 * torch.log(1 - p)).sum()

    heat = torch.where(q > 0.9, torch.ones_like(q), q)
    for ours, naive, target in [(losskit.varifocal_loss, naive_vfl, q), (losskit.quality_focal_loss, naive_qfl, q),
                                (losskit.gaussian_focal_loss, naive_gfl, heat)]:
        a = x.clone().requires_grad_()
        b = x.clone().requires_grad_()
        ours(a, target, reduction="sum").backward()
        naive(b).backward()
        close(a.grad, b.grad)
    # DFL: naive two cross-entropies.
    logits = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.rand(3, 4, generator=gen, dtype=torch.float64) * 4.8
    (grad,) = torch.autograd.grad(losskit.distribution_focal_loss(logits, y, reduction="sum"), logits)
    left = y.floor().long()
    flat = logits.reshape(-1, 6)
    naive = ((left + 1 - y).reshape(-1) * F.cross_entropy(flat, left.reshape(-1), reduction="none")
             + (y - left).reshape(-1) * F.cross_entropy(flat, left.reshape(-1) + 1, reduction="none")).sum()
    close(grad, torch.autograd.grad(naive, logits)[0])


# --- peer conventions ---------------------------------------------------------------------------


def test_varifocal_reproduces_ultralytics(gen):
    # Ultralytics VarifocalLoss(pred (B, A, C), gt_score, label): weight alpha p^gamma (1 - l) + q l,
    # then .mean(1).sum() -> normalizer=A.
    b, a, c = 2, 6, 3
    logits = torch.randn(b, a, c, generator=gen, dtype=torch.float64) * 2
    label = F.one_hot(torch.randint(c, (b, a), generator=gen), c).double() * (torch.rand(b, a, 1, generator=gen) < 0.5)
    gt_score = label * (torch.rand(b, a, 1, generator=gen, dtype=torch.float64) * 0.9 + 0.05)
    gt_score[0, 0] = 0.0  # a positive-class entry with q = 0 ...
    label[0, 0, 0] = 1.0  # ... gets weight 0 under this convention
    ours = losskit.varifocal_loss(logits, gt_score, positives="label", label=label, normalizer=a)
    close(ours, ref.varifocal_ultralytics(logits, gt_score, label))
    # RT-DETR: alpha 0.25, gamma 1.5, .mean(1).sum() divided by num_gts / nq -> normalizer=num_gts.
    num_gts = 5
    rtdetr = losskit.varifocal_loss(logits, gt_score, alpha=0.25, gamma=1.5, positives="label", label=label,
                                    normalizer=num_gts)
    close(rtdetr, ref.varifocal_ultralytics(logits, gt_score, label, alpha=0.25, gamma=1.5) / (num_gts / a))


def test_varifocal_conventions_differ_only_at_positive_class_entries_with_zero_score():
    # x = 0 everywhere. Entry 0: label 1, q = 0 -> Ultralytics weight 0 * ... = 0;
    # mmdetection (q > 0 defines positives) treats it as a negative: 0.75 * (1/2)^2 * ln 2 = 0.12997.
    logits, q, label = t64([0.0, 0.0, 0.0]), t64([0.0, 0.6, 0.0]), t64([1.0, 1.0, 0.0])
    ultralytics = losskit.varifocal_loss(logits, q, positives="label", label=label, reduction="none")
    mmdet = losskit.varifocal_loss(logits, q, reduction="none")
    close(ultralytics, [0.0, 0.6 * LN2, 0.1875 * LN2])
    close(mmdet, [0.1875 * LN2, 0.6 * LN2, 0.1875 * LN2])
    # With q > 0 exactly where label = 1, the two conventions agree.
    label = (q > 0).double()
    close(losskit.varifocal_loss(logits, q, positives="label", label=label, reduction="none"), mmdet)


def test_varifocal_reproduces_mmdetection(gen):
    logits = torch.randn(8, 5, generator=gen, dtype=torch.float64) * 2
    q = quality_targets(gen, (8, 5))
    num_pos = 6.0
    close(losskit.varifocal_loss(logits, q, normalizer=num_pos), ref.varifocal_mmdet(logits, q, avg_factor=num_pos))


def test_quality_focal_reproduces_mmdetection(gen):
    # mmdetection: (label, score) targets with background index C, per-anchor sum over classes,
    # per-anchor weight, avg_factor.
    n, c = 9, 4
    logits = torch.randn(n, c, generator=gen, dtype=torch.float64) * 2
    label = torch.randint(c + 1, (n,), generator=gen)  # c = background
    score = torch.rand(n, generator=gen, dtype=torch.float64)
    per_anchor = ref.quality_focal_mmdet(logits, label, score)
    target = F.one_hot(label, c + 1)[:, :c].double() * score[:, None]
    none = losskit.quality_focal_loss(logits, target, reduction="none")
    close(none.sum(-1), per_anchor)  # its unit: ours, summed over classes
    w = torch.rand(n, generator=gen, dtype=torch.float64) + 0.5
    avg_factor = 3.0
    close(losskit.quality_focal_loss(logits, target, weight=w[:, None], normalizer=avg_factor),
          (per_anchor * w).sum() / avg_factor)
    # mmdetection's plain "mean" (no avg_factor) is the mean over anchors: C times ours.
    close(losskit.quality_focal_loss(logits, target) * c, per_anchor.mean())


def test_distribution_focal_reproduces_ultralytics(gen):
    # reg_max = 16: 16 bins (0..15), ltrb targets clamped to 14.99, mean over the 4 sides,
    # times w = sum_c target_scores, over target_scores_sum.
    n = 6
    pred = torch.randn(n, 4, 16, generator=gen, dtype=torch.float64) * 2
    target = torch.rand(n, 4, generator=gen, dtype=torch.float64) * 15
    target[0] = t64([14.995, 15.0, 20.0, 0.0])  # clamped to 14.99 (the last three) and a 0 distance
    w = torch.rand(n, generator=gen, dtype=torch.float64)
    tss = max(w.sum().item() + 0.7, 1.0)  # target_scores_sum also counts the other anchors
    ours = losskit.distribution_focal_loss(pred, target, weight=w[:, None], normalizer=4 * tss)
    close(ours, ref.dfl_ultralytics(pred, target, w, tss))
    # equivalently: reduction="none", then the mean over sides as Ultralytics does
    none = losskit.distribution_focal_loss(pred, target, reduction="none")
    close((none.mean(-1) * w).sum() / tss, ours)


def test_distribution_focal_reproduces_mmdetection(gen):
    # reg_max = 16: 17 bins (0..16), the head clamps distances to 16 - 0.1 = 15.9 before the loss.
    n = 5
    pred = torch.randn(n, 4, 17, generator=gen, dtype=torch.float64) * 2
    target = torch.rand(n, 4, generator=gen, dtype=torch.float64) * 17  # raw distances, some > 15.9
    target[0, 0] = 16.5
    w = torch.rand(n, generator=gen, dtype=torch.float64) + 0.1  # detached max class scores
    ours = losskit.distribution_focal_loss(pred, target, clamp_margin=0.1, weight=w[:, None], normalizer=4 * w.sum())
    close(ours, ref.dfl_mmdet(pred, target, w))


def test_gaussian_focal_reproduces_centernet(gen):
    logits = torch.randn(2, 3, 6, 6, generator=gen, dtype=torch.float64) * 3
    heat = torch.rand(2, 3, 6, 6, generator=gen, dtype=torch.float64) ** 3
    heat[0, 0, 2, 2] = heat[1, 2, 4, 1] = heat[1, 0, 0, 5] = 1.0
    num_pos = (heat == 1).sum().clamp_min(1)
    close(losskit.gaussian_focal_loss(logits, heat, normalizer=num_pos), ref.centernet_focal(logits, heat))
    no_peaks = heat.clamp_max(0.99)
    close(losskit.gaussian_focal_loss(logits, no_peaks, normalizer=(no_peaks == 1).sum().clamp_min(1)),
          ref.centernet_focal(logits, no_peaks))


# --- properties ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("alpha", "gamma"), [(0.75, 2.0), (0.25, 0.5), (1.0, 0.0)])
def test_varifocal_with_zero_targets_is_weighted_bce(gen, alpha, gamma):
    logits = torch.randn(20, generator=gen, dtype=torch.float64) * 4
    zeros = torch.zeros_like(logits)
    expected = alpha * torch.sigmoid(logits) ** gamma * losskit.binary_cross_entropy(logits, zeros, reduction="none")
    close(losskit.varifocal_loss(logits, zeros, alpha=alpha, gamma=gamma, reduction="none"), expected)


def test_quality_focal_with_beta_zero_is_bce(gen):
    logits = torch.randn(30, generator=gen, dtype=torch.float64, requires_grad=True) * 3
    q = torch.cat([torch.rand(20, generator=gen, dtype=torch.float64), torch.sigmoid(logits[:10]).detach()])
    ours = losskit.quality_focal_loss(logits, q, beta=0.0, reduction="none")  # includes q = p exactly
    bce = losskit.binary_cross_entropy(logits, q, reduction="none")
    close(ours, bce)
    close(torch.autograd.grad(ours.sum(), logits)[0], torch.autograd.grad(bce.sum(), logits)[0])


@pytest.mark.parametrize("beta", [0.25, 0.5, 0.99])
def test_quality_focal_gradient_is_finite_where_prediction_equals_target(beta):
    # x = 0 and q = 1/2: |q - p|^beta has an infinite derivative there; the loss is 0 and so is the gradient.
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    q = t64([0.5, 0.5, 0.2])
    loss = losskit.quality_focal_loss(x, q, beta=beta, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert loss[0].item() == 0.0 and torch.isfinite(grad).all() and grad[0].item() == 0.0
    assert grad[2].item() != 0.0


@pytest.mark.parametrize(("name", "options"), [("varifocal_loss", {}), ("quality_focal_loss", {"beta": 2.0}),
                                             ("quality_focal_loss", {"beta": 0.5}), ("gaussian_focal_loss", {})])
def test_easy_examples_keep_relative_precision_in_float32(name, options):
    # Saturated logits: float32 sigmoid(20) rounds to 1, and PyTorch's fused BCE-with-logits rounds
    # BCE(-25, 0) = 1.4e-11 to 0. Values and gradients must still match float64 to float32 precision.
    x = torch.tensor([15.0, 20.0, -12.0, -20.0, -25.0])  # losses down to e^-75, above float32 underflow
    t = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])
    fn = getattr(losskit, name)
    x64 = x.double().requires_grad_()
    expected = fn(x64, t.double(), reduction="none", **options)
    (expected_grad,) = torch.autograd.grad(expected.sum(), x64)
    assert (expected > 0).all() and (expected_grad != 0).all()
    x32 = x.clone().requires_grad_()
    out = fn(x32, t, reduction="none", **options)
    (grad,) = torch.autograd.grad(out.sum(), x32)
    torch.testing.assert_close(out.double(), expected.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-5, atol=0)


def test_distribution_focal_at_an_integer_target_is_cross_entropy(gen):
    logits = torch.randn(12, 10, generator=gen, dtype=torch.float64)
    bins = torch.randint(9, (12,), generator=gen)  # 0..8: the left bin, right weight 0
    close(losskit.distribution_focal_loss(logits, bins.double(), reduction="none"),
          F.cross_entropy(logits, bins, reduction="none"))


def test_distribution_focal_is_smallest_at_the_interpolating_distribution():
    # y = 2.3 over 5 bins: the optimum puts 0.7 on bin 2 and 0.3 on bin 3; the loss is then its entropy.
    best = torch.log(t64([1e-12, 1e-12, 0.7, 0.3, 1e-12]))
    entropy = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))
    close(losskit.distribution_focal_loss(best, t64(2.3)), entropy, rtol=1e-9, atol=1e-9)
    assert losskit.distribution_focal_loss(torch.zeros(5, dtype=torch.float64), t64(2.3)) > entropy


def test_gaussian_focal_with_a_one_hot_peak_is_focal_loss(gen):
    # t in {0, 1}: (1 - t)^gamma = 1 on negatives, so the loss is the sigmoid focal loss with the
    # focusing exponent alpha and no class balancing.
    logits = torch.randn(1, 2, 7, 7, generator=gen, dtype=torch.float64) * 3
    heat = torch.zeros_like(logits)
    heat[0, 0, 3, 3] = heat[0, 1, 1, 5] = 1.0
    for alpha in (2.0, 0.5):
        close(losskit.gaussian_focal_loss(logits, heat, alpha=alpha, reduction="none"),
              losskit.sigmoid_focal_loss(logits, heat, alpha=None, gamma=alpha, reduction="none"))


def _extreme_case(name, dtype):
    big = torch.tensor([1e4, -1e4, 1e4, -1e4, 0.5, -0.5], dtype=dtype)
    if name == "distribution_focal_loss":
        logits = torch.stack([big, big.flip(0), big.roll(1)])  # (3, 6 bins)
        return logits, torch.tensor([0.5, 2.25, 4.9], dtype=dtype)
    return big, torch.tensor([1.0, 1.0, 0.0, 0.0, 0.5, 1.0], dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("name", LOSSES)
def test_extreme_logits_give_finite_values_and_gradients(name, dtype):
    logits, target = _extreme_case(name, dtype)
    options = [{}]
    if name == "quality_focal_loss":
        options.append({"beta": 0.5})
    if name == "varifocal_loss":
        options += [{"gamma": 0.5}, {"positives": "label", "label": (target > 0).to(dtype)}]
    for kw in options:
        x = logits.clone().requires_grad_()
        out = getattr(losskit, name)(x, target, reduction="none", **kw)
        assert out.dtype == dtype and torch.isfinite(out).all(), (kw, out)
        (grad,) = torch.autograd.grad(out.sum(), x)
        assert torch.isfinite(grad).all(), (kw, grad)


def test_half_precision_is_computed_in_float32(gen):
    # float16/bfloat16 in: the result equals the float32 computation on the same rounded values, cast back.
    logits = torch.randn(64, generator=gen) * 6
    q = quality_targets(gen, (64,)).float()
    for fn in (losskit.varifocal_loss, losskit.quality_focal_loss, losskit.gaussian_focal_loss):
        for dtype in (torch.float16, torch.bfloat16):
            x, t = logits.to(dtype), q.to(dtype)
            out = fn(x, t, reduction="none")
            assert out.dtype == dtype
            torch.testing.assert_close(out, fn(x.float(), t.float(), reduction="none").to(dtype), rtol=0, atol=0)
    bins = torch.randn(5, 4, 16, generator=gen) * 3
    dist = torch.rand(5, 4, generator=gen) * 15
    out = losskit.distribution_focal_loss(bins.bfloat16(), dist.bfloat16(), reduction="none")
    expected = losskit.distribution_focal_loss(bins.bfloat16().float(), dist.bfloat16().float(), reduction="none")
    torch.testing.assert_close(out, expected.bfloat16(), rtol=0, atol=0)


def test_modules_aliases_and_per_call_label(gen):
    logits = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    q = quality_targets(gen, (4, 3), fraction=0.5)
    label = (q > 0).double()
    vfl = losskit.get("vfl", positives="label", alpha=0.25, gamma=1.5)
    close(vfl(logits, q, label=label), losskit.varifocal_loss(logits, q, positives="label", label=label,
                                                              alpha=0.25, gamma=1.5))
    assert type(losskit.get("qfl")) is losskit.QualityFocalLoss
    assert losskit.get("dfl", clamp_margin=0.1).get_config() == {"name": "distribution_focal", "clamp_margin": 0.1}
    assert set(losskit.available("detection")) >= {"varifocal", "quality_focal", "distribution_focal",
                                                   "gaussian_focal"}


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: losskit.varifocal_loss(torch.zeros(3), torch.zeros(4)), ValueError,
         r"target must have the same shape as input \(3,\), got shape \(4,\)"),
        (lambda: losskit.varifocal_loss(torch.zeros(3), torch.zeros(3), alpha=1.5), ValueError,
         r"alpha must be in \[0, 1\], got 1.5"),
        (lambda: losskit.varifocal_loss(torch.zeros(3), torch.zeros(3), gamma=-1.0), ValueError, r"gamma must be in"),
        (lambda: losskit.varifocal_loss(torch.zeros(3), torch.zeros(3), positives="iou"), ValueError,
         r"positives must be one of \('target', 'label'\)"),
        (lambda: losskit.varifocal_loss(torch.zeros(3), torch.zeros(3), positives="label"), ValueError,
         r'positives="label" needs label='),
        (lambda: losskit.varifocal_loss(torch.zeros(3), torch.zeros(3), label=torch.ones(3)), ValueError,
         r'label= is only used with positives="label"'),
        (lambda: losskit.varifocal_loss(torch.zeros(3), torch.zeros(3), positives="label", label=torch.ones(2)),
         ValueError, r"label must have the same shape as input \(3,\)"),
        (lambda: losskit.varifocal_loss(torch.zeros(3), torch.zeros(3), positives="label", label=torch.full((3,), 2.0)),
         ValueError, r"label must hold probabilities in \[0, 1\]"),
        (lambda: losskit.varifocal_loss(torch.zeros(3), torch.full((3,), 1.5)), ValueError, r"target must hold prob"),
        (lambda: losskit.quality_focal_loss(torch.zeros(3), torch.zeros(3), beta=-0.5), ValueError,
         r"beta must be in \[0, inf\], got -0.5"),
        (lambda: losskit.quality_focal_loss(torch.zeros(2, 3), torch.zeros(3, 2)), ValueError, r"target must have"),
        (lambda: losskit.quality_focal_loss(torch.zeros(3, dtype=torch.long), torch.zeros(3)), TypeError,
         r"input must be a floating-point tensor"),
        (lambda: losskit.distribution_focal_loss(torch.zeros(2, 4, 16), torch.zeros(2, 3)), ValueError,
         r"target must hold one distance per distribution, shape \(2, 4\)"),
        (lambda: losskit.distribution_focal_loss(torch.zeros(2, 4, 16), torch.tensor([[1.0, -0.5, 2.0, 3.0]] * 2)),
         ValueError, r"target distances must be >= 0 .*found minimum -0.5"),
        (lambda: losskit.distribution_focal_loss(torch.zeros(1, 16), torch.tensor([float("nan")])), ValueError,
         r"target distances must be >= 0"),
        (lambda: losskit.distribution_focal_loss(torch.zeros(2, 16), torch.tensor([1, 2])), TypeError,
         r"target must hold floating distances"),
        (lambda: losskit.distribution_focal_loss(torch.zeros(2, 1), torch.zeros(2)), ValueError,
         r"input must hold logits over at least 2 bins"),
        (lambda: losskit.distribution_focal_loss(torch.zeros(2, 4), torch.zeros(2), clamp_margin=1.0), ValueError,
         r"clamp_margin must be in \[0, 1\), got 1"),
        (lambda: losskit.gaussian_focal_loss(torch.zeros(3), torch.zeros(3), alpha=-1.0), ValueError, r"alpha must be"),
        (lambda: losskit.gaussian_focal_loss(torch.zeros(3), torch.zeros(3), gamma=-2.0), ValueError, r"gamma must be"),
        (lambda: losskit.gaussian_focal_loss(torch.zeros(3), torch.zeros(3), pos_threshold=0.0), ValueError,
         r"pos_threshold must be in \(0, 1\]"),
        (lambda: losskit.gaussian_focal_loss(torch.zeros(3), torch.full((3,), -0.1)), ValueError, r"target must hold"),
    ],
)
def test_errors_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("name", LOSSES)
def test_unknown_reduction_and_non_finite_input_are_named(name):
    logits, target = _extreme_case(name, torch.float32)
    fn = getattr(losskit, name)
    with pytest.raises(ValueError, match=r"reduction must be one of \('none', 'mean', 'sum'\), got 'avg'"):
        fn(logits, target, reduction="avg")
    bad = logits.clone()
    bad.view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="input contains non-finite values"):
        fn(bad, target)


def test_negative_distance_is_clamped_when_value_checks_are_off():
    logits = torch.zeros(2, 4)
    with losskit.set_checks(False):
        out = losskit.distribution_focal_loss(logits, torch.tensor([-0.5, 1.5]), reduction="none")
    close(out, [LN4, LN4])  # -0.5 -> 0: CE at bin 0 of a uniform distribution


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_gaussian_focal_at_infinite_logits_has_the_limit_value_and_a_finite_gradient(value):
    # A peak predicted with +inf and a negative with -inf are perfect: loss 0, gradient 0. The
    # branch a peak does not use is infinite there, and its zero gradient times inf was NaN.
    target = torch.tensor([1.0, 0.3] if value > 0 else [0.3, 1.0])
    x = torch.tensor([value, -value], requires_grad=True)
    out = losskit.gaussian_focal_loss(x, target, reduction="none")
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert out.tolist() == [0.0, 0.0] and grad.tolist() == [0.0, 0.0]
    # The wrong way round the loss is infinite and the input is named.
    with pytest.raises(ValueError, match="input contains non-finite values"):
        losskit.gaussian_focal_loss(-x.detach(), target)


def test_nan_targets_propagate_when_value_checks_are_off():
    # DFL indexed a bin with NaN.long() (out of range: RuntimeError); QFL's |sigma(x) - t|^beta
    # tested "> 0", which NaN fails, and read 0 there.
    logits = torch.zeros(2, 4)
    with losskit.set_checks(False):
        dfl = losskit.distribution_focal_loss(logits, torch.tensor([1.5, float("nan")]), reduction="none")
        qfl = losskit.quality_focal_loss(logits, torch.tensor([[0.5, 0, 0, 0], [float("nan"), 0, 0, 0]]),
                                         reduction="none")
    close(dfl[0], LN4)
    assert dfl[1].isnan() and qfl[1, 0].isnan() and torch.isfinite(qfl[0]).all()
    with pytest.raises(ValueError, match="target distances must be >= 0"):  # checked: named
        losskit.distribution_focal_loss(logits, torch.tensor([1.5, float("nan")]))


def test_distribution_focal_mass_on_a_masked_bin_is_an_infinite_loss():
    # Target 1.5 puts weight 1/2 on bins 1 and 2; bin 2's logit is -inf: -log 0 = inf (it was the
    # finite 1.7e38 of the floor in float32). Bin 3 is -inf too but has weight 0: it changes nothing.
    logits = torch.tensor([[0.0, 0.0, float("-inf"), 0.0]])
    with pytest.raises(ValueError, match=r"input contains non-finite values \(1 -inf\)"):
        losskit.distribution_focal_loss(logits, torch.tensor([1.5]))
    masked = torch.tensor([[0.0, 0.0, 0.0, float("-inf")]], requires_grad=True)
    out = losskit.distribution_focal_loss(masked, torch.tensor([1.0]))
    close(out, math.log(3))  # CE at bin 1 of a uniform distribution over the 3 finite bins
    (grad,) = torch.autograd.grad(out, masked)
    assert torch.isfinite(grad).all() and grad[0, 3] == 0

"""Classification losses against independent references.

References used, per loss:
* cross_entropy, binary_cross_entropy, multi_margin_loss: PyTorch's own functions (torch 2.13),
  over the full option grid.
* sigmoid/softmax focal, poly-1, ASL, LDAM, logit adjustment: float64 formulas written from the
  papers in ``reference_classification`` (loops over elements, not the code under test).
* Peer libraries live (MONAI 1.6.1, kornia 0.9.0) under the options that reproduce them.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import losskit
from tests import reference_classification as ref


def close(actual, expected, rtol=1e-7, atol=1e-9):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def logits_and_index(gen, shape, num_classes, ignore_index=None, ignore_fraction=0.0):
    n, *rest = shape
    logits = torch.randn((n, num_classes, *rest), generator=gen, dtype=torch.float64) * 2
    target = torch.randint(num_classes, tuple(shape), generator=gen)
    if ignore_index is not None:
        drop = torch.rand(tuple(shape), generator=gen) < ignore_fraction
        target = torch.where(drop, torch.full_like(target, ignore_index), target)
    return logits, target


# --- cross-entropy: the full PyTorch option grid ----------------------------------------------

CE_GRID = list(
    itertools.product(
        [(6,), (3, 4), (2, 3, 2)],  # (N,), (N, d1), (N, d1, d2) index shapes
        [False, True],  # class weights
        [-100, 2],  # ignore_index: the default, and a real class index
        [0.0, 0.2],  # label smoothing
        ["none", "sum", "mean"],
    )
)


@pytest.mark.parametrize(("shape", "weighted", "ignore_index", "smoothing", "reduction"), CE_GRID)
def test_cross_entropy_matches_pytorch_on_the_option_grid(gen, shape, weighted, ignore_index, smoothing, reduction):
    logits, target = logits_and_index(gen, shape, 4, ignore_index=ignore_index, ignore_fraction=0.3)
    weight = torch.rand(4, generator=gen, dtype=torch.float64) + 0.2 if weighted else None
    options = dict(weight=weight, ignore_index=ignore_index, label_smoothing=smoothing, reduction=reduction)
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours, theirs = losskit.cross_entropy(x1, target, **options), F.cross_entropy(x2, target, **options)
    close(ours, theirs)
    grad_out = torch.rand_like(ours)  # a non-uniform upstream gradient for "none"
    close(torch.autograd.grad(ours, x1, grad_out)[0], torch.autograd.grad(theirs, x2, grad_out)[0])
    if reduction == "none":  # and against the formula, independently of PyTorch
        expected = ref.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, smoothing=smoothing)
        close(ours, expected)


def test_cross_entropy_reproduces_the_glossary_example():
    # torch.nn.CrossEntropyLoss()(tensor([[2.5, 0.1, -1.2]]), tensor([0])) prints 0.1093
    loss = losskit.cross_entropy(torch.tensor([[2.5, 0.1, -1.2]]), torch.tensor([0]))
    assert f"{loss.item():.4f}" == "0.1093"
    assert f"{torch.nn.CrossEntropyLoss()(torch.tensor([[2.5, 0.1, -1.2]]), torch.tensor([0])).item():.4f}" == "0.1093"


def test_cross_entropy_unbatched_matches_pytorch(gen):
    logits = torch.randn(5, generator=gen, dtype=torch.float64)
    for smoothing in (0.0, 0.1):
        close(losskit.cross_entropy(logits, torch.tensor(3), label_smoothing=smoothing),
              F.cross_entropy(logits, torch.tensor(3), label_smoothing=smoothing))
    assert losskit.cross_entropy(logits, torch.tensor(3), reduction="none").shape == ()


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_cross_entropy_probability_targets_match_pytorch(gen, smoothing, reduction):
    logits = torch.randn(5, 4, 3, generator=gen, dtype=torch.float64)
    target = torch.softmax(torch.randn(5, 4, 3, generator=gen, dtype=torch.float64), dim=1)
    close(losskit.cross_entropy(logits, target, label_smoothing=smoothing, reduction=reduction),
          F.cross_entropy(logits, target, label_smoothing=smoothing, reduction=reduction))


def test_cross_entropy_probability_targets_with_class_weights(gen):
    # "none" and "sum" are PyTorch's; "mean" divides by sum_n sum_c w_c t_nc (PyTorch divides by N,
    # which normalizer=N reproduces).
    logits = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    target = torch.softmax(torch.randn(6, 4, generator=gen, dtype=torch.float64), dim=1)
    weight = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    for reduction in ("none", "sum"):
        close(losskit.cross_entropy(logits, target, weight=weight, reduction=reduction),
              F.cross_entropy(logits, target, weight=weight, reduction=reduction))
    close(losskit.cross_entropy(logits, target, weight=weight, normalizer=6),
          F.cross_entropy(logits, target, weight=weight))
    expected = F.cross_entropy(logits, target, weight=weight, reduction="sum") / (target * weight).sum()
    close(losskit.cross_entropy(logits, target, weight=weight), expected)


@pytest.mark.parametrize(("weighted", "smoothing"), [(False, 0.0), (True, 0.0), (True, 0.25)])
def test_cross_entropy_one_hot_probabilities_equal_index_targets(gen, weighted, smoothing):
    logits, target = logits_and_index(gen, (7,), 5)
    weight = torch.rand(5, generator=gen, dtype=torch.float64) + 0.5 if weighted else None
    one_hot = F.one_hot(target, 5).double()
    for reduction in ("none", "mean", "sum"):
        options = dict(weight=weight, label_smoothing=smoothing, z_loss=1e-2, reduction=reduction)
        close(losskit.cross_entropy(logits, one_hot, **options), losskit.cross_entropy(logits, target, **options))


def test_cross_entropy_z_loss_and_softcap_follow_their_formulas(gen):
    logits, target = logits_and_index(gen, (8,), 6)
    weight = torch.rand(6, generator=gen, dtype=torch.float64) + 0.5
    lse = torch.logsumexp(logits, dim=1)
    # z-loss: each sample adds z * logsumexp^2, scaled by its class weight like the rest of its loss.
    expected = F.cross_entropy(logits, target, weight=weight, reduction="none") + 1e-3 * lse**2 * weight[target]
    close(losskit.cross_entropy(logits, target, weight=weight, z_loss=1e-3, reduction="none"), expected)
    # softcap c: cross-entropy of c * tanh(x / c).
    capped = 3.0 * torch.tanh(logits * 4 / 3.0)
    close(losskit.cross_entropy(logits * 4, target, softcap=3.0), F.cross_entropy(capped, target))


def test_cross_entropy_all_ignored_is_zero_with_a_gradient(gen):
    logits = torch.randn(3, 4, generator=gen, requires_grad=True)
    target = torch.full((3,), -100)
    loss = losskit.cross_entropy(logits, target)
    assert loss.item() == 0.0  # torch.nn.functional.cross_entropy returns NaN here
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_cross_entropy_masked_logits_are_allowed(gen):
    logits = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    logits[:, 4] = float("-inf")  # class 4 masked out
    target = torch.tensor([0, 1, 2, 3])
    x = logits.clone().requires_grad_()
    loss = losskit.cross_entropy(x, target)
    close(loss, F.cross_entropy(logits[:, :4], target))
    loss.backward()
    assert torch.isfinite(x.grad).all()
    soft = F.one_hot(target, 5).double()
    close(losskit.cross_entropy(logits, soft), loss.detach())


# --- logit adjustment, balanced softmax, LDAM, poly-1 -----------------------------------------


def test_logit_adjusted_cross_entropy_is_cross_entropy_of_adjusted_logits(gen):
    logits, target = logits_and_index(gen, (9,), 4)
    prior = torch.tensor([0.6, 0.25, 0.1, 0.05], dtype=torch.float64)
    for tau in (0.0, 0.5, 1.0):
        close(losskit.logit_adjusted_cross_entropy(logits, target, class_prior=prior * 10, tau=tau),
              F.cross_entropy(logits + tau * prior.log(), target))


def test_balanced_softmax_is_counts_weighted_softmax(gen):
    logits, target = logits_and_index(gen, (9,), 4)
    counts = torch.tensor([500.0, 100.0, 20.0, 3.0], dtype=torch.float64)
    # -log(n_y e^{x_y} / sum_k n_k e^{x_k}), written out with the counts as the paper states it.
    numerator = counts[target] * logits.exp().gather(1, target[:, None]).squeeze(1)
    expected = -(numerator / (counts * logits.exp()).sum(1)).log().mean()
    close(losskit.balanced_softmax_loss(logits, target, class_counts=counts), expected)
    close(losskit.balanced_softmax_loss(logits, target, class_counts=counts),
          losskit.logit_adjusted_cross_entropy(logits, target, class_prior=counts, tau=1.0))


def test_ldam_matches_the_paper_formula(gen):
    logits, target = logits_and_index(gen, (10,), 5)
    counts = [1000.0, 300.0, 50.0, 10.0, 2.0]
    expected = ref.ldam(logits, target, counts, max_margin=0.5, scale=30.0)
    close(losskit.ldam_loss(logits, target, class_counts=counts, reduction="none"), expected)


def test_poly1_matches_the_paper_formula(gen):
    logits, target = logits_and_index(gen, (10,), 5)
    for epsilon, smoothing in [(2.0, 0.0), (-1.0, 0.0), (1.0, 0.1)]:
        expected = ref.poly1(logits, target, epsilon=epsilon, smoothing=smoothing)
        close(losskit.poly1_cross_entropy(logits, target, epsilon=epsilon, label_smoothing=smoothing,
                                          reduction="none"), expected)
    close(losskit.poly1_cross_entropy(logits, target, epsilon=0.0), F.cross_entropy(logits, target))


# --- softmax focal ----------------------------------------------------------------------------


def test_softmax_focal_matches_the_paper_formula(gen):
    logits, target = logits_and_index(gen, (4, 3), 5)
    alpha = torch.tensor([0.25, 1.0, 0.5, 2.0, 1.0], dtype=torch.float64)
    for gamma in (0.5, 2.0):
        expected = ref.softmax_focal(logits, target, alpha=alpha, gamma=gamma)
        close(losskit.softmax_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="none"), expected)


def test_softmax_focal_with_gamma_zero_is_cross_entropy(gen):
    logits, target = logits_and_index(gen, (4, 3), 5, ignore_index=-100, ignore_fraction=0.2)
    weight = torch.rand(5, generator=gen, dtype=torch.float64) + 0.5
    close(losskit.softmax_focal_loss(logits, target, gamma=0.0, weight=weight),
          F.cross_entropy(logits, target, weight=weight))


# --- multi-margin -----------------------------------------------------------------------------


@pytest.mark.parametrize(("p", "margin"), [(1, 1.0), (2, 0.5)])
def test_multi_margin_matches_pytorch(gen, p, margin):
    logits, target = logits_and_index(gen, (8,), 5)
    weight = torch.rand(5, generator=gen, dtype=torch.float64) + 0.5
    for reduction in ("none", "sum", "mean"):
        close(losskit.multi_margin_loss(logits, target, p=p, margin=margin, reduction=reduction),
              F.multi_margin_loss(logits, target, p=p, margin=margin, reduction=reduction))
    close(losskit.multi_margin_loss(logits, target, p=p, margin=margin, weight=weight, reduction="none"),
          F.multi_margin_loss(logits, target, p=p, margin=margin, weight=weight, reduction="none"))
    # PyTorch's weighted "mean" divides by N; ours by sum(w[y]). normalizer=N gives PyTorch's.
    close(losskit.multi_margin_loss(logits, target, p=p, margin=margin, weight=weight, normalizer=8),
          F.multi_margin_loss(logits, target, p=p, margin=margin, weight=weight))


# --- binary cross-entropy ---------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_binary_cross_entropy_matches_pytorch(gen, reduction):
    logits = torch.randn(6, 3, generator=gen, dtype=torch.float64) * 3
    target = torch.rand(6, 3, generator=gen, dtype=torch.float64)
    pos_weight = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    close(losskit.binary_cross_entropy(logits, target, pos_weight=pos_weight, reduction=reduction),
          F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction=reduction))
    weight = torch.rand(6, 1, generator=gen, dtype=torch.float64)
    expected_sum = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
    close(losskit.binary_cross_entropy(logits, target, weight=weight, reduction="sum"), expected_sum)
    close(losskit.binary_cross_entropy(logits, target, weight=weight), expected_sum / weight.expand(6, 3).sum())


def test_binary_cross_entropy_label_smoothing_convention(gen):
    # s moves targets s/2 toward 1/2 (Keras convention) and equals two-class CE smoothing.
    logits = torch.randn(10, generator=gen, dtype=torch.float64)
    target = (torch.rand(10, generator=gen) < 0.5).double()
    smoothed = target * 0.8 + 0.1
    close(losskit.binary_cross_entropy(logits, target, label_smoothing=0.2),
          F.binary_cross_entropy_with_logits(logits, smoothed))
    two_class = torch.stack([torch.zeros_like(logits), logits], dim=1)  # softmax([0, x]) = [1 - s(x), s(x)]
    close(losskit.binary_cross_entropy(logits, target, label_smoothing=0.2),
          F.cross_entropy(two_class, target.long(), label_smoothing=0.2))


def test_smp_soft_bce_smooth_factor_is_half_our_label_smoothing(gen):
    # segmentation-models-pytorch SoftBCEWithLogitsLoss(smooth_factor=f): t' = t (1 - f) + (1 - t) f.
    logits = torch.randn(10, generator=gen, dtype=torch.float64)
    target = (torch.rand(10, generator=gen) < 0.5).double()
    f = 0.1
    smp_target = target * (1 - f) + (1 - target) * f
    close(losskit.binary_cross_entropy(logits, target, label_smoothing=2 * f),
          F.binary_cross_entropy_with_logits(logits, smp_target))


def test_binary_cross_entropy_takes_bool_and_integer_labels(gen):
    logits = torch.randn(10, generator=gen)
    labels = torch.rand(10, generator=gen) < 0.5
    expected = F.binary_cross_entropy_with_logits(logits, labels.float())
    close(losskit.binary_cross_entropy(logits, labels), expected)
    close(losskit.binary_cross_entropy(logits, labels.to(torch.uint8)), expected)


# --- sigmoid focal and ASL --------------------------------------------------------------------


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (None, 0.5), (0.75, 3.0), (None, 0.0)])
def test_sigmoid_focal_matches_the_paper_formula_for_soft_targets(gen, alpha, gamma):
    logits = torch.randn(50, generator=gen, dtype=torch.float64) * 3
    target = torch.rand(50, generator=gen, dtype=torch.float64)
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = losskit.sigmoid_focal_loss(x1, target, alpha=alpha, gamma=gamma, reduction="none")
    theirs = ref.sigmoid_focal(x2, target, alpha=alpha, gamma=gamma)
    close(ours, theirs)
    grad_out = torch.rand(50, generator=gen, dtype=torch.float64)
    close(torch.autograd.grad(ours, x1, grad_out)[0], torch.autograd.grad(theirs, x2, grad_out)[0])


def test_sigmoid_focal_hand_worked_value():
    # x = 0, t = 1, alpha = 0.25, gamma = 2: p = 0.5, BCE = log 2, (1 - p_t)^2 = 0.25,
    # loss = 0.25 * 0.25 * log 2 = 0.0433217...
    loss = losskit.sigmoid_focal_loss(torch.tensor([0.0]), torch.tensor([1.0]), reduction="sum")
    close(loss, torch.tensor(0.0625 * 0.6931471805599453), rtol=1e-6, atol=0)


# Logits from about 5 to 25 on the target's side, and the same on the wrong side, with hard and
# soft targets (0.97 and 0.03 are within float32's rounding of 1 and 0 times 1e6). The exact BCE
# is softplus(-x) t + softplus(x)(1 - t), evaluated in float64 on the same float32 inputs.
CONFIDENT = torch.tensor([5.0, 8.0, 12.0, 16.0, 25.0, -5.0, -12.0, -25.0])


def _bce64(x, t):
    x, t = x.double(), t.double()
    return torch.nn.functional.softplus(-x) * t + torch.nn.functional.softplus(x) * (1 - t)


@pytest.mark.parametrize("t", [1.0, 0.0, 0.97, 0.03])
def test_binary_cross_entropy_keeps_relative_precision_at_confident_logits(t):
    x = torch.cat([CONFIDENT, -CONFIDENT]).requires_grad_()
    target = torch.full_like(x, t)
    loss = losskit.binary_cross_entropy(x, target, reduction="none")
    close(loss.double(), _bce64(x.detach(), target), rtol=1e-5, atol=0)
    (grad,) = torch.autograd.grad(loss.sum(), x)  # sigmoid(x) - t, from the float64 sigmoids
    exact = torch.sigmoid(x.detach().double()) * (1 - t) - torch.sigmoid(-x.detach().double()) * t
    close(grad.double(), exact, rtol=1e-5, atol=0)


@pytest.mark.parametrize("t", [1.0, 0.0, 0.97, 0.03])
def test_sigmoid_focal_with_gamma_zero_is_bce_at_confident_logits(t):
    # The documented identity in float32, to the last digits: the focal loss once took BCE as
    # softplus(x) - x t, which cancels on a confident correct logit (ratio off by 2e-5 at 5, 7% at 12).
    x = torch.cat([CONFIDENT, -CONFIDENT]).requires_grad_()
    target = torch.full_like(x, t)
    focal = losskit.sigmoid_focal_loss(x, target, gamma=0.0, alpha=None, reduction="none")
    close(focal.double(), _bce64(x.detach(), target), rtol=1e-5, atol=0)
    close(focal, losskit.binary_cross_entropy(x, target, reduction="none"), rtol=1e-5, atol=0)
    (grad,) = torch.autograd.grad(focal.sum(), x)
    exact = torch.sigmoid(x.detach().double()) * (1 - t) - torch.sigmoid(-x.detach().double()) * t
    close(grad.double(), exact, rtol=1e-5, atol=0)


@pytest.mark.parametrize("gamma", [2.0, 0.5])
def test_sigmoid_focal_keeps_relative_precision_at_confident_logits(gamma):
    # The float64 paper formula on the same float32 inputs, written with float64's own sigmoid.
    x = torch.cat([CONFIDENT, -CONFIDENT]).requires_grad_()
    target = (torch.arange(x.numel()) % 2).float()
    loss = losskit.sigmoid_focal_loss(x, target, gamma=gamma, reduction="none")
    x64, t64 = x.detach().double().requires_grad_(), target.double()
    miss = t64 * torch.sigmoid(-x64) + (1 - t64) * torch.sigmoid(x64)  # 1 - p_t, each side exact
    exact = (0.25 * t64 + 0.75 * (1 - t64)) * miss**gamma * _bce64(x64, t64)
    close(loss.double(), exact.detach(), rtol=1e-5, atol=0)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    close(grad.double(), torch.autograd.grad(exact.sum(), x64)[0], rtol=1e-5, atol=0)


def test_sigmoid_focal_without_grad_gives_the_same_value(gen):
    logits = torch.randn(30, generator=gen)
    target = torch.rand(30, generator=gen)
    with_grad = losskit.sigmoid_focal_loss(logits.clone().requires_grad_(), target, reduction="none")
    with torch.no_grad():
        without = losskit.sigmoid_focal_loss(logits, target, reduction="none")
    close(with_grad.detach(), without)


def test_asymmetric_loss_matches_the_paper_formula(gen):
    logits = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 3
    target = (torch.rand(6, 5, generator=gen) < 0.3).double()
    for gamma_pos, gamma_neg, clip in [(1.0, 4.0, 0.05), (0.0, 2.0, 0.0), (0.5, 3.0, 0.2)]:
        expected = ref.asymmetric(logits, target, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip)
        close(losskit.asymmetric_loss(logits, target, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip,
                                      reduction="none"), expected)
    close(losskit.asymmetric_loss(logits, target, gamma_pos=0.0, gamma_neg=0.0, clip=0.0),
          F.binary_cross_entropy_with_logits(logits, target))


# --- peers, live ------------------------------------------------------------------------------


@pytest.mark.peer
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_sigmoid_focal_matches_monai(gen, alpha):
    monai_losses = pytest.importorskip("monai.losses")
    logits = torch.randn(2, 3, 4, 4, generator=gen) * 3
    target = (torch.rand(2, 3, 4, 4, generator=gen) < 0.3).float()
    theirs = monai_losses.FocalLoss(gamma=2.0, alpha=alpha, reduction="none")(logits, target)
    close(losskit.sigmoid_focal_loss(logits, target, alpha=alpha, gamma=2.0, reduction="none"), theirs,
          rtol=1e-5, atol=1e-6)
    close(losskit.sigmoid_focal_loss(logits, target, alpha=alpha, gamma=2.0),
          monai_losses.FocalLoss(gamma=2.0, alpha=alpha)(logits, target), rtol=1e-5, atol=1e-7)


@pytest.mark.peer
def test_softmax_focal_matches_monai_with_background_alpha(gen):
    monai_losses = pytest.importorskip("monai.losses")
    logits, index = logits_and_index(gen, (2, 4, 4), 3)
    logits = logits.float()
    one_hot = F.one_hot(index, 3).permute(0, 3, 1, 2).float()
    a = 0.25
    theirs = monai_losses.FocalLoss(gamma=2.0, alpha=a, use_softmax=True)(logits, one_hot)
    # MONAI: alpha vector [1 - a, a, a] (class 0 as background); "mean" also averages over classes.
    ours = losskit.softmax_focal_loss(logits, index, alpha=[1 - a, a, a], gamma=2.0) / 3
    close(ours, theirs, rtol=1e-5, atol=1e-7)


@pytest.mark.peer
def test_focal_losses_match_kornia(gen):
    kornia_losses = pytest.importorskip("kornia.losses")
    logits = torch.randn(2, 3, 5, generator=gen) * 3
    target = (torch.rand(2, 3, 5, generator=gen) < 0.3).float()
    theirs = kornia_losses.binary_focal_loss_with_logits(logits, target, alpha=0.25, gamma=2.0, reduction="none")
    close(losskit.sigmoid_focal_loss(logits, target, reduction="none"), theirs, rtol=1e-5, atol=1e-6)
    index_logits, index = logits_and_index(gen, (2, 5), 4)
    index_logits = index_logits.float()
    # kornia's "none" keeps a per-class axis that is zero off the target class.
    theirs = kornia_losses.focal_loss(index_logits, index, alpha=0.25, gamma=2.0, reduction="none").sum(1)
    ours = losskit.softmax_focal_loss(index_logits, index, alpha=[0.75, 0.25, 0.25, 0.25], gamma=2.0,
                                      reduction="none")
    close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.peer
def test_sigmoid_focal_pos_weight_matches_kornia(gen):
    # kornia 0.9.0 scales the positive term by one weight per class of (B, C, *) logits.
    kornia_losses = pytest.importorskip("kornia.losses")
    logits = torch.randn(2, 3, 5, generator=gen) * 3
    target = (torch.rand(2, 3, 5, generator=gen) < 0.3).float()
    w = torch.tensor([0.5, 2.0, 4.0])
    for reduction in ("none", "mean", "sum"):
        theirs = kornia_losses.binary_focal_loss_with_logits(logits, target, alpha=0.25, gamma=2.0, pos_weight=w,
                                                             reduction=reduction)
        ours = losskit.sigmoid_focal_loss(logits, target, pos_weight=w.view(3, 1), reduction=reduction)
        close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.peer
def test_softmax_focal_per_class_matches_kornia(gen):
    # kornia 0.9.0 focal_loss keeps the class axis under "none" (zero off the target class); its
    # "mean" averages over every (sample, class) entry.
    kornia_losses = pytest.importorskip("kornia.losses")
    logits, index = logits_and_index(gen, (2, 5), 4)
    logits = logits.float()
    alpha = [0.75, 0.25, 0.25, 0.25]
    for reduction in ("none", "mean", "sum"):
        theirs = kornia_losses.focal_loss(logits, index, alpha=0.25, gamma=2.0, reduction=reduction)
        ours = losskit.softmax_focal_loss(logits, index, alpha=alpha, gamma=2.0, per_class=True, reduction=reduction)
        assert ours.shape == theirs.shape
        close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pos_weight", [torch.tensor([0.5, 2.0, 3.0]), torch.tensor(2.5)], ids=["per_class", "scalar"])
def test_sigmoid_focal_pos_weight_follows_the_weighted_bce(gen, pos_weight):
    # gamma=0, alpha=None: exactly binary_cross_entropy with the same pos_weight; with gamma and
    # alpha, the float64 formula alpha_t (1 - p_t)^gamma [-(w t log p + (1 - t) log(1 - p))].
    logits = torch.randn(4, 3, generator=gen, dtype=torch.float64) * 3
    target = torch.rand(4, 3, generator=gen, dtype=torch.float64)
    w = pos_weight.double()
    close(losskit.sigmoid_focal_loss(logits, target, gamma=0.0, alpha=None, pos_weight=w, reduction="none"),
          losskit.binary_cross_entropy(logits, target, pos_weight=w, reduction="none"))
    x = logits.clone().requires_grad_()
    ours = losskit.sigmoid_focal_loss(x, target, pos_weight=w, reduction="none")
    p = torch.sigmoid(logits)
    miss = target * (1 - p) + (1 - target) * p
    bce = -(w * target * torch.log(p) + (1 - target) * torch.log(1 - p))
    close(ours, (0.25 * target + 0.75 * (1 - target)) * miss**2 * bce)
    fn = lambda t: losskit.sigmoid_focal_loss(t, target, pos_weight=w, reduction="sum")  # noqa: E731
    assert torch.autograd.gradcheck(fn, x) and torch.autograd.gradgradcheck(fn, x)


def test_softmax_focal_per_class_keeps_the_class_axis(gen):
    # Summed over classes it is the per-sample loss; its weighted mean counts each (sample, class)
    # entry with its class's weight, ignored samples nowhere.
    logits, index = logits_and_index(gen, (3, 4), 5)
    index[0, 0] = -100
    w = torch.rand(5, generator=gen, dtype=torch.float64) + 0.5
    options = {"alpha": [0.5, 1.0, 1.0, 2.0, 1.0], "gamma": 2.0, "weight": w}
    entries = losskit.softmax_focal_loss(logits, index, per_class=True, reduction="none", **options)
    assert entries.shape == logits.shape
    close(entries.sum(1), losskit.softmax_focal_loss(logits, index, reduction="none", **options))
    counted = (index != -100).sum()
    close(losskit.softmax_focal_loss(logits, index, per_class=True, **options), entries.sum() / (counted * w.sum()))
    probabilities = torch.softmax(logits, 1)  # soft targets keep every class's term
    soft = losskit.softmax_focal_loss(logits, probabilities, per_class=True, reduction="none", gamma=2.0)
    close(soft.sum(1), losskit.softmax_focal_loss(logits, probabilities, reduction="none", gamma=2.0))


def test_sigmoid_focal_large_cpu_input_walked_in_chunks_matches_the_formula(gen):
    # 300k elements: above the CPU chunk size, so the chunked path runs (with a ragged last chunk).
    logits = torch.randn(3, 100_003, generator=gen, dtype=torch.float64) * 4
    target = torch.rand(3, 100_003, generator=gen, dtype=torch.float64)
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = losskit.sigmoid_focal_loss(x1, target, reduction="none")
    theirs = ref.sigmoid_focal(x2, target, alpha=0.25, gamma=2.0)
    close(ours, theirs)
    close(torch.autograd.grad(ours.sum(), x1)[0], torch.autograd.grad(theirs.sum(), x2)[0])

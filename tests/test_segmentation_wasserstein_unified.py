"""Generalized Wasserstein Dice and asymmetric unified focal losses: live parity with MONAI 1.6.1
(values and gradients), float64 references written from the papers (tests/reference_segmentation.py),
the transport problem solved as a linear program, the options MONAI lacks, and bad input."""

from __future__ import annotations

import pytest
import torch

import losskit
from losskit import nn as lnn
from tests import reference_segmentation as ref

monai_dice = pytest.importorskip("monai.losses.dice")
monai_unified = pytest.importorskip("monai.losses.unified_focal_loss")

DISTANCES = torch.tensor([[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.6, 0.7], [1.0, 0.6, 0.0, 0.5], [1.0, 0.7, 0.5, 0.0]],
                         dtype=torch.float64)


def _case(seed: int = 0, classes: int = 4, spatial: tuple[int, ...] = (5, 6, 3), scale: float = 2.0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn((2, classes, *spatial), generator=gen, dtype=torch.float64) * scale
    labels = torch.randint(classes, (2, 1, *spatial), generator=gen)
    return logits, labels


def _value_and_grad(fn, logits):
    x = logits.detach().clone().requires_grad_()
    out = fn(x)
    (grad,) = torch.autograd.grad(out, x)
    return out.detach(), grad


# --- generalized Wasserstein Dice ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["default", "GDL"])
@pytest.mark.parametrize("spatial", [(5, 6), (5, 6, 3)])
def test_generalized_wasserstein_dice_matches_monai(mode, spatial):
    logits, labels = _case(1, spatial=spatial)
    dist = DISTANCES * 3  # MONAI scales the matrix to a largest entry of 1; so does losskit
    monai = monai_dice.GeneralizedWassersteinDiceLoss(dist_matrix=dist, weighting_mode=mode)
    theirs, their_grad = _value_and_grad(lambda x: monai(x, labels), logits)
    ours, our_grad = _value_and_grad(
        lambda x: losskit.generalized_wasserstein_dice_loss(x, labels, dist_matrix=dist, weighting_mode=mode), logits)
    # MONAI's GDL weights 1 / (V + 1) are float32; its default weights (0 and 1) are exact
    tol = 1e-6 if mode == "GDL" else 1e-12
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=0)
    torch.testing.assert_close(our_grad, their_grad, rtol=tol, atol=1e-14)
    none = monai_dice.GeneralizedWassersteinDiceLoss(dist_matrix=dist, weighting_mode=mode, reduction="none")
    torch.testing.assert_close(
        losskit.generalized_wasserstein_dice_loss(logits, labels, dist_matrix=dist, weighting_mode=mode,
                                                  reduction="none"),
        none(logits, labels), rtol=tol, atol=0)


@pytest.mark.parametrize("mode", ["default", "GDL"])
def test_generalized_wasserstein_dice_matches_the_paper_with_ignored_voxels(mode):
    logits, labels = _case(2, spatial=(4, 5))
    labels = labels.squeeze(1)
    ignored = torch.rand(labels.shape, generator=torch.Generator().manual_seed(9)) < 0.3
    poisoned = torch.where(ignored.unsqueeze(1), torch.nan, logits)
    masked = torch.where(ignored, 255, labels)
    expected = ref.wasserstein_dice(torch.softmax(logits, 1), labels, DISTANCES, mode, valid=~ignored)
    ours, grad = _value_and_grad(
        lambda x: losskit.generalized_wasserstein_dice_loss(x, masked, dist_matrix=DISTANCES, weighting_mode=mode,
                                                            ignore_index=255, reduction="none").sum(), poisoned)
    torch.testing.assert_close(ours, expected.sum(), rtol=1e-12, atol=0)
    assert torch.isfinite(grad).all() and (grad.movedim(1, -1)[ignored] == 0).all()


def test_wasserstein_distance_is_the_optimal_transport_cost():
    """One foreground voxel per sample: unsmoothed, TP = 1 - W and the error is W, so the loss is
    W / (2 - W) and W = 2 L / (1 + L); W must be the cost of the cheapest plan moving the predicted
    distribution onto the label, solved here as a linear program over all transport plans."""
    linprog = pytest.importorskip("scipy.optimize").linprog
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn((12, 4, 1), generator=gen, dtype=torch.float64) * 2
    labels = torch.randint(1, 4, (12, 1), generator=gen)
    loss = losskit.generalized_wasserstein_dice_loss(logits, labels, dist_matrix=DISTANCES, smooth_nr=0,
                                                     smooth_dr=0, eps=0, reduction="none")
    distance = 2 * loss / (1 + loss)
    probs = torch.softmax(logits[..., 0], 1)
    for i in range(12):
        goal = torch.nn.functional.one_hot(labels[i, 0], 4).double()
        # plan T (4 x 4, row = from, column = to): rows sum to p, columns to the one-hot label, T >= 0
        rows = [[1.0 if k // 4 == a else 0.0 for k in range(16)] for a in range(4)]
        cols = [[1.0 if k % 4 == b else 0.0 for k in range(16)] for b in range(4)]
        result = linprog(DISTANCES.reshape(-1).numpy(), A_eq=rows + cols,
                         b_eq=probs[i].tolist() + goal.tolist(), bounds=(0, None), method="highs")
        assert distance[i].item() == pytest.approx(result.fun, rel=1e-7, abs=1e-12)


def test_generalized_wasserstein_dice_without_a_matrix_and_at_convergence():
    logits, labels = _case(4, classes=3, spatial=(4, 4))
    unit = 1 - torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(losskit.generalized_wasserstein_dice_loss(logits, labels),
                               losskit.generalized_wasserstein_dice_loss(logits, labels, dist_matrix=unit * 7),
                               rtol=1e-14, atol=0)
    # the labelled logit 30 ahead: W is about 2 exp(-30) per voxel, so the loss is about 1e-13, and
    # float32 keeps its digits (1 - ratio would read 0)
    confident = torch.nn.functional.one_hot(labels.squeeze(1), 3).movedim(-1, 1).double() * 30
    exact = losskit.generalized_wasserstein_dice_loss(confident, labels, dist_matrix=DISTANCES[:3, :3],
                                                      smooth_nr=0, smooth_dr=0, eps=0, reduction="none")
    single = losskit.generalized_wasserstein_dice_loss(confident.float(), labels, dist_matrix=DISTANCES[:3, :3],
                                                       smooth_nr=0, smooth_dr=0, eps=0, reduction="none")
    assert (exact > 0).all() and (exact < 1e-11).all()
    torch.testing.assert_close(single.double(), exact, rtol=1e-5, atol=0)


def test_generalized_wasserstein_dice_module_keeps_the_matrix_as_a_buffer():
    module = lnn.GeneralizedWassersteinDiceLoss(dist_matrix=DISTANCES, weighting_mode="GDL")
    assert "dist_matrix" in dict(module.named_buffers())
    assert module.to(torch.float32).dist_matrix.dtype == torch.float32
    again = losskit.get(module.get_config())
    logits, labels = _case(5)
    assert again(logits, labels).item() == pytest.approx(module(logits, labels).item(), rel=1e-6)
    assert losskit.get("gwdl").registered_name == "generalized_wasserstein_dice"


@pytest.mark.parametrize(("dist", "message"), [
    (DISTANCES[:3, :3], r"dist_matrix must have shape \(4, 4\)"),
    (DISTANCES + torch.triu(torch.ones(4, 4, dtype=torch.float64), 1) * 0.1, "dist_matrix must be symmetric"),
    (DISTANCES + torch.eye(4, dtype=torch.float64), "dist_matrix must have a zero diagonal"),
    (-DISTANCES, "dist_matrix must be non-negative"),
    (torch.zeros(4, 4, dtype=torch.float64), "dist_matrix must have a positive entry"),
    (torch.where(DISTANCES == 0.5, torch.nan, DISTANCES), "dist_matrix must be finite"),
])
def test_generalized_wasserstein_dice_rejects_a_bad_distance_matrix(dist, message):
    logits, labels = _case(6)
    with pytest.raises(ValueError, match=message):
        losskit.generalized_wasserstein_dice_loss(logits, labels, dist_matrix=dist)


def test_generalized_wasserstein_dice_rejects_bad_input():
    logits, labels = _case(7)
    with pytest.raises(TypeError, match="dist_matrix must be a torch.Tensor"):
        losskit.generalized_wasserstein_dice_loss(logits, labels, dist_matrix=DISTANCES.tolist())
    with pytest.raises(TypeError, match="target must hold integer class indices"):
        losskit.generalized_wasserstein_dice_loss(logits, torch.softmax(logits, 1))
    with pytest.raises(ValueError, match="activation must be 'softmax' or None"):
        losskit.generalized_wasserstein_dice_loss(logits, labels, activation="sigmoid")
    with pytest.raises(ValueError, match="weighting_mode"):
        losskit.generalized_wasserstein_dice_loss(logits, labels, weighting_mode="gdl")
    with pytest.raises(ValueError, match="input must hold probabilities"):
        losskit.generalized_wasserstein_dice_loss(logits, labels, activation=None)


# --- asymmetric unified focal -------------------------------------------------------------------


def _monai_value_and_grad(loss, logits, target, activation="softmax"):
    return _value_and_grad(lambda x: loss(torch.softmax(x, 1) if activation == "softmax" else torch.sigmoid(x),
                                          target), logits)


@pytest.mark.parametrize("spatial", [(6, 7), (4, 5, 3)])
def test_asymmetric_unified_focal_matches_monai(spatial):
    logits, labels = _case(10, classes=2, spatial=spatial)
    monai = monai_unified.AsymmetricUnifiedFocalLoss(to_onehot_y=True)
    theirs, their_grad = _monai_value_and_grad(monai, logits, labels)
    ours, our_grad = _value_and_grad(
        lambda x: losskit.asymmetric_unified_focal_loss(x, labels, delta=0.7, focal_class_mean=True), logits)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-9, atol=1e-15)


def test_asymmetric_unified_focal_matches_monai_with_one_sigmoid_channel():
    logits, labels = _case(11, classes=1, spatial=(6, 7))
    labels = (torch.rand(labels.shape, generator=torch.Generator().manual_seed(1)) < 0.3).long()
    for target in (labels, labels.double()):  # index labels, and a float mask (MONAI's binary input)
        theirs, their_grad = _monai_value_and_grad(monai_unified.AsymmetricUnifiedFocalLoss(), logits,
                                                   labels.double(), "sigmoid")
        ours, our_grad = _value_and_grad(
            lambda x, t=target: losskit.asymmetric_unified_focal_loss(x, t, activation="sigmoid", delta=0.7,
                                                                      focal_class_mean=True), logits)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
        torch.testing.assert_close(our_grad, their_grad, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize(("lambda_focal", "part", "gamma"), [(1.0, "AsymmetricFocalLoss", 2.0),
                                                             (0.0, "AsymmetricFocalTverskyLoss", 0.75)])
def test_asymmetric_unified_focal_halves_match_monai(lambda_focal, part, gamma):
    logits, labels = _case(12, classes=2, spatial=(6, 7))
    for delta in (0.7, 0.4):
        monai = getattr(monai_unified, part)(to_onehot_y=True, delta=delta, gamma=gamma)
        theirs, their_grad = _monai_value_and_grad(monai, logits, labels)
        ours, our_grad = _value_and_grad(
            lambda x, d=delta: losskit.asymmetric_unified_focal_loss(x, labels, lambda_focal=lambda_focal, delta=d,
                                                                     gamma=gamma, focal_class_mean=True), logits)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
        torch.testing.assert_close(our_grad, their_grad, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("focal_class_mean", [False, True])
@pytest.mark.parametrize("target_kind", ["index", "one_hot", "ignored"])
def test_asymmetric_unified_focal_matches_the_paper_with_several_classes(focal_class_mean, target_kind):
    logits, labels = _case(13, classes=4, spatial=(5, 6))
    labels = labels.squeeze(1)
    ignore = 255 if target_kind == "ignored" else None
    if ignore is not None:
        labels = torch.where(torch.rand(labels.shape, generator=torch.Generator().manual_seed(2)) < 0.3, ignore,
                             labels)
    t, mask = ref.one_hot(labels, 4, ignore)
    target = t if target_kind == "one_hot" else labels
    options = {"lambda_focal": 0.3, "delta": 0.65, "gamma": 0.4}
    expected = ref.asymmetric_unified_focal(logits, t, mask, lam=0.3, delta=0.65, gamma=0.4,
                                            focal_class_mean=focal_class_mean)
    ours = losskit.asymmetric_unified_focal_loss(logits, target, ignore_index=ignore,
                                                 focal_class_mean=focal_class_mean, reduction="none", **options)
    torch.testing.assert_close(ours, expected, rtol=1e-11, atol=0)
    # the defaults are the authors' (lambda 0.5, delta 0.6, gamma 0.5, the focal term summed over classes)
    torch.testing.assert_close(losskit.asymmetric_unified_focal_loss(logits, target, ignore_index=ignore,
                                                                     reduction="none"),
                               ref.asymmetric_unified_focal(logits, t, mask), rtol=1e-11, atol=0)


def test_asymmetric_unified_focal_batch_aggregate_pools_both_halves():
    logits, labels = _case(14, classes=3, spatial=(4, 5))
    t, mask = ref.one_hot(labels.squeeze(1), 3)
    pooled = losskit.asymmetric_unified_focal_loss(logits, labels, aggregate="batch", reduction="none")
    # the batch as one sample: both images side by side along a spatial axis
    side_by_side = torch.cat(logits.unbind(0), 1).unsqueeze(0)
    expected = ref.asymmetric_unified_focal(side_by_side, torch.cat(t.unbind(0), 1).unsqueeze(0),
                                            torch.cat(mask.unbind(0), 0).unsqueeze(0))
    assert pooled.shape == (1,)
    torch.testing.assert_close(pooled, expected, rtol=1e-11, atol=0)


def test_asymmetric_unified_focal_near_convergence_and_saturation_in_float32():
    logits, labels = _case(15, classes=3, spatial=(6, 6), scale=0.5)
    lead = torch.nn.functional.one_hot(labels.squeeze(1), 3).movedim(-1, 1).double() * 18
    exact = losskit.asymmetric_unified_focal_loss(logits + lead, labels, reduction="none")
    single = losskit.asymmetric_unified_focal_loss((logits + lead).float(), labels, reduction="none")
    assert (exact < 1e-3).all()
    torch.testing.assert_close(single.double(), exact, rtol=1e-5, atol=0)
    # logits of +-1e4: every probability is exactly 0 or 1 in float32; the value and gradient stay finite
    wild = ((torch.rand(logits.shape, generator=torch.Generator().manual_seed(4)) < 0.5).float() * 2 - 1) * 1e4
    x = wild.requires_grad_()
    loss = losskit.asymmetric_unified_focal_loss(x, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_asymmetric_unified_focal_rejects_bad_input():
    logits, labels = _case(16, classes=3)
    with pytest.raises(ValueError, match="activation='sigmoid' takes one foreground logit"):
        losskit.asymmetric_unified_focal_loss(logits, labels, activation="sigmoid")
    with pytest.raises(ValueError, match="activation='softmax' over a single channel"):
        losskit.asymmetric_unified_focal_loss(logits[:, :1], labels.clamp_max(0))
    with pytest.raises(ValueError, match="activation must be 'softmax' or 'sigmoid'"):
        losskit.asymmetric_unified_focal_loss(torch.softmax(logits, 1), labels, activation=None)
    with pytest.raises(ValueError, match="gamma must be in"):
        losskit.asymmetric_unified_focal_loss(logits, labels, gamma=2.0)
    losskit.asymmetric_unified_focal_loss(logits, labels, gamma=2.0, lambda_focal=1.0)  # the focal half alone
    with pytest.raises(ValueError, match="delta"):
        losskit.asymmetric_unified_focal_loss(logits, labels, delta=1.5)
    with pytest.raises(ValueError, match="lambda_focal"):
        losskit.asymmetric_unified_focal_loss(logits, labels, lambda_focal=-0.1)
    with pytest.raises(ValueError, match="target"):
        losskit.asymmetric_unified_focal_loss(logits, labels + 3)


@pytest.mark.parametrize("name", ["generalized_wasserstein_dice_loss", "asymmetric_unified_focal_loss"])
def test_every_voxel_ignored_gives_zero_with_a_zero_gradient(name):
    # equal smoothing: an empty prediction of an empty target is perfect (0 / 0 -> s / s = 1)
    logits, labels = _case(17, classes=3, spatial=(3, 4))
    x = torch.where(torch.rand(logits.shape, generator=torch.Generator().manual_seed(5)) < 0.5, torch.nan,
                    logits).requires_grad_()
    loss = getattr(losskit, name)(x, torch.full_like(labels, 255), ignore_index=255, reduction="none")
    loss.sum().backward()
    assert (loss == 0).all() and (x.grad == 0).all()

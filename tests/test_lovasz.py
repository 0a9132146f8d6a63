"""Lovász-Softmax and Lovász hinge: against an independent float64 reference (tests/reference_lovasz.py),
against kornia 0.9.0 live, and the edge cases (ignored pixels, absent classes, empty masks, half
precision, argument errors)."""

from __future__ import annotations

import itertools

import pytest
import torch

import losskit
from tests import reference_lovasz as ref

DT = torch.float64
IGNORE = 255


def close(actual, expected, rtol=1e-10, atol=1e-12):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def _case(gen, n=2, c=4, h=3, w=5, ignore=0.0, drop_class=None):
    logits = torch.randn((n, c, h, w), generator=gen, dtype=DT) * 2
    target = torch.randint(c, (n, h, w), generator=gen)
    if drop_class is not None:
        target = torch.where(target == drop_class, (drop_class + 1) % c, target)
    if ignore:
        target = torch.where(torch.rand((n, h, w), generator=gen) < ignore, IGNORE, target)
    return logits, target


# --- Lovász-Softmax against the reference ----------------------------------------------------------


@pytest.mark.parametrize("per_image,classes,include_background,activation,ignore",
                         list(itertools.product([False, True], ["present", "all"], [True, False],
                                                ["softmax", "sigmoid"], [0.0, 0.3])))
def test_softmax_matches_reference(gen, per_image, classes, include_background, activation, ignore):
    logits, target = _case(gen, ignore=ignore, drop_class=2)  # class 2 absent: "present" matters
    ignore_index = IGNORE if ignore else None
    x = logits.clone().requires_grad_(True)
    options = dict(classes=classes, per_image=per_image, include_background=include_background,
                   activation=activation, ignore_index=ignore_index)
    none = losskit.lovasz_softmax_loss(x, target, **options, reduction="none")
    mean = losskit.lovasz_softmax_loss(x, target, **options)

    xr = logits.clone().requires_grad_(True)
    probs = torch.softmax(xr, 1) if activation == "softmax" else torch.sigmoid(xr)
    units = ref.lovasz_softmax(probs, target, classes=classes, per_image=per_image, ignore_index=ignore_index,
                               first_class=0 if include_background else 1)
    k = 4 if include_background else 3
    close(none, ref.as_unit_tensor(units, (2, k) if per_image else (k,)))
    expected = ref.mean(units)
    close(mean, expected)
    (grad,) = torch.autograd.grad(mean, x)
    (grad_ref,) = torch.autograd.grad(expected, xr)
    close(grad, grad_ref)


def test_softmax_equals_one_minus_iou_on_binary_probabilities(gen):
    # The Lovász extension equals the set function on {0, 1} vectors: with hard probabilities the loss of a
    # class is 1 - IoU of the predicted mask.
    pred = torch.randint(3, (1, 4, 6), generator=gen)
    target = torch.randint(3, (1, 4, 6), generator=gen)
    probs = torch.nn.functional.one_hot(pred, 3).movedim(-1, 1).to(DT)
    loss = losskit.lovasz_softmax_loss(probs, target, activation=None, classes="all", reduction="none")
    for c in range(3):
        p, t = pred == c, target == c
        iou = (p & t).sum().to(DT) / (p | t).sum().to(DT)
        close(loss[c], 1 - iou)
    # A perfect prediction gives 0.
    perfect = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).to(DT)
    assert losskit.lovasz_softmax_loss(perfect, target, activation=None).item() == 0.0


def test_doctest_value_by_hand():
    # class 0: errors [0.2, 0.4], sorted [0.4 (bg), 0.2 (fg)], J = [0.5, 1] -> 0.3; class 1: 0.4 (see docstring)
    p = torch.tensor([[[0.8, 0.4], [0.2, 0.6]]], dtype=DT)
    out = losskit.lovasz_softmax_loss(p, torch.tensor([[0, 1]]), activation=None, reduction="none")
    close(out, torch.tensor([0.3, 0.4], dtype=DT))


def test_ignore_index_equals_cropping(gen):
    logits, target = _case(gen, n=2, c=3, h=4, w=6)
    target[..., -2:] = IGNORE  # the last two columns are ignored
    for per_image, classes in itertools.product([False, True], ["present", "all"]):
        x = logits.clone().requires_grad_(True)
        loss = losskit.lovasz_softmax_loss(x, target, ignore_index=IGNORE, per_image=per_image, classes=classes)
        cropped = logits[..., :-2].clone().requires_grad_(True)
        expected = losskit.lovasz_softmax_loss(cropped, target[..., :-2], per_image=per_image, classes=classes)
        close(loss, expected)
        (grad,) = torch.autograd.grad(loss, x)
        (grad_cropped,) = torch.autograd.grad(expected, cropped)
        close(grad[..., :-2], grad_cropped)
        assert (grad[..., -2:] == 0).all()  # ignored logits (softmax couples channels of a pixel only)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_ignored_pixels_may_hold_nan_or_inf(gen, value):
    # As cropping them out: the same value and gradient, and a zero gradient there (a NaN pixel's
    # softmax is NaN in every channel, and its backward turned the zero gradient into NaN).
    logits, target = _case(gen, n=2, c=3, h=4, w=6)
    target[..., -2:] = IGNORE
    poisoned = logits.clone()
    poisoned[:, 1, :, -1] = value
    for per_image in (False, True):
        grads = []
        for x in (logits, poisoned):
            x = x.clone().requires_grad_(True)
            loss = losskit.lovasz_softmax_loss(x, target, ignore_index=IGNORE, per_image=per_image)
            grads.append((loss, torch.autograd.grad(loss, x)[0]))
        (expected, grad), (loss, grad_poisoned) = grads
        close(loss, expected)
        torch.testing.assert_close(grad_poisoned, grad, rtol=0, atol=0)
        assert (grad_poisoned[..., -2:] == 0).all()
    hinge_target = (torch.rand(2, 1, 4, 6, generator=gen) < 0.5).long()
    hinge_target[..., -2:] = IGNORE
    x = torch.randn(2, 1, 4, 6, generator=gen, dtype=DT)
    x[..., -1] = value
    x.requires_grad_(True)
    loss = losskit.lovasz_hinge_loss(x, hinge_target, ignore_index=IGNORE)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and (grad[..., -2:] == 0).all()
    close(loss, losskit.lovasz_hinge_loss(x.detach()[..., :-2], hinge_target[..., :-2]))


def test_present_and_all_classes(gen):
    logits, target = _case(gen, n=2, c=3, drop_class=2)
    probs = torch.softmax(logits, 1)
    present = losskit.lovasz_softmax_loss(logits, target, reduction="none")
    every = losskit.lovasz_softmax_loss(logits, target, classes="all", reduction="none")
    assert present[2] == 0 and every[2] > 0
    close(present[:2], every[:2])
    # An absent class costs its largest probability (the extension at |F| = 0).
    close(every[2], probs[:, 2].max())
    close(losskit.lovasz_softmax_loss(logits, target), present[:2].mean())
    close(losskit.lovasz_softmax_loss(logits, target, classes="all"), every.mean())


def test_class_weight_and_weight(gen):
    logits, target = _case(gen, n=2, c=3, drop_class=1)
    cw = torch.tensor([0.5, 3.0, 2.0], dtype=DT)
    none = losskit.lovasz_softmax_loss(logits, target, reduction="none")
    weighted = losskit.lovasz_softmax_loss(logits, target, class_weight=cw)
    # Absent class 1 is ignored: weighted mean over classes 0 and 2 only.
    close(weighted, (0.5 * none[0] + 2.0 * none[2]) / 2.5)
    close(losskit.lovasz_softmax_loss(logits, target, weight=cw), weighted)
    # Without the background, class_weight still has C entries; entry 0 is dropped.
    nb = losskit.lovasz_softmax_loss(logits, target, include_background=False, class_weight=cw, reduction="none")
    close(nb, torch.stack([torch.zeros((), dtype=DT), 2.0 * none[2]]))


# --- Lovász hinge against the reference ------------------------------------------------------------


@pytest.mark.parametrize("per_image,ignore,channels", list(itertools.product([True, False], [0.0, 0.3], [1, 3])))
def test_hinge_matches_reference(gen, per_image, ignore, channels):
    logits = torch.randn((3, channels, 3, 4), generator=gen, dtype=DT) * 2
    target = (torch.rand(logits.shape, generator=gen) < 0.4).long()
    target[0, 0] = 0  # a unit without foreground
    if ignore:
        target = torch.where(torch.rand(logits.shape, generator=gen) < ignore, IGNORE, target)
    ignore_index = IGNORE if ignore else None
    x = logits.clone().requires_grad_(True)
    none = losskit.lovasz_hinge_loss(x, target, per_image=per_image, ignore_index=ignore_index, reduction="none")
    mean = losskit.lovasz_hinge_loss(x, target, per_image=per_image, ignore_index=ignore_index)
    xr = logits.clone().requires_grad_(True)
    units = ref.lovasz_hinge(xr, target, per_image=per_image, ignore_index=ignore_index)
    close(none, ref.as_unit_tensor(units, (3, channels) if per_image else (channels,)))
    expected = ref.mean(units)
    close(mean, expected)
    close(torch.autograd.grad(mean, x)[0], torch.autograd.grad(expected, xr)[0])


def test_hinge_target_layouts_and_perfect_prediction(gen):
    logits = torch.randn((2, 1, 3, 4), generator=gen, dtype=DT)
    target = torch.rand((2, 1, 3, 4), generator=gen) < 0.5
    expected = losskit.lovasz_hinge_loss(logits, target.to(DT))
    close(losskit.lovasz_hinge_loss(logits, target), expected)  # bool
    close(losskit.lovasz_hinge_loss(logits, target.long()), expected)  # integer
    close(losskit.lovasz_hinge_loss(logits, target.squeeze(1).long()), expected)  # (N, H, W), one channel
    perfect = torch.where(target, 5.0, -5.0).to(DT)
    assert losskit.lovasz_hinge_loss(perfect, target).item() == 0.0


def test_hinge_ignore_index_equals_cropping(gen):
    logits = torch.randn((2, 2, 4, 5), generator=gen, dtype=DT) * 2
    target = (torch.rand(logits.shape, generator=gen) < 0.4).long()
    target[..., -1] = IGNORE
    for per_image in (True, False):
        x = logits.clone().requires_grad_(True)
        loss = losskit.lovasz_hinge_loss(x, target, per_image=per_image, ignore_index=IGNORE)
        cropped = logits[..., :-1].clone().requires_grad_(True)
        expected = losskit.lovasz_hinge_loss(cropped, target[..., :-1], per_image=per_image)
        close(loss, expected)
        (grad,) = torch.autograd.grad(loss, x)
        close(grad[..., :-1], torch.autograd.grad(expected, cropped)[0])
        assert (grad[..., -1] == 0).all()


# --- edge cases --------------------------------------------------------------------------------------


def test_empty_masks_and_all_ignored_images(gen):
    logits, target = _case(gen, n=2, c=3)
    # Only the background in the target: finite, and "all" scores the absent classes.
    background = torch.zeros_like(target)
    for classes in ("present", "all"):
        x = logits.clone().requires_grad_(True)
        out = losskit.lovasz_softmax_loss(x, background, classes=classes)
        (grad,) = torch.autograd.grad(out, x)
        assert torch.isfinite(out) and torch.isfinite(grad).all()
    # One image fully ignored: its units drop out of the per-image mean.
    partly = target.clone()
    partly[1] = IGNORE
    x = logits.clone().requires_grad_(True)
    out = losskit.lovasz_softmax_loss(x, partly, ignore_index=IGNORE, per_image=True, classes="all")
    close(out, losskit.lovasz_softmax_loss(logits[:1], target[:1], per_image=True, classes="all"))
    (grad,) = torch.autograd.grad(out, x)
    assert (grad[1] == 0).all()
    # Everything ignored: 0 with a (zero) gradient, for both losses and every reduction.
    everything = torch.full_like(target, IGNORE)
    for per_image, reduction in itertools.product([False, True], ["mean", "sum"]):
        x = logits.clone().requires_grad_(True)
        out = losskit.lovasz_softmax_loss(x, everything, ignore_index=IGNORE, per_image=per_image,
                                          reduction=reduction)
        assert out.item() == 0.0
        assert (torch.autograd.grad(out, x)[0] == 0).all()
        h = losskit.lovasz_hinge_loss(x, torch.full(x.shape, IGNORE), ignore_index=IGNORE, per_image=per_image,
                                      reduction=reduction)
        assert h.item() == 0.0
        assert (torch.autograd.grad(h, x)[0] == 0).all()
    # Hinge: a channel without foreground scores its largest hinge error, finite gradient.
    x = logits.clone().requires_grad_(True)
    out = losskit.lovasz_hinge_loss(x, torch.zeros(x.shape), reduction="none")
    close(out, torch.relu(1 + logits).flatten(2).max(-1).values)
    assert torch.isfinite(torch.autograd.grad(out.sum(), x)[0]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision(gen, dtype):
    logits, target = _case(gen, n=2, c=3, ignore=0.2)
    x = logits.to(dtype).requires_grad_(True)
    out = losskit.lovasz_softmax_loss(x, target, ignore_index=IGNORE, per_image=True)
    assert out.dtype == dtype
    close(out.double(), losskit.lovasz_softmax_loss(x.detach().double(), target, ignore_index=IGNORE, per_image=True),
          rtol=2e-2, atol=2e-2)
    (grad,) = torch.autograd.grad(out, x)
    assert grad.dtype == dtype and torch.isfinite(grad).all()
    binary = (target == 1).long().unsqueeze(1).expand(-1, 3, -1, -1)
    h = losskit.lovasz_hinge_loss(x, binary)
    assert h.dtype == dtype
    close(h.double(), losskit.lovasz_hinge_loss(x.detach().double(), binary), rtol=2e-2, atol=2e-2)
    assert torch.isfinite(torch.autograd.grad(h, x)[0]).all()


def test_extreme_logits_are_finite():
    x = torch.tensor([[[1e4, -1e4, 3.0], [-1e4, 1e4, -3.0]]], requires_grad=True)
    t = torch.tensor([[0, 0, 1]])
    out = losskit.lovasz_softmax_loss(x, t) + losskit.lovasz_hinge_loss(x, torch.ones_like(x))
    assert torch.isfinite(out) and torch.isfinite(torch.autograd.grad(out, x)[0]).all()


def test_errors_name_the_argument(gen):
    logits, target = _case(gen, n=1, c=3)
    S = losskit.lovasz_softmax_loss
    H = losskit.lovasz_hinge_loss
    with pytest.raises(ValueError, match="classes"):
        S(logits, target, classes="some")
    with pytest.raises(TypeError, match="per_image"):
        S(logits, target, per_image="yes")
    with pytest.raises(TypeError, match="per_image"):
        H(logits, torch.zeros_like(logits), per_image=1)
    with pytest.raises(ValueError, match="activation"):
        S(logits, target, activation="relu")
    with pytest.raises(ValueError, match="activation"):
        S(logits[:, :1], torch.zeros_like(target))  # softmax over one channel
    with pytest.raises(ValueError, match="class_weight"):
        S(logits, target, class_weight=torch.ones(2, dtype=DT))
    with pytest.raises(ValueError, match="weight"):
        S(logits, target, weight=torch.ones(5, dtype=DT))
    with pytest.raises(ValueError, match="weight"):
        H(logits, torch.zeros_like(logits), weight=torch.ones(2, 2, dtype=DT))
    with pytest.raises(ValueError, match="target"):
        S(logits, torch.full_like(target, 3))  # class index out of range
    with pytest.raises(TypeError, match="input"):
        S(target, target)
    with pytest.raises(ValueError, match="target"):
        H(logits, torch.full(logits.shape, 2))  # not a binary label
    with pytest.raises(ValueError, match="target"):
        H(logits, target)  # (N, H, W) needs one channel
    with pytest.raises(ValueError, match="target"):
        H(logits, torch.full(logits.shape, 1.5, dtype=DT))
    with pytest.raises(ValueError, match="ignore_index"):
        H(logits, torch.zeros_like(logits), ignore_index=IGNORE)
    with pytest.raises(ValueError, match="input"):
        H(logits[:, :, 0, 0], torch.zeros(1, 3, dtype=DT))


# --- kornia 0.9.0, live ----------------------------------------------------------------------------


@pytest.mark.peer
@pytest.mark.parametrize("c", [2, 4])
def test_softmax_matches_kornia(gen, c):
    kornia = pytest.importorskip("kornia")
    logits, target = _case(gen, n=3, c=c, drop_class=1)  # an absent class: kornia scores it ("all")
    x = logits.clone().requires_grad_(True)
    xk = logits.clone().requires_grad_(True)
    ours = losskit.lovasz_softmax_loss(x, target, classes="all", per_image=True)
    theirs = kornia.losses.lovasz_softmax_loss(xk, target)
    close(ours, theirs)
    close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(theirs, xk)[0])
    # kornia's weight scales each class and still divides by C: class_weight plus normalizer=N*C.
    w = torch.rand(c, generator=gen, dtype=DT) + 0.5
    close(losskit.lovasz_softmax_loss(logits, target, classes="all", per_image=True, class_weight=w,
                                      normalizer=3 * c),
          kornia.losses.lovasz_softmax_loss(logits, target, weight=w))


@pytest.mark.peer
def test_hinge_matches_kornia(gen):
    kornia = pytest.importorskip("kornia")
    logits = torch.randn((3, 1, 4, 5), generator=gen, dtype=DT) * 2
    target = (torch.rand((3, 4, 5), generator=gen) < 0.4).long()
    target[0] = 0  # an image without foreground
    x = logits.clone().requires_grad_(True)
    xk = logits.clone().requires_grad_(True)
    ours = losskit.lovasz_hinge_loss(x, target)
    theirs = kornia.losses.lovasz_hinge_loss(xk, target)
    close(ours, theirs)
    close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(theirs, xk)[0])


@pytest.mark.slow
def test_fullgraph_compile_without_host_syncs(gen):
    # No boolean-mask indexing or .item() in the forward pass: the whole loss compiles as one graph.
    logits, target = _case(gen, n=2, c=3, ignore=0.2)
    x = logits.float()
    with losskit.set_checks(False):
        soft = torch.compile(lambda a, b: losskit.lovasz_softmax_loss(a, b, ignore_index=IGNORE, per_image=True),
                             fullgraph=True)
        close(soft(x, target), losskit.lovasz_softmax_loss(x, target, ignore_index=IGNORE, per_image=True),
              rtol=1e-5, atol=1e-6)
        binary = torch.where(target == IGNORE, IGNORE, (target == 1).long()).unsqueeze(1).expand(-1, 3, -1, -1)
        hinge = torch.compile(lambda a, b: losskit.lovasz_hinge_loss(a, b, ignore_index=IGNORE), fullgraph=True)
        close(hinge(x, binary), losskit.lovasz_hinge_loss(x, binary, ignore_index=IGNORE), rtol=1e-5, atol=1e-6)

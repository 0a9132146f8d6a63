"""Distance transforms, signed maps, soft skeletons and the boundary / Hausdorff-DT / clDice losses.

References: scipy's ``distance_transform_edt`` for the transform, loop references written from the
papers' formulas (float64), and MONAI 1.6.1 running live (``@pytest.mark.peer``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

import losskit
from losskit import segmentation
from losskit.functional.boundary import boundary_loss, cldice_loss, hausdorff_dt_loss
from losskit.segmentation import distance_transform, signed_distance_map, soft_skeleton

LOSSES = {"boundary": boundary_loss, "hausdorff_dt": hausdorff_dt_loss, "cldice": cldice_loss}


def scipy_edt(mask: torch.Tensor, spacing=None) -> np.ndarray:
    """scipy per sample; a sample without background is inf (losskit's documented policy)."""
    out = []
    for m in mask.numpy():
        out.append(np.full(m.shape, np.inf) if m.all() else ndimage.distance_transform_edt(m, sampling=spacing))
    return np.stack(out) if out else np.zeros(mask.shape)


def random_masks(gen, shape, densities=(0.02, 0.3, 0.7, 0.97)):
    """Masks of several densities plus an empty and a full one (``len(densities) + 2`` samples)."""
    masks = [torch.rand(shape, generator=gen) < d for d in densities]
    masks += [torch.zeros(shape, dtype=torch.bool), torch.ones(shape, dtype=torch.bool)]
    return torch.stack(masks)


def logits_and_labels(gen, shape, classes=3):
    x = torch.randn((shape[0], classes, *shape[1:]), generator=gen, dtype=torch.float64) * 2
    t = torch.randint(classes, shape, generator=gen)
    return x, t


def one_hot(t, classes):
    return torch.nn.functional.one_hot(t, classes).movedim(-1, 1).double()


# --- distance_transform ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape,spacing", [
    ((17, 23), None),
    ((9, 11, 13), None),
    ((9, 11, 13), (0.7, 1.3, 2.1)),
    ((12, 5), (2.5, 0.4)),
    ((1, 9), None),
    ((31,), None),
    ((6, 7, 8), 1.7),
])
def test_distance_transform_equals_scipy(gen, shape, spacing):
    masks = random_masks(gen, shape)
    expected = scipy_edt(masks, spacing)
    d64 = distance_transform(masks, spacing=spacing, dtype=torch.float64)
    np.testing.assert_allclose(d64.numpy(), expected, rtol=0, atol=1e-6)
    d32 = distance_transform(masks, spacing=spacing)
    assert d32.dtype == torch.float32
    np.testing.assert_allclose(d32.double().numpy(), expected, rtol=1e-6, atol=1e-6)


def test_distance_transform_policy_for_empty_and_full_masks():
    empty, full = torch.zeros(1, 4, 5, dtype=torch.bool), torch.ones(1, 4, 5, dtype=torch.bool)
    assert (distance_transform(empty) == 0).all()  # no foreground: 0 everywhere, as scipy
    assert torch.isinf(distance_transform(full)).all()  # no background: no finite distance
    # A sample without background does not leak into its neighbours in the batch.
    mixed = torch.cat([full, torch.eye(4, 5, dtype=torch.bool)[None]])
    d = distance_transform(mixed)
    assert torch.isinf(d[0]).all() and torch.isfinite(d[1]).all()


def test_distance_transform_hand_worked():
    # One background voxel at the centre of a 3x3 image: edge neighbours 1, corners sqrt(2).
    mask = torch.ones(1, 3, 3, dtype=torch.bool)
    mask[0, 1, 1] = False
    r2 = 2**0.5
    expected = torch.tensor([[[r2, 1, r2], [1, 0, 1], [r2, 1, r2]]], dtype=torch.float64)
    torch.testing.assert_close(distance_transform(mask, dtype=torch.float64), expected)
    # Spacing (2, 1): rows are 2 apart, so the corners are sqrt(4 + 1).
    expected = torch.tensor([[[5**0.5, 2, 5**0.5], [1, 0, 1], [5**0.5, 2, 5**0.5]]], dtype=torch.float64)
    torch.testing.assert_close(distance_transform(mask, spacing=(2, 1), dtype=torch.float64), expected)


def test_distance_transform_is_independent_of_the_chunk_size(gen, monkeypatch):
    masks = random_masks(gen, (7, 9, 10))
    whole = distance_transform(masks)
    monkeypatch.setattr(segmentation, "_CHUNK_ELEMENTS_CPU", 1)  # one line per chunk
    torch.testing.assert_close(distance_transform(masks), whole, rtol=0, atol=0)


def test_distance_transform_accepts_numeric_masks_and_empty_batches(gen):
    masks = torch.rand(3, 6, 6, generator=gen) < 0.5
    torch.testing.assert_close(distance_transform(masks.float() * 3), distance_transform(masks))
    torch.testing.assert_close(distance_transform(masks.int()), distance_transform(masks))
    assert distance_transform(torch.zeros(0, 4, 5, dtype=torch.bool)).shape == (0, 4, 5)


def test_distance_transform_errors_name_the_argument():
    mask = torch.ones(2, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="spacing"):
        distance_transform(mask, spacing=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="spacing"):
        distance_transform(mask, spacing=-1.0)
    with pytest.raises(ValueError, match="mask"):
        distance_transform(torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask"):
        distance_transform(np.ones((2, 4)))
    with pytest.raises(TypeError, match="dtype"):
        distance_transform(mask, dtype=torch.float16)


# --- signed_distance_map --------------------------------------------------------------------------


def reference_signed(mask: np.ndarray, spacing=None) -> np.ndarray:
    """Kervadec's one_hot2dist for one mask, from scipy: -(d_fg - 1) inside, d_bg outside."""
    if not mask.any() or mask.all():
        return np.zeros(mask.shape)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    return np.where(mask, -(inside - 1), outside)


@pytest.mark.parametrize("shape,spacing", [((10, 12), None), ((6, 7, 8), None), ((6, 7, 8), (1.5, 0.5, 1.0))])
def test_signed_distance_map_matches_the_formula(gen, shape, spacing):
    masks = random_masks(gen, shape)
    expected = np.stack([reference_signed(m, spacing) for m in masks.numpy()])
    actual = signed_distance_map(masks, spacing=spacing, dtype=torch.float64)
    np.testing.assert_allclose(actual.numpy(), expected, rtol=0, atol=1e-6)
    # Hand-worked: a run of three in a row of six: outside 2, 1; rim 0; centre -(2 - 1); rim 0; outside 1.
    row = signed_distance_map(torch.tensor([[0, 0, 1, 1, 1, 0]]))
    torch.testing.assert_close(row, torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.0, 1.0]]))


@pytest.mark.peer
@pytest.mark.parametrize("shape", [(10, 12), (6, 7, 8)])
def test_signed_distance_map_matches_monai(gen, shape):
    from monai.losses import BoundaryLoss

    masks = random_masks(gen, shape)
    expected = BoundaryLoss().compute_distance_map(masks[:, None].float())[:, 0]
    torch.testing.assert_close(signed_distance_map(masks), expected, rtol=0, atol=1e-6)


# --- soft skeleton ----------------------------------------------------------------------------------


def _pool_reference(x: np.ndarray, offsets, reduce) -> np.ndarray:
    """Min or max of x over neighbour offsets (out-of-image neighbours skipped), one loop per voxel."""
    out = np.empty_like(x)
    for idx in np.ndindex(*x.shape):
        values = []
        for off in offsets:
            j = tuple(i + o for i, o in zip(idx, off, strict=True))
            if all(0 <= k < n for k, n in zip(j, x.shape, strict=True)):
                values.append(x[j])
        out[idx] = reduce(values)
    return out


def reference_skeleton(x: np.ndarray, iterations: int) -> np.ndarray:
    """Shit et al.'s soft skeleton of one image: cross-shaped min erosion, full-block max dilation."""
    d = x.ndim
    cross = [tuple(0 for _ in range(d))] + [tuple(s if k == a else 0 for k in range(d))
                                            for a in range(d) for s in (-1, 1)]
    block = list(np.ndindex(*([3] * d)))
    block = [tuple(o - 1 for o in off) for off in block]

    def erode(v):
        return _pool_reference(v, cross, min)

    def opened(v):
        return _pool_reference(erode(v), block, max)

    skel = np.maximum(x - opened(x), 0)
    for _ in range(iterations):
        x = erode(x)
        delta = np.maximum(x - opened(x), 0)
        skel = skel + np.maximum(delta - skel * delta, 0)
    return skel


@pytest.mark.parametrize("shape", [(7, 8), (4, 5, 6)])
def test_soft_skeleton_matches_the_loop_reference(gen, shape):
    x = torch.rand((2, 2, *shape), generator=gen, dtype=torch.float64)
    actual = soft_skeleton(x, 2)
    expected = np.stack([np.stack([reference_skeleton(c, 2) for c in s]) for s in x.numpy()])
    np.testing.assert_allclose(actual.numpy(), expected, rtol=0, atol=1e-12)


def test_soft_skeleton_errors():
    with pytest.raises(ValueError, match="x must have shape"):
        soft_skeleton(torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="iterations"):
        soft_skeleton(torch.rand(1, 1, 4, 4), -1)


# --- float64 references of the losses, from the formulas -------------------------------------------


def reference_boundary(x, t, include_background=False, spacing=None):
    p = torch.softmax(x, 1).numpy()
    labels = one_hot(t, x.shape[1]).numpy() > 0.5
    first = 0 if include_background else 1
    out = np.zeros((x.shape[0], x.shape[1] - first))
    for n in range(x.shape[0]):
        for c in range(first, x.shape[1]):
            out[n, c - first] = (p[n, c] * reference_signed(labels[n, c], spacing)).mean()
    return torch.from_numpy(out)


def reference_field(mask, spacing=None):
    if not mask.any() or mask.all():
        return np.zeros(mask.shape)
    return (ndimage.distance_transform_edt(mask, sampling=spacing)
            + ndimage.distance_transform_edt(~mask, sampling=spacing))


def reference_hausdorff(x, t, alpha=2.0, include_background=False, spacing=None):
    p = torch.softmax(x, 1).numpy()
    labels = one_hot(t, x.shape[1]).numpy()
    first = 0 if include_background else 1
    out = np.zeros((x.shape[0], x.shape[1] - first))
    for n in range(x.shape[0]):
        for c in range(first, x.shape[1]):
            dist = reference_field(p[n, c] > 0.5, spacing) ** alpha + reference_field(labels[n, c] > 0.5,
                                                                                     spacing) ** alpha
            out[n, c - first] = ((p[n, c] - labels[n, c]) ** 2 * dist).mean()
    return torch.from_numpy(out)


def reference_cldice(x, t, iterations=3, smooth=1.0, eps=1e-4):
    p = torch.softmax(x, 1).numpy()
    labels = one_hot(t, x.shape[1]).numpy()
    out = np.zeros((x.shape[0], x.shape[1] - 1))
    for n in range(x.shape[0]):
        for c in range(1, x.shape[1]):
            sp, st = reference_skeleton(p[n, c], iterations), reference_skeleton(labels[n, c], iterations)
            tprec = ((sp * labels[n, c]).sum() + smooth) / (sp.sum() + smooth)
            tsens = ((st * p[n, c]).sum() + smooth) / (st.sum() + smooth)
            out[n, c - 1] = 1 - 2 * tprec * tsens / (tprec + tsens + eps)
    return torch.from_numpy(out)


@pytest.mark.parametrize("shape", [(3, 9, 11), (2, 5, 6, 7)])
@pytest.mark.parametrize("include_background", [False, True])
def test_boundary_loss_matches_the_formula(gen, shape, include_background):
    x, t = logits_and_labels(gen, shape)
    t[0] = 0  # a sample where every foreground class is absent: its maps are 0
    actual = boundary_loss(x, t, include_background=include_background, reduction="none")
    torch.testing.assert_close(actual, reference_boundary(x, t, include_background), rtol=1e-12, atol=1e-12)
    assert (actual[0, -1] == 0).all()


def test_boundary_loss_with_spacing_and_precomputed_maps(gen):
    x, t = logits_and_labels(gen, (2, 5, 6, 7))
    spacing = (2.0, 0.5, 1.0)
    actual = boundary_loss(x, t, spacing=spacing, reduction="none")
    torch.testing.assert_close(actual, reference_boundary(x, t, spacing=spacing), rtol=1e-12, atol=1e-12)
    # Maps precomputed offline (all channels, or the kept ones) give the same loss and gradient.
    maps = signed_distance_map(one_hot(t, 3).flatten(0, 1), spacing=spacing, dtype=torch.float64).view(x.shape)
    for given in (maps, maps[:, 1:]):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        a = boundary_loss(xa, t, spacing=spacing)
        b = boundary_loss(xb, t, distance_map=given)
        a.backward()
        b.backward()
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(xa.grad, xb.grad)
    with pytest.raises(ValueError, match="distance_map"):
        boundary_loss(x, t, distance_map=maps[:, :, :-1])
    with pytest.raises(TypeError, match="distance_map"):
        boundary_loss(x, t, distance_map=maps.long())


@pytest.mark.parametrize("alpha", [2.0, 1.0])
@pytest.mark.parametrize("shape", [(3, 9, 11), (2, 5, 6, 7)])
def test_hausdorff_dt_loss_matches_the_formula(gen, shape, alpha):
    x, t = logits_and_labels(gen, shape)
    t[0] = 0
    actual = hausdorff_dt_loss(x, t, alpha=alpha, reduction="none")
    torch.testing.assert_close(actual, reference_hausdorff(x, t, alpha), rtol=1e-12, atol=1e-12)
    spacing = (1.5,) * (len(shape) - 2) + (0.5,)
    actual = hausdorff_dt_loss(x, t, alpha=alpha, spacing=spacing, include_background=True, reduction="none")
    expected = reference_hausdorff(x, t, alpha, include_background=True, spacing=spacing)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_cldice_loss_matches_the_formula(gen):
    x, t = logits_and_labels(gen, (2, 7, 8))
    actual = cldice_loss(x, t, iterations=2, reduction="none")
    torch.testing.assert_close(actual, reference_cldice(x, t, iterations=2), rtol=1e-12, atol=1e-12)
    pooled = cldice_loss(x, t, iterations=2, pool_classes=True, reduction="none")
    assert pooled.shape == (2,)


def test_perfect_predictions(gen):
    # A bar 3 pixels thick; confident correct logits.
    t = torch.zeros(2, 8, 9, dtype=torch.long)
    t[:, 3:6, 1:8] = 1
    x = one_hot(t, 2) * 40 - 20
    assert hausdorff_dt_loss(x, t).item() < 1e-12  # (p - t)^2 vanishes
    assert cldice_loss(x, t).item() < 1e-4  # tprec = tsens = 1: 1 - 2/(2 + 1e-4)
    # The boundary loss is then the mean of the map over the object: -(d - 1) summed inside.
    inside = signed_distance_map(t.bool()).double()
    torch.testing.assert_close(boundary_loss(x, t), (inside * t).mean(), rtol=1e-9, atol=1e-12)
    assert boundary_loss(x, t) < boundary_loss(-x, t)


# --- MONAI 1.6.1 live ------------------------------------------------------------------------------


def _monai_pair(monai_loss, ours, x, target_ours, target_monai):
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = monai_loss(xa, target_monai)
    actual = ours(xb, target_ours)
    expected.sum().backward()
    actual.sum().backward()
    return actual, expected, xb.grad, xa.grad


@pytest.mark.peer
@pytest.mark.parametrize("shape", [(3, 9, 11), (2, 5, 6, 7)])
@pytest.mark.parametrize(("include_background", "batch"), [(False, False), (True, False), (True, True)])
def test_boundary_loss_matches_monai(gen, shape, include_background, batch):
    from monai.losses import BoundaryLoss

    x, t = logits_and_labels(gen, shape)
    t[0] = 0
    aggregate = "batch" if batch else "per_sample"
    for reduction in ("none", "mean"):
        monai = BoundaryLoss(softmax=True, to_onehot_y=True, include_background=include_background, batch=batch,
                             reduction=reduction)
        actual, expected, grad, expected_grad = _monai_pair(
            monai, lambda a, b, r=reduction: boundary_loss(a, b, include_background=include_background,
                                                           aggregate=aggregate, reduction=r),
            x, t, t[:, None])
        if batch and reduction == "none":
            assert expected.shape == (3,) and actual.shape == (1, 3)  # MONAI drops the pooled batch dim
            expected = expected[None]
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.peer
@pytest.mark.parametrize("shape", [(3, 9, 11), (2, 5, 6, 7)])
@pytest.mark.parametrize("options", [{}, {"alpha": 1.5, "include_background": True}])
def test_hausdorff_dt_loss_matches_monai(gen, shape, options):
    from monai.losses import HausdorffDTLoss

    x, t = logits_and_labels(gen, shape)
    t[0] = 0
    monai = HausdorffDTLoss(softmax=True, reduction="none", **options)
    actual, expected, grad, expected_grad = _monai_pair(
        monai, lambda a, b: hausdorff_dt_loss(a, b, reduction="none", **options), x, t, one_hot(t, 3))
    torch.testing.assert_close(actual, expected.flatten(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-6)
    # Soft targets and sigmoid activations follow the same formula.
    soft = torch.rand(x.shape, generator=gen, dtype=torch.float64)
    monai = HausdorffDTLoss(sigmoid=True, **options)
    actual, expected, grad, expected_grad = _monai_pair(
        monai, lambda a, b: hausdorff_dt_loss(a, b, activation="sigmoid", **options), x, soft, soft)
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.peer
@pytest.mark.parametrize("shape", [(3, 9, 11), (2, 7, 6, 8)])
def test_cldice_loss_matches_monai(gen, shape):
    from monai.losses import SoftclDiceLoss

    x, t = logits_and_labels(gen, shape)
    monai = SoftclDiceLoss(softmax=True, reduction="none")
    actual, expected, grad, expected_grad = _monai_pair(
        monai, lambda a, b: cldice_loss(a, b, include_background=True, pool_classes=True, reduction="none"),
        x, t, one_hot(t, 3))
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-6)
    monai = SoftclDiceLoss(iter_=1, smooth_nr=0.5, smooth_dr=0.5, smooth=1e-3, include_background=False,
                           softmax=True)
    actual, expected, grad, expected_grad = _monai_pair(
        monai, lambda a, b: cldice_loss(a, b, iterations=1, smooth=0.5, eps=1e-3, pool_classes=True),
        x, t, one_hot(t, 3))
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-6)


# --- robustness and errors -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_low_precision_3d_empty_and_extreme_inputs_are_finite(gen, name, dtype):
    fn = LOSSES[name]
    x, t = logits_and_labels(gen, (3, 6, 7, 8))
    t[0] = 0  # every foreground class absent
    t[1] = 2  # one class fills the sample, another is absent
    x[2] = x[2].sign() * 1e4  # saturated probabilities
    x = x.to(dtype).requires_grad_()
    loss = fn(x, t)
    assert loss.dtype == dtype and torch.isfinite(loss)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all()
    none = fn(x, t, reduction="none")
    assert none.shape == (3, 2) and torch.isfinite(none).all()


def test_module_forms_and_registry():
    for name, cls in (("boundary", losskit.nn.BoundaryLoss), ("hausdorff_dt", losskit.nn.HausdorffDTLoss),
                      ("cldice", losskit.nn.ClDiceLoss)):
        assert type(losskit.get(name)) is cls


@pytest.mark.slow
def test_benchmark_script_runs():
    from benchmarks import bench_distance

    text = bench_distance.main(["--size", "10", "--rounds", "1"])
    assert "monai.BoundaryLoss" in text and "monai.HausdorffDTLoss" in text and "scipy" in text


def test_errors_name_the_argument(gen):
    x, t = logits_and_labels(gen, (2, 5, 6))
    with pytest.raises(ValueError, match="alpha"):
        hausdorff_dt_loss(x, t, alpha=-1.0)
    with pytest.raises(ValueError, match="iterations"):
        cldice_loss(x, t, iterations=-1)
    with pytest.raises(ValueError, match="smooth"):
        cldice_loss(x, t, smooth=-1.0)
    with pytest.raises(ValueError, match="input"):
        cldice_loss(x[..., 0], t[..., 0])  # 1-D spatial: no skeleton
    with pytest.raises(ValueError, match="activation"):
        boundary_loss(x, t, activation="relu")
    with pytest.raises(ValueError, match="target"):
        hausdorff_dt_loss(x, t[:, :-1])
    with pytest.raises(ValueError, match="spacing"):
        boundary_loss(x, t, spacing=(1.0, 2.0, 3.0))
    with pytest.raises(TypeError, match="include_background"):
        boundary_loss(x, t, include_background=1)
    with pytest.raises(ValueError, match="weight"):
        boundary_loss(x, t, weight=torch.ones(3))


# --- ignore_index, aggregate="batch", log=True --------------------------------------------------------

IGNORE = 255


def with_ignored(gen, t, fraction=0.3, all_ignored_sample=None):
    """``t`` with about ``fraction`` of the voxels set to ``IGNORE`` (and one sample entirely, if asked)."""
    t = t.clone()
    t[torch.rand(t.shape, generator=gen) < fraction] = IGNORE
    if all_ignored_sample is not None:
        t[all_ignored_sample] = IGNORE
    return t


def masked_mean_reference(values, valid, aggregate):
    """``values[n][c]`` and ``valid[n]`` numpy arrays: sum(v f) / sum(v) per (n, c), or per c over the batch."""
    sums = np.array([[(f * valid[n]).sum() for f in row] for n, row in enumerate(values)])
    counts = np.array([valid[n].sum() for n in range(len(values))], dtype=np.float64)
    if aggregate == "batch":
        return torch.from_numpy(sums.sum(0, keepdims=True) / max(counts.sum(), np.finfo(np.float64).tiny))
    return torch.from_numpy(sums / np.maximum(counts, np.finfo(np.float64).tiny)[:, None])


def class_masks(t, classes, first):
    """Per-class boolean labels of an index target, ignored voxels in no class: ``[n][c - first]``."""
    t = t.numpy()
    return [[(t[n] == c) & (t[n] != IGNORE) for c in range(first, classes)] for n in range(t.shape[0])]


def reference_boundary_ignore(x, t, include_background=False, aggregate="per_sample"):
    p = torch.softmax(x, 1).numpy()
    first = 0 if include_background else 1
    labels = class_masks(t, x.shape[1], first)
    values = [[p[n, c + first] * reference_signed(m) for c, m in enumerate(row)] for n, row in enumerate(labels)]
    return masked_mean_reference(values, (t != IGNORE).numpy(), aggregate)


def reference_hausdorff_ignore(x, t, alpha=2.0, include_background=False, aggregate="per_sample"):
    p = torch.softmax(x, 1).numpy()
    valid = (t != IGNORE).numpy()
    first = 0 if include_background else 1
    labels = class_masks(t, x.shape[1], first)
    values = []
    for n, row in enumerate(labels):
        values.append([])
        for c, m in enumerate(row):
            pc = p[n, c + first]
            pred = (pc > 0.5) & valid[n]  # an ignored voxel is outside the predicted mask too
            dist = reference_field(pred) ** alpha + reference_field(m) ** alpha
            values[-1].append((pc - m) ** 2 * dist)
    return masked_mean_reference(values, valid, aggregate)


def reference_cldice_ignore(x, t, iterations=2, smooth=1.0, eps=1e-4, pool_classes=False, aggregate="per_sample"):
    """Skeletons of the masked images from losskit's soft_skeleton, the four sums written out over valid voxels."""
    v = (t != IGNORE).double()[:, None]
    p = torch.softmax(x, 1)[:, 1:] * v
    labels = torch.stack([torch.from_numpy(np.stack(row)) for row in class_masks(t, x.shape[1], 1)]).double()
    sp, st = soft_skeleton(p, iterations).numpy(), soft_skeleton(labels, iterations).numpy()
    p, labels, v = p.numpy(), labels.numpy(), v.numpy()
    groups = [[(n, c)] for n in range(p.shape[0]) for c in range(p.shape[1])]
    if pool_classes:
        groups = [[(n, c) for c in range(p.shape[1])] for n in range(p.shape[0])]
    if aggregate == "batch":
        groups = [[u for g in groups if g[0][1] == c for u in g] for c in range(p.shape[1])]
        groups = [[u for g in groups for u in g]] if pool_classes else groups
    out = []
    for group in groups:
        s = np.zeros(4)
        count = 0.0
        for n, c in group:
            s += [(sp[n, c] * labels[n, c] * v[n, 0]).sum(), (sp[n, c] * v[n, 0]).sum(),
                  (st[n, c] * p[n, c] * v[n, 0]).sum(), (st[n, c] * v[n, 0]).sum()]
            count += v[n, 0].sum()
        if not count:  # every voxel of the unit ignored: 0 by definition
            out.append(0.0)
            continue
        tprec, tsens = (s[0] + smooth) / (s[1] + smooth), (s[2] + smooth) / (s[3] + smooth)
        out.append(1 - 2 * tprec * tsens / (tprec + tsens + eps))
    out = torch.tensor(out, dtype=torch.float64)
    if aggregate == "batch":
        return out.view(1, -1) if not pool_classes else out.view(1)
    return out if pool_classes else out.view(p.shape[0], p.shape[1])


@pytest.mark.parametrize("aggregate", ["per_sample", "batch"])
@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("shape", [(3, 9, 11), (2, 5, 6, 7)])
def test_boundary_loss_ignore_index_matches_the_reference(gen, shape, include_background, aggregate):
    x, t = logits_and_labels(gen, shape)
    t = with_ignored(gen, t, all_ignored_sample=1)
    actual = boundary_loss(x, t, include_background=include_background, aggregate=aggregate, ignore_index=IGNORE,
                           reduction="none")
    expected = reference_boundary_ignore(x, t, include_background, aggregate)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    if aggregate == "per_sample":
        assert (actual[1] == 0).all()  # the sample with every voxel ignored


@pytest.mark.parametrize("aggregate", ["per_sample", "batch"])
@pytest.mark.parametrize("options", [{}, {"alpha": 1.0, "include_background": True}])
@pytest.mark.parametrize("shape", [(3, 9, 11), (2, 5, 6, 7)])
def test_hausdorff_dt_loss_ignore_index_matches_the_reference(gen, shape, options, aggregate):
    x, t = logits_and_labels(gen, shape)
    t = with_ignored(gen, t, all_ignored_sample=1)
    actual = hausdorff_dt_loss(x, t, aggregate=aggregate, ignore_index=IGNORE, reduction="none", **options)
    torch.testing.assert_close(actual, reference_hausdorff_ignore(x, t, aggregate=aggregate, **options),
                               rtol=1e-12, atol=1e-12)
    logged = hausdorff_dt_loss(x, t, aggregate=aggregate, ignore_index=IGNORE, reduction="none", log=True, **options)
    torch.testing.assert_close(logged, torch.log1p(actual), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("aggregate", ["per_sample", "batch"])
@pytest.mark.parametrize("pool_classes", [False, True])
def test_cldice_loss_ignore_index_matches_the_reference(gen, pool_classes, aggregate):
    x, t = logits_and_labels(gen, (3, 7, 8))
    t = with_ignored(gen, t, all_ignored_sample=2)
    for smooth, eps in ((1.0, 1e-4), (0.0, 0.0)):
        actual = cldice_loss(x, t, iterations=2, smooth=smooth, eps=eps, pool_classes=pool_classes,
                             aggregate=aggregate, ignore_index=IGNORE, reduction="none")
        expected = reference_cldice_ignore(x, t, 2, smooth, eps, pool_classes, aggregate)
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    if aggregate == "per_sample":
        assert (actual[2] == 0).all()


@pytest.mark.parametrize("aggregate", ["per_sample", "batch"])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_ignored_logits_change_nothing_and_get_no_gradient(gen, name, aggregate):
    fn = LOSSES[name]
    x, t = logits_and_labels(gen, (2, 8, 9))
    t = with_ignored(gen, t, fraction=0.4)
    ignored = (t == IGNORE)[:, None].expand_as(x)
    other = torch.where(ignored, torch.randn(x.shape, generator=gen, dtype=torch.float64) * 50, x)
    assert (other != x).any()
    results = []
    for logits in (x, other):
        logits = logits.clone().requires_grad_()
        loss = fn(logits, t, ignore_index=IGNORE, aggregate=aggregate)
        (grad,) = torch.autograd.grad(loss, logits)
        results.append((loss, grad))
    (a, grad_a), (b, grad_b) = results
    assert a == b  # bitwise: an ignored voxel reaches neither the maps, the skeletons nor the sums
    assert (grad_a[ignored] == 0).all() and (grad_b[ignored] == 0).all()
    torch.testing.assert_close(grad_a, grad_b, rtol=0, atol=0)
    assert (grad_a[~ignored] != 0).any()
    # Without ignore_index the same logits do matter (so the check above could fail).
    assert fn(x, t.clamp_max(2)) != fn(other, t.clamp_max(2))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_ignored_voxels_may_hold_nan_or_inf(gen, name, value):
    # The softmax of a NaN voxel is NaN in every channel; the loss never read it, but its backward
    # multiplied the zero gradient by it, so every ignored voxel's logits got a NaN gradient.
    fn = LOSSES[name]
    x, t = logits_and_labels(gen, (2, 8, 9))
    t = with_ignored(gen, t, fraction=0.4)
    ignored = (t == IGNORE)[:, None].expand_as(x)
    results = []
    for logits in (x, torch.where(ignored, value, x)):
        logits = logits.clone().requires_grad_()
        loss = fn(logits, t, ignore_index=IGNORE)
        (grad,) = torch.autograd.grad(loss, logits)
        results.append((loss, grad))
    (a, grad_a), (b, grad_b) = results
    assert a == b
    assert (grad_b[ignored] == 0).all()
    torch.testing.assert_close(grad_b, grad_a, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_integer_logits_are_a_type_error(name):
    # They reached torch.softmax, which raised NotImplementedError for 'Long'.
    with pytest.raises(TypeError, match="input must be a floating-point tensor, got dtype torch.int64"):
        LOSSES[name](torch.zeros(1, 3, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long))


@pytest.mark.parametrize("shape", [(1, 3, 0, 4), (2, 3, 0, 0), (1, 3, 0, 5, 5)])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_empty_spatial_input_gives_zero_with_a_gradient(name, shape):
    # clDice's max pooling rejected an empty image, and the distance losses returned a zero that
    # was not connected to the input (backward raised).
    for aggregate in ("per_sample", "batch"):
        x = torch.zeros(shape, requires_grad=True)
        loss = LOSSES[name](x, torch.zeros((shape[0], *shape[2:]), dtype=torch.long), aggregate=aggregate)
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, x)
        assert grad.shape == x.shape


@pytest.mark.parametrize("aggregate", ["per_sample", "batch"])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_everything_ignored_gives_zero_with_a_zero_gradient(gen, name, aggregate):
    fn = LOSSES[name]
    x, _ = logits_and_labels(gen, (2, 6, 7))
    t = torch.full((2, 6, 7), IGNORE)
    options = {"smooth": 0.0, "eps": 0.0} if name == "cldice" else {}  # no smoothing to hide a 0/0
    for reduction in ("mean", "sum", "none"):
        logits = x.clone().requires_grad_()
        loss = fn(logits, t, ignore_index=IGNORE, aggregate=aggregate, reduction=reduction, **options)
        assert (loss == 0).all()
        (grad,) = torch.autograd.grad(loss.sum(), logits)
        assert torch.isfinite(grad).all() and (grad == 0).all()


def test_boundary_loss_precomputed_maps_with_ignore_index(gen):
    x, t = logits_and_labels(gen, (2, 5, 6, 7))
    t = with_ignored(gen, t)
    valid = (t != IGNORE)[:, None]
    # Maps of the masks with ignored voxels in no class, then garbage where the voxels are ignored.
    maps = signed_distance_map((one_hot(t.clamp_max(2), 3).bool() & valid).flatten(0, 1),
                               dtype=torch.float64).view(x.shape)
    garbage = torch.where(valid, maps, torch.tensor(float("nan"), dtype=torch.float64))
    garbage[:, :, 0] = torch.where(valid[:, :, 0], maps[:, :, 0], torch.tensor(float("inf"), dtype=torch.float64))
    expected = reference_boundary_ignore(x, t)
    for aggregate in ("per_sample", "batch"):
        computed_grad = None
        for given in (None, maps, maps[:, 1:], garbage):
            logits = x.clone().requires_grad_()
            loss = boundary_loss(logits, t, ignore_index=IGNORE, distance_map=given, aggregate=aggregate,
                                 reduction="none")
            if aggregate == "per_sample":
                torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
            (grad,) = torch.autograd.grad(loss.sum(), logits)
            assert torch.isfinite(grad).all()
            computed_grad = grad if computed_grad is None else computed_grad
            torch.testing.assert_close(grad, computed_grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(loss, reference_boundary_ignore(x, t, aggregate=aggregate), rtol=1e-12,
                                   atol=1e-12)


@pytest.mark.parametrize("name", ["boundary", "hausdorff_dt"])
def test_batch_aggregate_without_ignored_voxels_is_the_mean_of_the_samples(gen, name):
    # Equal sizes and nothing ignored: the mean over all voxels of the batch is the mean of the sample means.
    x, t = logits_and_labels(gen, (3, 7, 9))
    fn = LOSSES[name]
    pooled = fn(x, t, aggregate="batch", reduction="none")
    assert pooled.shape == (1, 2)
    torch.testing.assert_close(pooled, fn(x, t, reduction="none").mean(0, keepdim=True), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(pooled, fn(x, t, reduction="none")[:1])


def test_cldice_batch_aggregate_without_ignored_voxels_matches_the_reference(gen):
    x, t = logits_and_labels(gen, (3, 7, 8))
    for pool_classes in (False, True):
        actual = cldice_loss(x, t, iterations=2, pool_classes=pool_classes, aggregate="batch", reduction="none")
        expected = reference_cldice_ignore(x, t, 2, pool_classes=pool_classes, aggregate="batch")
        assert actual.shape == ((1,) if pool_classes else (1, 2))
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_new_options_on_an_empty_batch_give_zero_with_a_gradient(name):
    fn = LOSSES[name]
    x = torch.zeros(0, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    t = torch.zeros(0, 6, 7, dtype=torch.long)
    options = {"aggregate": "batch", "ignore_index": IGNORE, **({"log": True} if name == "hausdorff_dt" else {})}
    loss = fn(x, t, **options)
    assert loss.shape == () and loss == 0
    loss.backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert fn(x, t, reduction="none", **options).shape == (0, 2)  # as RegionStats.pooled: nothing to pool


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_new_options_gradcheck(gen, name):
    x, t = logits_and_labels(gen, (2, 4, 5))
    t = with_ignored(gen, t)
    extra = {"log": True} if name == "hausdorff_dt" else {"iterations": 2} if name == "cldice" else {}
    weight = torch.rand(2, generator=gen, dtype=torch.float64) + 0.5
    for aggregate in ("per_sample", "batch"):
        def f(logits, aggregate=aggregate):
            return LOSSES[name](logits, t, ignore_index=IGNORE, aggregate=aggregate, weight=weight, **extra)

        assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(),))


def test_module_form_takes_the_new_options(gen):
    x, t = logits_and_labels(gen, (2, 6, 7))
    t = with_ignored(gen, t)
    options = {"log": True, "aggregate": "batch", "ignore_index": IGNORE}
    module = losskit.get("hausdorff_dt", **options)
    torch.testing.assert_close(module(x, t), hausdorff_dt_loss(x, t, **options), rtol=0, atol=0)
    rebuilt = losskit.get(module.get_config())
    torch.testing.assert_close(rebuilt(x, t), module(x, t), rtol=0, atol=0)


def test_new_option_errors_name_the_argument(gen):
    x, t = logits_and_labels(gen, (2, 5, 6))
    for fn in LOSSES.values():
        with pytest.raises(ValueError, match="aggregate"):
            fn(x, t, aggregate="global")
        with pytest.raises(TypeError, match="ignore_index"):
            fn(x, t, ignore_index=True)
        with pytest.raises(TypeError, match="ignore_index"):
            fn(x, t, ignore_index=1.0)
        with pytest.raises(ValueError, match="ignore_index"):
            fn(x, one_hot(t, 3), ignore_index=0)
    with pytest.raises(TypeError, match="log"):
        hausdorff_dt_loss(x, t, log=1)


# --- MONAI 1.6.1 live: batch=True and LogHausdorffDTLoss ---------------------------------------------


@pytest.mark.peer
@pytest.mark.parametrize("shape", [(3, 9, 11), (2, 5, 6, 7)])
@pytest.mark.parametrize("options", [{}, {"alpha": 1.5, "include_background": True}])
def test_hausdorff_dt_loss_batch_matches_monai(gen, shape, options):
    from monai.losses import HausdorffDTLoss

    x, t = logits_and_labels(gen, shape)
    t[0] = 0
    for reduction in ("none", "mean"):
        monai = HausdorffDTLoss(softmax=True, batch=True, reduction=reduction, **options)
        actual, expected, grad, expected_grad = _monai_pair(
            monai, lambda a, b, r=reduction: hausdorff_dt_loss(a, b, aggregate="batch", reduction=r, **options),
            x, t, one_hot(t, 3))
        if reduction == "none":
            assert expected.shape == (1, actual.shape[1], *[1] * (len(shape) - 1))
            assert actual.shape == (1, 3 - (0 if options else 1))
            expected = expected.flatten(1)
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.peer
@pytest.mark.parametrize("shape", [(3, 9, 11), (2, 5, 6, 7)])
@pytest.mark.parametrize("options", [{}, {"alpha": 1.5, "include_background": True}])
def test_log_hausdorff_dt_loss_matches_monai(gen, shape, options):
    from monai.losses import LogHausdorffDTLoss

    x, t = logits_and_labels(gen, shape)
    t[0] = 0
    # reduction="none": log1p of each (sample, class) unit, which is log=True.
    monai = LogHausdorffDTLoss(softmax=True, reduction="none", **options)
    actual, expected, grad, expected_grad = _monai_pair(
        monai, lambda a, b: hausdorff_dt_loss(a, b, log=True, reduction="none", **options), x, t, one_hot(t, 3))
    torch.testing.assert_close(actual, expected.flatten(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-6)
    # reduction="mean" (MONAI's default): the log of the mean, i.e. log1p of the plain loss.
    monai = LogHausdorffDTLoss(softmax=True, **options)
    actual, expected, grad, expected_grad = _monai_pair(
        monai, lambda a, b: torch.log1p(hausdorff_dt_loss(a, b, **options)), x, t, one_hot(t, 3))
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-6)
    # ... which is not the mean of the logs (log=True with reduction="mean"): the two rows differ.
    assert not torch.allclose(hausdorff_dt_loss(x, t, log=True, **options), expected.detach(), rtol=1e-6, atol=1e-6)

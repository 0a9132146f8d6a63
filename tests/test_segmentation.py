"""Region segmentation losses: float64 references, MONAI and kornia live, encodings, masking, robustness."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import losskit
from losskit.functional import _region_stats as S
from tests import reference_segmentation as ref

LOSSES = ["dice_loss", "jaccard_loss", "tversky_loss", "focal_tversky_loss", "generalized_dice_loss", "mcc_loss",
          "dice_ce_loss"]


def fn(name):
    return getattr(losskit, name)


def data(n=3, c=4, spatial=(5, 6), seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn((n, c, *spatial), generator=gen, dtype=torch.float64) * 1.5).to(dtype)
    y = torch.randint(c, (n, *spatial), generator=gen)
    return x, y


def grad_of(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


def close(a, b, tol=1e-6):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# --- float64 references from the formulas ------------------------------------------------------


def _ref_unit(name, p, t, m, batch, **kw):
    stats = ref.sums(p, t, m)
    if batch:
        stats = ref.pooled(stats)
    if name == "dice_loss":
        return ref.dice(stats)
    if name == "jaccard_loss":
        return ref.jaccard(stats)
    if name == "tversky_loss":
        return ref.tversky(stats, 0.3, 0.7)
    if name == "focal_tversky_loss":
        return ref.focal_tversky(stats, 0.3, 0.7, 4 / 3)
    if name == "mcc_loss":
        return ref.mcc(stats)
    if name == "generalized_dice_loss":
        return ref.generalized_dice(stats, kw.get("weight_type", "square"))
    raise AssertionError(name)


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("ignore", [None, -1])
@pytest.mark.parametrize("name", ["dice_loss", "jaccard_loss", "tversky_loss", "focal_tversky_loss", "mcc_loss",
                                  "generalized_dice_loss"])
def test_matches_float64_reference_with_explicit_one_hot(name, ignore, batch):
    x, y = data()
    if ignore is not None:
        y[0, :2] = ignore
    t, m = ref.one_hot(y, 4, ignore)
    p = torch.softmax(x, 1)
    expected = _ref_unit(name, p, t, m, batch)
    kwargs = {"alpha": 0.3, "beta": 0.7} if "tversky" in name else {}
    got = fn(name)(x, y, ignore_index=ignore, aggregate="batch" if batch else "per_sample", reduction="none",
                   **kwargs)
    close(got, expected, 1e-10)


@pytest.mark.parametrize("ignore", [None, 255])
def test_dice_ce_matches_reference(ignore):
    x, y = data(n=2, spatial=(3, 4))
    if ignore is not None:
        y[1, 0] = ignore
    t, m = ref.one_hot(y, 4, ignore)
    expected = ref.dice(ref.sums(torch.softmax(x, 1), t, m)).mean(1) + 0.5 * ref.cross_entropy_per_sample(
        x, torch.where(y == 255, 0, y), m)
    got = losskit.dice_ce_loss(x, y, lambda_ce=0.5, ignore_index=ignore, reduction="none")
    close(got, expected, 1e-10)


def test_dice_ce_class_weight_matches_reference_values_and_gradients():
    # class_weight weights the Dice class mean and, per voxel, the CE mean (sum w_y CE / sum w_y).
    x, y = data(n=2, spatial=(3, 4))
    y[1, 0] = 255
    w = torch.tensor([0.2, 1.0, 3.0, 0.5], dtype=torch.float64)
    t, m = ref.one_hot(y, 4, 255)
    x.requires_grad_(True)
    d = ref.dice(ref.sums(torch.softmax(x, 1), t, m))
    expected = (d * w).sum(1) / w.sum() + 0.5 * ref.cross_entropy_per_sample(x, torch.where(y == 255, 0, y), m, w)
    got = losskit.dice_ce_loss(x, y, lambda_ce=0.5, class_weight=w, ignore_index=255, reduction="none")
    close(got, expected, 1e-10)
    upstream = torch.tensor([0.3, -1.7], dtype=torch.float64)  # a non-uniform upstream gradient
    close(torch.autograd.grad(got, x, upstream)[0], torch.autograd.grad(expected, x, upstream)[0], 1e-10)


def test_hand_worked_dice():
    # probabilities with activation=None: sample 0 class 1: p = [1, .5], t = [1, 0]:
    # TP = 1, P = 1.5, T = 1 -> 1 - 2/2.5 = 0.2 (no smoothing)
    p = torch.tensor([[[[0.0, 0.5]], [[1.0, 0.5]]]], dtype=torch.float64)
    y = torch.tensor([[[1, 0]]])
    out = losskit.dice_loss(p, y, activation=None, smooth_nr=0.0, smooth_dr=0.0, reduction="none")
    # class 0: p = [0, .5], t = [0, 1]: TP = .5, P = .5, T = 1 -> 1 - 1/1.5 = 1/3
    close(out, torch.tensor([[1 / 3, 0.2]], dtype=torch.float64), 1e-12)


# --- peers live -------------------------------------------------------------------------------


def _monai_cases():
    for ib in (True, False):
        for batch in (False, True):
            yield ib, batch


@pytest.mark.peer
@pytest.mark.parametrize("smooth", [1e-5, 1.0])
@pytest.mark.parametrize("ib,batch", list(_monai_cases()))
def test_monai_dice_tversky_gdl_dicece_values_and_gradients(ib, batch, smooth):
    monai = pytest.importorskip("monai.losses")
    x, y = data()
    y[0] = 0  # a sample where classes 1..3 are absent
    x.requires_grad_(True)
    agg = "batch" if batch else "per_sample"
    common = {"softmax": True, "to_onehot_y": True, "include_background": ib, "batch": batch}
    pairs = []
    for squared in (False, True):
        pairs.append((losskit.dice_loss(x, y, include_background=ib, aggregate=agg, squared=squared,
                                        smooth_nr=smooth, smooth_dr=smooth),
                      monai.DiceLoss(**common, squared_pred=squared, smooth_nr=smooth, smooth_dr=smooth)))
    # MONAI's Jaccard is 1 - (2I + s)/(2(P + T - I) + s): its smoothing counts half.
    pairs.append((losskit.jaccard_loss(x, y, include_background=ib, aggregate=agg, smooth_nr=smooth / 2,
                                       smooth_dr=smooth / 2),
                  monai.DiceLoss(**common, jaccard=True, smooth_nr=smooth, smooth_dr=smooth)))
    pairs.append((losskit.tversky_loss(x, y, alpha=0.3, beta=0.7, include_background=ib, aggregate=agg,
                                       smooth_nr=smooth, smooth_dr=smooth),
                  monai.TverskyLoss(**common, alpha=0.3, beta=0.7, smooth_nr=smooth, smooth_dr=smooth)))
    for w in ("square", "simple", "uniform"):
        pairs.append((losskit.generalized_dice_loss(x, y, weight_type=w, include_background=ib, aggregate=agg,
                                                    smooth_nr=smooth, smooth_dr=smooth),
                      monai.GeneralizedDiceLoss(**common, w_type=w, smooth_nr=smooth, smooth_dr=smooth)))
    pairs.append((losskit.dice_ce_loss(x, y, lambda_ce=0.7, include_background=ib, aggregate=agg,
                                       smooth_nr=smooth, smooth_dr=smooth),
                  monai.DiceCELoss(**common, lambda_ce=0.7, smooth_nr=smooth, smooth_dr=smooth)))
    for ours, module in pairs:
        theirs = module(x, y.unsqueeze(1))
        close(ours, theirs)
        close(grad_of(ours, x), grad_of(theirs, x))


@pytest.mark.peer
def test_monai_mcc_and_ignore_index():
    monai = pytest.importorskip("monai.losses")
    x, y = data()
    x.requires_grad_(True)
    ours = losskit.mcc_loss(x, y)
    theirs = monai.MCCLoss(softmax=True, to_onehot_y=True)(x, y.unsqueeze(1))
    close(ours, theirs)
    close(grad_of(ours, x), grad_of(theirs, x))
    y[0, 0] = 9
    ours = losskit.dice_loss(x, y, ignore_index=9)
    theirs = monai.DiceLoss(softmax=True, to_onehot_y=True, ignore_index=9)(x, y.unsqueeze(1))
    close(ours, theirs)


@pytest.mark.peer
def test_monai_class_weight_is_a_plain_mean_of_weighted_units():
    monai = pytest.importorskip("monai.losses")
    x, y = data()
    w = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    theirs = monai.DiceLoss(softmax=True, to_onehot_y=True, weight=w)(x, y.unsqueeze(1))
    ours = losskit.dice_loss(x, y, class_weight=w, reduction="none").mean()
    close(ours, theirs)


KORNIA_MACRO = {"smooth_nr": 0.0, "smooth_dr": 1e-8, "eps": 0.0, "absent": "sample_mean"}


@pytest.mark.peer
@pytest.mark.parametrize("ignore", [None, 7])
def test_kornia_dice_macro_and_tversky(ignore):
    kornia = pytest.importorskip("kornia.losses")
    x, y = data(c=5)
    y[1] = torch.where(y[1] == 2, 0, y[1])  # class 2 absent from sample 1
    if ignore is not None:
        y[0, 0] = ignore
    x.requires_grad_(True)
    ours = losskit.dice_loss(x, y, ignore_index=ignore, **KORNIA_MACRO)
    theirs = kornia.dice_loss(x, y, average="macro", ignore_index=-100 if ignore is None else ignore)
    close(ours, theirs)
    close(grad_of(ours, x), grad_of(theirs, x))
    ours = losskit.tversky_loss(x, y, alpha=0.2, beta=0.8, ignore_index=ignore, **KORNIA_MACRO)
    theirs = kornia.tversky_loss(x, y, 0.2, 0.8, ignore_index=-100 if ignore is None else ignore)
    close(ours, theirs)
    close(grad_of(ours, x), grad_of(theirs, x))


@pytest.mark.peer
def test_kornia_macro_scores_a_sample_without_present_classes_one_with_zero_gradient():
    kornia = pytest.importorskip("kornia.losses")
    x, y = data(n=3, c=4)
    y[0] = 7  # sample 0: every voxel ignored
    y[1] = torch.where(y[1] == 3, 1, 3)  # sample 1: classes 1 and 3, and class 3 has weight 0 below
    x.requires_grad_(True)
    w = torch.tensor([1.0, 0.0, 2.0, 0.5], dtype=torch.float64)
    w[3] = 0.0
    ours = losskit.dice_loss(x, y, ignore_index=7, class_weight=w, **KORNIA_MACRO)
    theirs = kornia.dice_loss(x, y, average="macro", weight=w, ignore_index=7)
    close(ours, theirs)
    g = grad_of(ours, x)
    close(g, grad_of(theirs, x))
    assert (g[:2] == 0).all() and g[2].abs().sum() > 0
    # Each sample counts once: (1 + 1 + loss of sample 2) / 3, and "none" sums to it per sample.
    units = losskit.dice_loss(x, y, ignore_index=7, class_weight=w, reduction="none", **KORNIA_MACRO)
    close(units.sum(1)[:2], torch.ones(2, dtype=torch.float64), 0.0)
    close(units.sum(1).mean(), ours, 1e-12)
    ours = losskit.tversky_loss(x, y, ignore_index=7, **KORNIA_MACRO)
    close(ours, kornia.tversky_loss(x, y, 0.5, 0.5, ignore_index=7))


@pytest.mark.peer
@pytest.mark.parametrize("weighted", [False, True])
def test_kornia_micro_dice_is_uniform_generalized_dice(weighted):
    kornia = pytest.importorskip("kornia.losses")
    x, y = data(c=5)
    y[0, 0] = 7
    x.requires_grad_(True)
    w = torch.tensor([0.5, 1.0, 2.0, 0.0, 3.0], dtype=torch.float64) if weighted else None
    ours = losskit.generalized_dice_loss(x, y, weight_type="uniform", class_weight=w, smooth_nr=0.0,
                                         smooth_dr=1e-8, eps=0.0, ignore_index=7)
    theirs = kornia.dice_loss(x, y, average="micro", weight=w, ignore_index=7)
    close(ours, theirs)
    close(grad_of(ours, x), grad_of(theirs, x))


@pytest.mark.peer
def test_monai_has_no_denominator_floor_eps_0_reproduces_it():
    monai = pytest.importorskip("monai.losses")
    x, _ = data()
    y = torch.zeros(3, 5, 6, dtype=torch.long)  # only the background: every other class absent
    x = x.clone()
    x[:, 0] += 25.0  # and predicted absent: P of each foreground class is about 1e-9
    x.requires_grad_(True)
    common = {"softmax": True, "to_onehot_y": True, "include_background": False, "smooth_nr": 1e-8,
              "smooth_dr": 1e-8}
    ours_options = {"include_background": False, "smooth_nr": 1e-8, "smooth_dr": 1e-8}
    theirs = monai.GeneralizedDiceLoss(**common)(x, y.unsqueeze(1))
    assert theirs.item() == 0.0  # every class weight is 0: (0 + s) / (0 + s)
    close(losskit.generalized_dice_loss(x, y, eps=0.0, **ours_options), theirs, 0.0)
    assert losskit.generalized_dice_loss(x, y, **ours_options).item() == pytest.approx(0.9)  # 1 - 1e-8 / 1e-7
    ours = losskit.dice_loss(x, y, eps=0.0, **ours_options)
    theirs = monai.DiceLoss(**common)(x, y.unsqueeze(1))
    close(ours, theirs, 1e-10)
    close(grad_of(ours, x), grad_of(theirs, x), 1e-10)
    assert abs(losskit.dice_loss(x, y, **ours_options).item() - theirs.item()) > 0.01  # the floor bites here


def test_smp_convention_batch_pooled_absent_zero():
    # SMP multiclass DiceLoss: batch-pooled sums, smooth 0, eps 1e-7 clamp, classes with T = 0 give 0
    # and still count in the mean. Written out from SMP's formula (SMP itself needs a CUDA torch).
    x, y = data()
    y = torch.where(y == 3, 0, y)  # class 3 absent from the whole batch
    p = torch.softmax(x, 1)
    t, m = ref.one_hot(y, 4)
    tp, fp, fn, _ = ref.pooled(ref.sums(p, t, m))
    score = 2 * tp / (2 * tp + fp + fn).clamp_min(1e-7)
    expected = ((1 - score) * ((tp + fn) > 0)).mean()
    ours = losskit.dice_loss(x, y, aggregate="batch", smooth_nr=0.0, smooth_dr=0.0, eps=1e-7, absent="zero")
    close(ours, expected, 1e-10)


# --- encodings, masking, activation order ----------------------------------------------------


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_index_target_equals_one_hot_target(name, activation):
    x, y = data()
    x.requires_grad_(True)
    onehot = torch.nn.functional.one_hot(y, 4).movedim(-1, 1).double()
    a = fn(name)(x, y, activation=activation, reduction="none")
    b = fn(name)(x, onehot, activation=activation, reduction="none")
    close(a, b, 1e-10)
    close(grad_of(a.sum(), x), grad_of(b.sum(), x), 1e-10)
    close(fn(name)(x, y.unsqueeze(1)), fn(name)(x, y), 1e-12)  # the (N, 1, ...) MONAI layout


@pytest.mark.parametrize("name", LOSSES)
def test_ignore_index_equals_cropping_the_voxels_out(name):
    x, y = data(spatial=(4, 6))
    y[:, :, 4:] = 99  # ignore the last two columns everywhere
    x.requires_grad_(True)
    # Change the ignored logits: they must not matter.
    masked = fn(name)(x, y, ignore_index=99, reduction="none")
    cropped = fn(name)(x[..., :4], y[..., :4], reduction="none")
    close(masked, cropped, 1e-10)
    g = grad_of(masked.sum(), x)
    assert (g[..., 4:] == 0).all()


@pytest.mark.parametrize("name", LOSSES)
def test_all_ignored_gives_zero_with_a_gradient(name):
    x, _ = data()
    x.requires_grad_(True)
    y = torch.full((3, 5, 6), -1)
    out = fn(name)(x, y, ignore_index=-1)
    assert out.item() == 0.0
    g = grad_of(out, x)
    assert torch.isfinite(g).all() and (g == 0).all()


def test_activation_is_applied_before_dropping_the_background():
    x, y = data(c=2)
    # Two-channel softmax without the background: the foreground probability is softmax, not 1.
    out = losskit.dice_loss(x, y, include_background=False, reduction="none")
    p = torch.softmax(x, 1)
    t, m = ref.one_hot(y, 2)
    close(out, ref.dice(ref.sums(p, t, m))[:, 1:], 1e-10)


def test_fused_kernel_equals_plain_autograd():
    x, y = data(n=2, c=5, spatial=(40, 50))  # 2000 voxels: 8 chunks of 256
    y[0, :3] = -1
    old = S._CPU_CHUNK, S._CPU_DENSE_CHUNK
    try:
        S._CPU_CHUNK = S._CPU_DENSE_CHUNK = 2560  # 10 classes x 256 voxels
        x.requires_grad_(True)
        w = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0], dtype=torch.float64)
        fused = losskit.dice_ce_loss(x, y, ignore_index=-1, class_weight=w)
        t, m = ref.one_hot(y, 5, -1)
        d = ref.dice(ref.sums(torch.softmax(x, 1), t, m))
        plain = ((d * w).sum(1) / w.sum() + ref.cross_entropy_per_sample(x, y.clamp_min(0), m, w)).mean()
        close(fused, plain, 1e-10)
        close(grad_of(fused, x), grad_of(plain, x), 1e-10)
        fused = losskit.dice_loss(x, y, ignore_index=-1)
        plain = losskit.dice_loss(torch.softmax(x, 1), y, activation=None, ignore_index=-1)
        close(grad_of(fused, x), grad_of(plain, x), 1e-10)
    finally:
        S._CPU_CHUNK, S._CPU_DENSE_CHUNK = old


def test_fused_kernel_second_backward_and_no_grad_and_double_backward():
    # The softmax buffer becomes the first gradient in place; a retained graph must recompute it.
    x, y = data(n=2, c=4, spatial=(6, 7))
    y[1, 0] = -1
    x.requires_grad_(True)
    before = x.detach().clone()
    out = losskit.dice_ce_loss(x, y, ignore_index=-1)
    (first,) = torch.autograd.grad(out, x, retain_graph=True)
    (second,) = torch.autograd.grad(out, x)
    close(first, second, 1e-12)
    t, m = ref.one_hot(y, 4, -1)
    plain = (ref.dice(ref.sums(torch.softmax(x, 1), t, m)).mean(1)
             + ref.cross_entropy_per_sample(x, y.clamp_min(0), m)).mean()
    close(first, grad_of(plain, x), 1e-10)
    assert torch.equal(x.detach(), before) and x.grad is None
    with torch.no_grad():  # no buffer is kept, the value is the same
        close(losskit.dice_ce_loss(x, y, ignore_index=-1), out.detach(), 1e-12)
    # Second derivatives differentiate the plain expression.
    assert torch.autograd.gradgradcheck(lambda z: losskit.dice_loss(z, y, ignore_index=-1), (x,))


def _squared_dice_reference(p, t, m, snr=1e-5, sdr=1e-5):
    # V-Net Dice from the formula: 1 - (2 sum p t + snr) / (sum p^2 + sum t^2 + sdr), valid voxels only.
    n, c = p.shape[:2]
    out = torch.zeros(n, c, dtype=torch.float64)
    for i in range(n):
        for k in range(c):
            pk, tk = p[i, k] * m[i], t[i, k] * m[i]
            out[i, k] = 1 - (2 * (pk * tk).sum() + snr) / ((pk * pk).sum() + (tk * tk).sum() + sdr)
    return out


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("target_kind", ["index", "ignore", "one_hot", "soft"])
def test_fused_kernels_match_the_formula(target_kind, squared, activation):
    # Several chunks (4 classes x 256 voxels each), a non-uniform upstream gradient, float64.
    x, y = data(n=2, c=4, spatial=(30, 40))
    ignore = None
    if target_kind == "ignore":
        y[0, :5] = ignore = 255
    t, m = ref.one_hot(y, 4, ignore)
    target = y
    if target_kind in ("one_hot", "soft"):
        target = t if target_kind == "one_hot" else torch.rand(t.shape, generator=torch.Generator().manual_seed(1),
                                                                 dtype=torch.float64)
        t = target
    old = S._CPU_CHUNK, S._CPU_DENSE_CHUNK
    try:
        S._CPU_CHUNK = S._CPU_DENSE_CHUNK = 1024
        x.requires_grad_(True)
        got = losskit.dice_loss(x, target, activation=activation, squared=squared, ignore_index=ignore,
                                reduction="none")
        p = torch.sigmoid(x) if activation == "sigmoid" else torch.softmax(x, 1)
        expected = _squared_dice_reference(p, t, m) if squared else ref.dice(ref.sums(p, t, m))
        close(got, expected, 1e-10)
        upstream = torch.rand(got.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        g_got, g_exp = (torch.autograd.grad(v, x, upstream, retain_graph=True)[0] for v in (got, expected))
        close(g_got, g_exp, 1e-10)
        close(torch.autograd.grad(got, x, upstream)[0], g_got, 0.0)  # a second backward recomputes p
        if ignore is not None:
            assert (g_got[0, :, :5] == 0).all()
    finally:
        S._CPU_CHUNK, S._CPU_DENSE_CHUNK = old


@pytest.mark.parametrize("target_kind", ["one_hot", "soft"])
def test_fused_softmax_dice_ce_with_dense_targets_matches_the_formula(target_kind):
    # CE with probability targets: the mean over voxels of -sum_c t_c log p_c (torch's convention).
    x, y = data(n=2, c=4, spatial=(30, 40))
    t, m = ref.one_hot(y, 4)
    if target_kind == "soft":
        t = torch.rand(t.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    old = S._CPU_CHUNK, S._CPU_DENSE_CHUNK
    try:
        S._CPU_CHUNK = S._CPU_DENSE_CHUNK = 1024
        x.requires_grad_(True)
        got = losskit.dice_ce_loss(x, t, lambda_ce=0.7, reduction="none")
        ce = -(t * torch.log_softmax(x, 1)).sum(1).flatten(1).mean(1)
        expected = ref.dice(ref.sums(torch.softmax(x, 1), t, m)).mean(1) + 0.7 * ce
        close(got, expected, 1e-10)
        upstream = torch.tensor([0.4, -1.3], dtype=torch.float64)
        g_got = torch.autograd.grad(got, x, upstream, retain_graph=True)[0]
        close(g_got, torch.autograd.grad(expected, x, upstream)[0], 1e-10)
        close(torch.autograd.grad(got, x, upstream)[0], g_got, 0.0)
    finally:
        S._CPU_CHUNK, S._CPU_DENSE_CHUNK = old
    small = x.detach()[:, :, :3, :4].clone().requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda z: losskit.dice_ce_loss(z, t[:, :, :3, :4], squared=True), (small,))


def test_fused_sigmoid_kernel_double_backward_no_grad_and_target_gradient():
    x, y = data(n=2, c=3, spatial=(4, 5))
    x.requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda z: losskit.dice_loss(z, y, activation="sigmoid", squared=True), (x,))
    out = losskit.dice_loss(x, y, activation="sigmoid")
    with torch.no_grad():
        close(losskit.dice_loss(x, y, activation="sigmoid"), out.detach(), 1e-12)
    # A soft target that carries a gradient (distillation) takes the plain path and gets its gradient.
    t = torch.rand(x.shape, dtype=torch.float64, requires_grad=True)
    out = losskit.dice_loss(x, t, activation="sigmoid")
    g_x, g_t = torch.autograd.grad(out, (x, t))
    p = torch.sigmoid(x)
    expected = ref.dice(ref.sums(p, t, torch.ones(2, 4, 5, dtype=torch.float64))).mean()
    e_x, e_t = torch.autograd.grad(expected, (x, t))
    close(g_x, e_x, 1e-10)
    close(g_t, e_t, 1e-10)


@pytest.mark.parametrize("case", ["softmax", "dice_ce_weighted", "softmax_squared", "dice_ce_one_hot",
                                  "sigmoid_index", "sigmoid_mask"])
def test_fused_kernels_need_the_gradient_plus_chunk_sized_temporaries(case):
    # Every tensor created during forward+backward is counted (benchmarks.harness.cpu_peak_bytes).
    # Plain autograd keeps the probabilities, a one-hot target and products: about 3 gradients.
    from benchmarks.harness import cpu_peak_bytes

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 32, 32, 32, generator=gen).requires_grad_(True)  # 1 MiB, its gradient too
    y = torch.randint(4, (2, 32, 32, 32), generator=gen)
    y[0, 0] = 255
    mask = (torch.rand(x.shape, generator=gen) < 0.2).float()
    one_hot = torch.nn.functional.one_hot(y.clamp_max(3), 4).movedim(-1, 1).float()
    calls = {
        "softmax": lambda: losskit.dice_loss(x, y, ignore_index=255),
        "dice_ce_weighted": lambda: losskit.dice_ce_loss(x, y, ignore_index=255, class_weight=torch.rand(4)),
        "softmax_squared": lambda: losskit.dice_loss(x, y, ignore_index=255, squared=True),
        "dice_ce_one_hot": lambda: losskit.dice_ce_loss(x, one_hot),
        "sigmoid_index": lambda: losskit.dice_loss(x, y, activation="sigmoid", ignore_index=255, squared=True),
        "sigmoid_mask": lambda: losskit.dice_loss(x, mask, activation="sigmoid"),
    }
    old = S._CPU_CHUNK, S._CPU_DENSE_CHUNK
    try:
        S._CPU_CHUNK = S._CPU_DENSE_CHUNK = 1 << 15  # 128 KiB blocks: 8 chunks
        with losskit.set_checks(False):
            peak = cpu_peak_bytes(lambda: calls[case]().backward())
    finally:
        S._CPU_CHUNK, S._CPU_DENSE_CHUNK = old
    gradient = x.numel() * 4
    # Measured: 256 to 352 KiB beyond the gradient, about 2 to 3 chunks. An int64 copy of the label
    # map alone would be 512 KiB, the probabilities 1 MiB.
    assert gradient <= peak <= gradient + 4 * (1 << 15) * 4, (peak - gradient) / 2**10


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_narrow_integer_labels_equal_int64_labels(dtype, activation):
    # The kernels read labels in their own dtype (PIL masks are uint8) and widen them chunk by chunk.
    x, y = data(n=2, c=4, spatial=(6, 7))
    y[0, :2] = 255
    x.requires_grad_(True)
    wide = losskit.dice_ce_loss(x, y, activation=activation, ignore_index=255, reduction="none")
    narrow = losskit.dice_ce_loss(x, y.to(dtype), activation=activation, ignore_index=255, reduction="none")
    close(narrow, wide, 0.0)
    close(grad_of(narrow.sum(), x), grad_of(wide.sum(), x), 0.0)
    with pytest.raises(ValueError, match="class indices"):
        losskit.dice_loss(x, torch.full_like(y, 7, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["dice_ce", "dice_squared_one_hot", "sigmoid"])
def test_half_logits_are_computed_in_float32_and_rounded_once(dtype, case):
    # The kernels read half logits chunk by chunk in float32 and write a half gradient: value and
    # gradient equal the float32 computation on the same (rounded) logits, cast once.
    x, y = data(n=2, c=4, spatial=(30, 40), dtype=dtype)
    y[0, :3] = 255
    one_hot = torch.nn.functional.one_hot(y.clamp_max(3), 4).movedim(-1, 1).float()
    w = torch.rand(4, generator=torch.Generator().manual_seed(1))
    calls = {"dice_ce": lambda z: losskit.dice_ce_loss(z, y, ignore_index=255, class_weight=w),
             "dice_squared_one_hot": lambda z: losskit.dice_loss(z, one_hot, squared=True),
             "sigmoid": lambda z: losskit.dice_loss(z, y, activation="sigmoid", ignore_index=255)}
    old = S._CPU_CHUNK, S._CPU_DENSE_CHUNK
    try:
        S._CPU_CHUNK = S._CPU_DENSE_CHUNK = 1024
        half = x.clone().requires_grad_(True)
        full = x.float().requires_grad_(True)
        out_half, out_full = calls[case](half), calls[case](full)
        assert out_half.dtype == dtype
        assert torch.equal(out_half, out_full.to(dtype))
        (g_half,) = torch.autograd.grad(out_half, half)
        (g_full,) = torch.autograd.grad(out_full, full)
        assert g_half.dtype == dtype and torch.equal(g_half, g_full.to(dtype))
    finally:
        S._CPU_CHUNK, S._CPU_DENSE_CHUNK = old


def test_half_logits_need_no_float32_copy():
    from benchmarks.harness import cpu_peak_bytes

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 32, 32, 32, generator=gen).to(torch.bfloat16).requires_grad_(True)  # 0.5 MiB
    y = torch.randint(4, (2, 32, 32, 32), generator=gen)
    old = S._CPU_CHUNK, S._CPU_DENSE_CHUNK
    try:
        S._CPU_CHUNK = S._CPU_DENSE_CHUNK = 1 << 15  # float32 chunks of 128 KiB
        with losskit.set_checks(False):
            peak = cpu_peak_bytes(lambda: losskit.dice_ce_loss(x, y).backward())
    finally:
        S._CPU_CHUNK, S._CPU_DENSE_CHUNK = old
    gradient = x.numel() * 2
    # A float32 copy of the logits alone would be 1 MiB, a float32 softmax another.
    assert gradient <= peak <= gradient + 6 * (1 << 15) * 4, (peak - gradient) / 2**10


# --- absent classes and policies --------------------------------------------------------------


def test_absent_policies():
    x, y = data()
    y[0] = 0  # classes 1..3 absent from sample 0
    keep = losskit.dice_loss(x, y, reduction="none")
    zero = losskit.dice_loss(x, y, absent="zero", reduction="none")
    assert (zero[0, 1:] == 0).all() and (keep[0, 1:] > 0.9).all()  # false positives on empty classes cost ~1
    close(losskit.dice_loss(x, y, absent="zero"), zero.mean())
    present = torch.ones_like(keep, dtype=torch.bool)
    present[0, 1:] = False
    close(losskit.dice_loss(x, y, absent="exclude"), keep[present].mean())


def test_empty_target_predicted_empty_is_perfect():
    # Sigmoid with very negative logits on an all-background binary mask: loss ~ 0, not 1.
    x = torch.full((1, 1, 4, 4), -30.0, dtype=torch.float64, requires_grad=True)
    out = losskit.dice_loss(x, torch.zeros(1, 1, 4, 4, dtype=torch.float64), activation="sigmoid")
    assert out.item() < 1e-3
    assert torch.isfinite(grad_of(out, x)).all()


def test_generalized_dice_absent_zero_ignores_the_class():
    x, y = data()
    y[0] = torch.where(y[0] == 2, 1, y[0])
    out = losskit.generalized_dice_loss(x, y, absent="zero", reduction="none")
    p = torch.softmax(x, 1)
    t, m = ref.one_hot(y, 4)
    tp, fp, fn_, _ = ref.sums(p, t, m)
    w = 1 / (tp + fn_) ** 2
    w[0, 2] = 0
    expected = 1 - (2 * (w * tp).sum(1) + 1e-5) / ((w * (2 * tp + fp + fn_)).sum(1) + 1e-5)
    close(out, expected, 1e-10)


def test_focal_tversky_exponent_follows_the_paper():
    x, y = data()
    tv = losskit.tversky_loss(x, y, alpha=0.3, beta=0.7, reduction="none")
    ft = losskit.focal_tversky_loss(x, y, gamma=2.0, reduction="none")
    close(ft, tv.sqrt(), 1e-10)  # (1 - TI)^(1/gamma)
    close(losskit.focal_tversky_loss(x, y, gamma=1.0), losskit.tversky_loss(x, y, alpha=0.3, beta=0.7))


def test_batch_aggregate_shapes_and_weights():
    x, y = data()
    assert losskit.dice_loss(x, y, aggregate="batch", reduction="none").shape == (1, 4)
    assert losskit.generalized_dice_loss(x, y, aggregate="batch", reduction="none").shape == (1,)
    assert losskit.dice_ce_loss(x, y, aggregate="batch", reduction="none").shape == (1,)
    assert losskit.dice_loss(x[:0], y[:0], aggregate="batch", reduction="none").shape == (0, 4)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    none = losskit.dice_loss(x, y, reduction="none")
    close(losskit.dice_loss(x, y, class_weight=w), (none * w).sum() / (w.sum() * 3))


# --- robustness -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_low_precision_and_3d(name, dtype, activation):
    x, y = data(n=2, c=3, spatial=(4, 5, 6), dtype=dtype)
    x[0, 0, 0, 0, 0] = 1e4 if dtype == torch.bfloat16 else 6e4
    x.requires_grad_(True)
    y[1] = 0
    out = fn(name)(x, y, activation=activation)
    assert out.dtype == dtype and torch.isfinite(out)
    g = grad_of(out, x)
    assert g.dtype == dtype and torch.isfinite(g).all()


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_extreme_logits_and_empty_masks_are_finite(name, activation):
    x, y = data(c=3)
    x = (x.sign() * 1e4).requires_grad_(True)
    y[0] = 0
    for aggregate in ("per_sample", "batch"):
        out = fn(name)(x, y, aggregate=aggregate, activation=activation)
        assert torch.isfinite(out)
        assert torch.isfinite(grad_of(out, x)).all()


# --- errors name the argument ------------------------------------------------------------------


@pytest.mark.parametrize("name", LOSSES)
def test_errors_name_the_argument(name):
    x, y = data()
    with pytest.raises(ValueError, match="aggregate"):
        fn(name)(x, y, aggregate="image")
    with pytest.raises(ValueError, match="activation"):
        fn(name)(x, y, activation="relu")
    with pytest.raises(ValueError, match="softmax"):
        fn(name)(x[:, :1], torch.zeros_like(y))
    with pytest.raises(ValueError, match="target"):
        fn(name)(x, y[:, :2])
    with pytest.raises(ValueError, match="target"):
        fn(name)(x, torch.full_like(y, 7))
    with pytest.raises(TypeError, match="input"):
        fn(name)(y, y)
    with pytest.raises(ValueError, match="weight"):
        fn(name)(x, y, weight=torch.ones(7, dtype=torch.float64))
    with pytest.raises(ValueError, match="smooth_nr"):
        fn(name)(x, y, smooth_nr=-1.0)
    if name != "generalized_dice_loss":
        with pytest.raises(ValueError, match="class_weight"):
            fn(name)(x, y, class_weight=torch.ones(3, dtype=torch.float64))
        with pytest.raises(ValueError, match="absent"):
            fn(name)(x, y, absent="drop")


def test_dice_ce_refuses_probabilities():
    x, y = data()
    with pytest.raises(ValueError, match="activation"):
        losskit.dice_ce_loss(torch.softmax(x, 1), y, activation=None)


# --- properties -----------------------------------------------------------------------------


@given(seed=st.integers(0, 2**16), smooth=st.sampled_from([0.0, 1e-5, 1.0]),
       batch=st.booleans(), ib=st.booleans())
def test_tversky_half_half_is_dice(seed, smooth, batch, ib):
    x, y = data(n=2, c=3, spatial=(3, 4), seed=seed)
    agg = "batch" if batch else "per_sample"
    kw = {"aggregate": agg, "include_background": ib, "reduction": "none"}
    # (TP + s) / (TP + (FP + FN)/2 + s) = (2TP + 2s) / (P + T + 2s): Dice with twice the smoothing.
    close(losskit.tversky_loss(x, y, alpha=0.5, beta=0.5, smooth_nr=smooth, smooth_dr=smooth, **kw),
          losskit.dice_loss(x, y, smooth_nr=2 * smooth, smooth_dr=2 * smooth, **kw), 1e-12)


@given(seed=st.integers(0, 2**16))
def test_soft_target_equal_to_prediction_is_perfect_with_soft_label(seed):
    gen = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn((2, 3, 4, 4), generator=gen, dtype=torch.float64), 1)
    out = losskit.dice_loss(p, p, activation=None, soft_label=True, smooth_nr=0.0, smooth_dr=0.0,
                            reduction="none")
    close(out, torch.zeros_like(out), 1e-12)
    plain = losskit.dice_loss(p, p, activation=None, smooth_nr=0.0, smooth_dr=0.0, reduction="none")
    assert (plain > 1e-3).any()  # sum p^2 < sum p: the plain product form is not 0 there


@given(seed=st.integers(0, 2**16))
def test_losses_are_nonnegative_and_bounded(seed):
    x, y = data(n=2, c=3, spatial=(3, 4), seed=seed)
    for name in ("dice_loss", "jaccard_loss", "tversky_loss", "focal_tversky_loss", "generalized_dice_loss"):
        out = fn(name)(x, y, reduction="none")
        assert (out >= -1e-12).all() and (out <= 1 + 1e-12).all()


@pytest.mark.slow
def test_benchmark_script_runs_on_a_tiny_volume():
    pytest.importorskip("monai")
    from benchmarks import bench_segmentation
    from benchmarks.harness import rss_available

    text = bench_segmentation.main(["--size", "6", "--binary-size", "8", "--rounds", "1", "--classes", "3",
                                    "--threads", "1", "--rss-losses", "dice"])
    assert "monai.DiceLoss" in text and "monai.DiceCELoss" in text and "sigmoid=True" in text
    if rss_available():  # one fresh process per library and warm-up: the resident-set table
        assert "RSS, 1st step (MB)" in text and text.count("monai / losskit") == 1
    text = bench_segmentation.main(["--size", "6", "--binary-size", "0", "--rounds", "1", "--one-hot", "--no-rss"])
    assert "one-hot targets" in text and "sigmoid" not in text and "RSS" not in text


@pytest.mark.slow
@pytest.mark.parametrize("case", ["mcc_sigmoid", "dice_ce_squared"])
def test_compiled_plain_path_matches_the_eager_kernels(case):
    # torch.compile traces the plain expression (float64 class sums, the accurate softmax and
    # sigmoid); with a reduction in the graph, an earlier float64 scatter_add compiled to zeros.
    x, y = data(n=2, c=3, spatial=(8, 8), dtype=torch.float32)
    y[0, 0] = 255
    calls = {"mcc_sigmoid": lambda z: losskit.mcc_loss(z, y, activation="sigmoid", ignore_index=255),
             "dice_ce_squared": lambda z: losskit.dice_ce_loss(z, y, squared=True, ignore_index=255)}
    eager_x, compiled_x = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    eager = calls[case](eager_x)
    compiled = torch.compile(calls[case], fullgraph=True, dynamic=False)(compiled_x)
    close(compiled, eager, 1e-5)
    close(grad_of(compiled, compiled_x), grad_of(eager, eager_x), 1e-5)

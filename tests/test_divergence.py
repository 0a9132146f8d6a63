"""kl_div and js_div: PyTorch parity, independent float64 references, properties, numerics, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given
from hypothesis import strategies as st

import losskit
from losskit import nn as lnn

F64 = torch.float64


def _logits(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=F64) * scale


def _probs(gen: torch.Generator, *shape: int, dim: int = 1) -> torch.Tensor:
    return torch.softmax(_logits(gen, *shape), dim=dim)


# --- independent float64 references (plain Python loops over numpy arrays) --------------------


def _softmax_rows(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for n, row in enumerate(x):
        finite = row[np.isfinite(row)]
        m = finite.max()
        e = np.array([math.exp(v - m) if np.isfinite(v) else 0.0 for v in row])
        out[n] = e / e.sum()
    return out


def _xlog_ratio(a: float, b: float) -> float:
    """a * log(a / b) with 0 log 0 = 0."""
    return 0.0 if a == 0 else a * math.log(a / b)


def _ref_kl(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-row KL(P || softmax(x)) for 2-D arrays."""
    q = _softmax_rows(x)
    rows, classes = x.shape
    return np.array([sum(_xlog_ratio(p[n, c], q[n, c]) for c in range(classes)) for n in range(rows)])


def _ref_js(x: np.ndarray, p: np.ndarray, beta: float) -> np.ndarray:
    """Per-row generalized JS: beta KL(P || M) + (1 - beta) KL(Q || M), M = beta P + (1 - beta) Q."""
    q = _softmax_rows(x)
    out = []
    for n in range(x.shape[0]):
        total = 0.0
        for c in range(x.shape[1]):
            m = beta * p[n, c] + (1 - beta) * q[n, c]
            total += beta * _xlog_ratio(p[n, c], m) + (1 - beta) * _xlog_ratio(q[n, c], m)
        out.append(total)
    return np.array(out)


def _rows(t: torch.Tensor) -> np.ndarray:
    """(N, C, *d) -> (N * prod(d), C) as numpy, one row per sample position."""
    return t.movedim(1, -1).reshape(-1, t.shape[1]).numpy()


# --- kl_div against PyTorch -----------------------------------------------------------------------


def test_kl_mean_is_torch_batchmean_for_2d(gen):
    x, p = _logits(gen, 7, 5), _probs(gen, 7, 5)
    ours = losskit.kl_div(x, p)
    theirs = TF.kl_div(TF.log_softmax(x, dim=1), p, reduction="batchmean")
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


def test_kl_gradient_matches_torch(gen):
    x, p = _logits(gen, 6, 4), _probs(gen, 6, 4)
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    losskit.kl_div(a, p).backward()
    TF.kl_div(TF.log_softmax(b, dim=1), p, reduction="batchmean").backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-13)


def test_kl_none_is_torch_none_summed_over_classes(gen):
    x, p = _logits(gen, 6, 4), _probs(gen, 6, 4)
    ours = losskit.kl_div(x, p, reduction="none")
    assert ours.shape == (6,)
    torch.testing.assert_close(ours, TF.kl_div(TF.log_softmax(x, 1), p, reduction="none").sum(1))


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning")
def test_kl_reproduces_torch_mean_and_sum(gen):
    x, p = _logits(gen, 6, 4), _probs(gen, 6, 4)
    torch_mean = TF.kl_div(TF.log_softmax(x, 1), p, reduction="mean")  # sum / (N * C)
    torch.testing.assert_close(losskit.kl_div(x, p, normalizer=6 * 4), torch_mean)
    torch.testing.assert_close(losskit.kl_div(x, p, reduction="sum") / x.numel(), torch_mean)
    torch.testing.assert_close(losskit.kl_div(x, p, reduction="sum"),
                               TF.kl_div(TF.log_softmax(x, 1), p, reduction="sum"))
    # and "mean" really is C times PyTorch's "mean"
    torch.testing.assert_close(losskit.kl_div(x, p), 4 * torch_mean)


def test_kl_log_target_matches_torch_and_probability_path(gen):
    x, p = _logits(gen, 5, 6), _probs(gen, 5, 6)
    ours = losskit.kl_div(x, p.log(), log_target=True, reduction="none")
    theirs = TF.kl_div(TF.log_softmax(x, 1), p.log(), reduction="none", log_target=True).sum(1)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours, losskit.kl_div(x, p, reduction="none"))


def test_kl_dense_layout(gen):
    x, p = _logits(gen, 2, 3, 4, 5), _probs(gen, 2, 3, 4, 5)
    none = losskit.kl_div(x, p, reduction="none")
    assert none.shape == (2, 4, 5)
    elementwise = TF.kl_div(TF.log_softmax(x, 1), p, reduction="none")
    torch.testing.assert_close(none, elementwise.sum(1))
    torch.testing.assert_close(none.flatten(), torch.from_numpy(_ref_kl(_rows(x), _rows(p))))
    torch.testing.assert_close(losskit.kl_div(x, p), elementwise.sum() / (2 * 4 * 5))
    # PyTorch's batchmean divides by N only: normalizer=N
    torch.testing.assert_close(losskit.kl_div(x, p, normalizer=2),
                               TF.kl_div(TF.log_softmax(x, 1), p, reduction="batchmean"))


def test_kl_unbatched_equals_one_row(gen):
    x, p = _logits(gen, 6), _probs(gen, 6, dim=0)
    none = losskit.kl_div(x, p, reduction="none")
    assert none.shape == ()
    torch.testing.assert_close(none, losskit.kl_div(x[None], p[None], reduction="none")[0])
    torch.testing.assert_close(losskit.kl_div(x, p), none)


def test_kl_hand_worked_two_classes():
    # Q = softmax([0, ln 3]) = [1/4, 3/4], P = [1/2, 1/2]:
    # KL(P || Q) = 0.5 ln(0.5 / 0.25) + 0.5 ln(0.5 / 0.75) = 0.5 ln 2 + 0.5 ln(2/3)
    #            = 0.5 ln(4/3) = 0.143841...
    x = torch.tensor([[0.0, math.log(3.0)]], dtype=F64)
    p = torch.tensor([[0.5, 0.5]], dtype=F64)
    torch.testing.assert_close(losskit.kl_div(x, p), torch.tensor(0.5 * math.log(4 / 3), dtype=F64))


def test_kl_accepts_log_space_input(gen):
    x, p = _logits(gen, 5, 6, scale=3.0), _probs(gen, 5, 6)
    expected = losskit.kl_div(x, p, reduction="none")
    torch.testing.assert_close(losskit.kl_div(TF.log_softmax(x, 1), p, reduction="none"), expected)
    torch.testing.assert_close(losskit.kl_div(torch.softmax(x, 1).log(), p, reduction="none"), expected)
    # and a shift of the logits changes nothing
    torch.testing.assert_close(losskit.kl_div(x + 17.0, p, reduction="none"), expected)


def test_kl_is_zero_at_target_and_positive_elsewhere(gen):
    x = _logits(gen, 8, 5, scale=4.0)
    zero = losskit.kl_div(x, torch.softmax(x, 1), reduction="none")
    torch.testing.assert_close(zero, torch.zeros(8, dtype=F64), rtol=0, atol=1e-14)
    assert (losskit.kl_div(x, _probs(gen, 8, 5), reduction="none") > 1e-6).all()


def test_kl_zero_target_probabilities_follow_0_log_0(gen):
    x = _logits(gen, 4, 5)
    rows = [[1.0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0], [0.2, 0.2, 0.2, 0.2, 0.2], [0, 0, 0, 0.25, 0.75]]
    p = torch.tensor(rows, dtype=F64)
    ours = losskit.kl_div(x, p, reduction="none")
    torch.testing.assert_close(ours, torch.from_numpy(_ref_kl(x.numpy(), p.numpy())))
    # a one-hot target: the KL is the cross-entropy of its class
    torch.testing.assert_close(ours[0], TF.cross_entropy(x[:1], torch.tensor([0])))


def test_kl_weighted_mean(gen):
    x, p = _logits(gen, 6, 4), _probs(gen, 6, 4)
    w = torch.rand(6, generator=gen, dtype=F64) + 0.1
    per_sample = torch.from_numpy(_ref_kl(x.numpy(), p.numpy()))
    torch.testing.assert_close(losskit.kl_div(x, p, weight=w), (w * per_sample).sum() / w.sum())
    torch.testing.assert_close(losskit.kl_div(x, p, weight=w, reduction="none"), w * per_sample)


def test_kl_empty_input_is_zero_with_gradient():
    x = torch.zeros(0, 5, dtype=F64, requires_grad=True)
    loss = losskit.kl_div(x, torch.zeros(0, 5, dtype=F64))
    assert loss.item() == 0.0
    loss.backward()
    assert x.grad is not None and x.grad.shape == (0, 5)


# --- js_div ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 4)])
def test_js_matches_independent_reference(gen, beta, shape):
    x, p = _logits(gen, *shape, scale=2.0), _probs(gen, *shape)
    ours = losskit.js_div(x, p, beta=beta, reduction="none")
    expected = torch.from_numpy(_ref_js(_rows(x), _rows(p), beta))
    torch.testing.assert_close(ours.flatten(), expected, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(losskit.js_div(x, p.log(), beta=beta, log_target=True, reduction="none"), ours)
    torch.testing.assert_close(losskit.js_div(x, p, beta=beta), expected.mean())


def test_js_hand_worked_two_classes():
    # P = [1/2, 1/2], Q = [1/4, 3/4], M = [3/8, 5/8]:
    # KL(P || M) = 0.5 ln(4/3) + 0.5 ln(4/5) = 2 ln 2 - 0.5 ln 3 - 0.5 ln 5
    # KL(Q || M) = 0.25 ln(2/3) + 0.75 ln(6/5) = ln 2 + 0.5 ln 3 - 0.75 ln 5
    # JS = (3 ln 2 - 1.25 ln 5) / 2 = 0.0338220...
    x = torch.tensor([[0.0, math.log(3.0)]], dtype=F64)
    p = torch.tensor([[0.5, 0.5]], dtype=F64)
    expected = 1.5 * math.log(2) - 0.625 * math.log(5)
    torch.testing.assert_close(losskit.js_div(x, p), torch.tensor(expected, dtype=F64))


def test_js_is_symmetric_at_half(gen):
    a, b = _logits(gen, 7, 6, scale=2.0), _logits(gen, 7, 6, scale=2.0)
    ab = losskit.js_div(a, torch.softmax(b, 1), reduction="none")
    ba = losskit.js_div(b, torch.softmax(a, 1), reduction="none")
    torch.testing.assert_close(ab, ba, rtol=1e-12, atol=1e-15)
    # beta and 1 - beta swap the roles of P and Q
    ab = losskit.js_div(a, torch.softmax(b, 1), beta=0.2, reduction="none")
    ba = losskit.js_div(b, torch.softmax(a, 1), beta=0.8, reduction="none")
    torch.testing.assert_close(ab, ba, rtol=1e-12, atol=1e-15)


def test_js_reaches_log_2_for_disjoint_distributions():
    # P = [1, 0], Q = softmax([-inf, 0]) = [0, 1], M = [1/2, 1/2]: JS = 0.5 ln 2 + 0.5 ln 2 = ln 2.
    x = torch.tensor([[-math.inf, 0.0]], dtype=F64, requires_grad=True)
    loss = losskit.js_div(x, torch.tensor([[1.0, 0.0]], dtype=F64))
    torch.testing.assert_close(loss, torch.tensor(math.log(2), dtype=F64))
    loss.backward()
    assert torch.isfinite(x.grad).all()


@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(0.1, 30.0),
    beta=st.floats(0.01, 0.99),
)
def test_js_bounds_and_kl_nonnegative(seed, scale, beta):
    gen = torch.Generator().manual_seed(seed)
    x = _logits(gen, 5, 4, scale=scale)
    p = torch.softmax(_logits(gen, 5, 4, scale=scale), 1)
    js = losskit.js_div(x, p, reduction="none")
    assert (js >= -1e-12).all() and (js <= math.log(2) + 1e-12).all()
    # JS_beta <= H(beta), the entropy of the mixture weights (attained by disjoint supports)
    bound = -beta * math.log(beta) - (1 - beta) * math.log(1 - beta)
    js_beta = losskit.js_div(x, p, beta=beta, reduction="none")
    assert (js_beta >= -1e-12).all() and (js_beta <= bound + 1e-12).all()
    assert (losskit.kl_div(x, p, reduction="none") >= -1e-12).all()


def test_js_over_beta_tends_to_forward_kl(gen):
    x, p = _logits(gen, 5, 6), _probs(gen, 5, 6)
    beta = 1e-6
    js = losskit.js_div(x, p, beta=beta, reduction="none")
    kl = losskit.kl_div(x, p, reduction="none")
    torch.testing.assert_close(js / beta, kl, rtol=1e-4, atol=0)
    # and at the other end, the reverse KL(Q || P) = kl_div(log P, Q)
    js = losskit.js_div(x, p, beta=1 - beta, reduction="none")
    reverse = losskit.kl_div(p.log(), torch.softmax(x, 1), reduction="none")
    torch.testing.assert_close(js / beta, reverse, rtol=1e-4, atol=0)


def test_js_is_zero_at_target(gen):
    x = _logits(gen, 4, 5, scale=3.0)
    for beta in (0.1, 0.5, 0.9):
        zero = losskit.js_div(x, torch.softmax(x, 1), beta=beta, reduction="none")
        torch.testing.assert_close(zero, torch.zeros(4, dtype=F64), rtol=0, atol=1e-14)


# --- numerics: masked classes, extreme logits, dtypes -------------------------------------------------


@pytest.mark.parametrize("fn", [losskit.kl_div, losskit.js_div])
@pytest.mark.parametrize("log_target", [False, True])
def test_masked_class_with_zero_target_is_finite(fn, log_target, gen):
    """A -inf logit where the target is 0 contributes exactly nothing: same value as dropping the class."""
    x = _logits(gen, 3, 5)
    x[:, 2] = -math.inf
    p = torch.softmax(_logits(gen, 3, 5), 1)
    p[:, 2] = 0.0
    p = p / p.sum(1, keepdim=True)
    keep = [0, 1, 3, 4]
    target = p.log() if log_target else p
    x.requires_grad_()
    loss = fn(x, target, log_target=log_target, reduction="none")
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[:, 2] == 0).all()
    dropped = target[:, keep]
    expected = fn(x.detach()[:, keep], dropped, log_target=log_target, reduction="none")
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_target_mass_on_a_masked_class_is_an_infinite_loss_not_a_dtype_dependent_number(dtype):
    # KL(P || Q) with P = (1/2, 1/2) and Q = (0, 1) is +inf. The floor on log Q made it 1.8e308 in
    # float64 and 1.7e38 in float32, a finite number that depends on the dtype.
    logits = torch.tensor([[-math.inf, 0.0]], dtype=dtype)
    target = torch.tensor([[0.5, 0.5]], dtype=dtype)
    soft = {"kl_div": losskit.kl_div, "cross_entropy": losskit.cross_entropy,
            "softmax_focal": losskit.softmax_focal_loss}
    for name, fn in soft.items():
        with pytest.raises(ValueError, match=r"input contains non-finite values \(1 -inf\)"):
            fn(logits, target)
        with losskit.set_checks(False):
            assert fn(logits, target).item() == math.inf, name
    # An index target on the masked class, likewise (cross_entropy raised already).
    with pytest.raises(ValueError, match=r"input contains non-finite values \(1 -inf\)"):
        losskit.softmax_focal_loss(logits, torch.tensor([0]))
    # JS is bounded: M = (1/4, 3/4), KL(P || M) = ln 2 / 2 + ln(2/3) / 2, KL(Q || M) = ln(4/3), and
    # JS = (KL(P || M) + KL(Q || M)) / 2 = 0.215762.
    expected = 0.25 * math.log(2) + 0.25 * math.log(2 / 3) + 0.5 * math.log(4 / 3)
    torch.testing.assert_close(losskit.js_div(logits, target), torch.tensor(expected, dtype=dtype))


def test_target_gradient_is_finite_with_zero_probabilities(gen):
    x = _logits(gen, 3, 4)
    rows = [[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0.25, 0.25, 0.25, 0.25]]
    p = torch.tensor(rows, dtype=F64, requires_grad=True)
    for fn in (losskit.kl_div, losskit.js_div):
        p.grad = None
        fn(x, p).backward()
        assert torch.isfinite(p.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("fn", [losskit.kl_div, losskit.js_div])
def test_extreme_logits_are_finite(fn, dtype):
    x64 = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, -1e4], [0.0, 0.0, -1e4]], dtype=F64)
    p64 = torch.tensor([[0.0, 1.0, 0.0], [0.2, 0.3, 0.5], [0.5, 0.5, 0.0]], dtype=F64)
    x = x64.to(dtype).requires_grad_()
    loss = fn(x, p64.to(dtype))
    assert loss.dtype == dtype
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    expected = fn(x64.to(dtype).to(F64), p64.to(dtype).to(F64))
    torch.testing.assert_close(loss.to(F64), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn", [losskit.kl_div, losskit.js_div])
def test_half_inputs_compute_in_float32(fn, dtype, gen):
    x, p = _logits(gen, 16, 10, scale=3.0).to(dtype), _probs(gen, 16, 10).to(dtype)
    loss = fn(x, p, reduction="none")
    assert loss.dtype == dtype
    expected = fn(x.float(), p.float(), reduction="none").to(dtype)
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)


@pytest.mark.parametrize("fn", [losskit.kl_div, losskit.js_div])
@pytest.mark.parametrize("log_target", [False, True])
def test_gradcheck(fn, log_target, gen):
    x = _logits(gen, 3, 4).requires_grad_()
    p = _probs(gen, 3, 4)
    t = (p.log() if log_target else p).requires_grad_()
    w = torch.rand(3, generator=gen, dtype=F64) + 0.5

    def f(a, b):
        return fn(a, b, log_target=log_target, weight=w)

    assert torch.autograd.gradcheck(f, (x, t))
    assert torch.autograd.gradgradcheck(f, (x, t))


# --- module forms ---------------------------------------------------------------------------------


def test_module_forms(gen):
    x, p = _logits(gen, 4, 5), _probs(gen, 4, 5)
    torch.testing.assert_close(lnn.KLDivLoss()(x, p), losskit.kl_div(x, p))
    jsd = losskit.get("jsd", beta=0.25)
    torch.testing.assert_close(jsd(x, p), losskit.js_div(x, p, beta=0.25))
    torch.testing.assert_close(losskit.get(jsd.get_config())(x, p), jsd(x, p))


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [losskit.kl_div, losskit.js_div])
def test_errors_name_the_argument(fn, gen):
    x, p = _logits(gen, 3, 4), _probs(gen, 3, 4)
    with pytest.raises(ValueError, match=r"target .*\(3, 4\).*got shape \(3, 5\)"):
        fn(x, _probs(gen, 3, 5))
    with pytest.raises(ValueError, match="target"):
        fn(x, p[0])  # no broadcasting of the target
    with pytest.raises(TypeError, match="target"):
        fn(x, torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="input"):
        fn(torch.zeros(3, 4, dtype=torch.long), p)
    with pytest.raises(ValueError, match="input"):
        fn(torch.tensor(1.0, dtype=F64), torch.tensor(1.0, dtype=F64))
    with pytest.raises(ValueError, match="reduction"):
        fn(x, p, reduction="batchmean")
    with pytest.raises(ValueError, match="normalizer"):
        fn(x, p, reduction="sum", normalizer=3)
    negative = p.clone()
    negative[0, 0] = -0.1
    with pytest.raises(ValueError, match="target"):
        fn(x, negative)
    with pytest.raises(ValueError, match="target"):
        fn(x, p * 2)  # probabilities above 1
    with pytest.raises(ValueError, match="target"):
        fn(x, p.log() + 0.5, log_target=True)  # log-probabilities above 0
    with pytest.raises(ValueError, match="target"):
        fn(x, torch.full_like(p, math.nan), log_target=True)
    for bad in (math.inf, math.nan):
        with pytest.raises(ValueError, match="input"):
            fn(x.clone().fill_(bad), p)
    with pytest.raises(ValueError, match="weight"):
        fn(x, p, weight=torch.ones(4, dtype=F64))
    with pytest.raises(TypeError, match="weight"):
        fn(x, p, weight=2.0)
    with pytest.raises(TypeError, match="log_target"):
        fn(x, p, log_target=1)
    with pytest.raises(TypeError):
        fn(x, p, "mean")  # options are keyword-only


@pytest.mark.parametrize("beta", [0, 1, 0.0, 1.0, -0.5, 1.5, math.nan])
def test_js_beta_out_of_range(beta, gen):
    with pytest.raises(ValueError, match="beta"):
        losskit.js_div(_logits(gen, 2, 3), _probs(gen, 2, 3), beta=beta)


def test_js_beta_must_be_a_number(gen):
    with pytest.raises(TypeError, match="beta"):
        losskit.js_div(_logits(gen, 2, 3), _probs(gen, 2, 3), beta="0.5")


def test_value_checks_can_be_switched_off(gen):
    x, p = _logits(gen, 2, 3), _probs(gen, 2, 3)
    bad = p.clone()
    bad[0, 0] = -0.1
    with losskit.set_checks(False):
        losskit.kl_div(x, bad)  # no error: the check is skipped, the value is the formula's
    with pytest.raises(ValueError, match="target"):
        losskit.kl_div(x, bad)

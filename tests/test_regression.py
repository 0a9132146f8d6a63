"""Regression losses against independent implementations.

* PyTorch's own losses where they exist (mse, l1, huber, smooth_l1, gaussian_nll, poisson_nll),
  with our weighted-mean semantics checked against the explicit formula.
* Float64 loop references written from the papers (``tests/reference_regression.py``).
* kornia's Charbonnier, live (``peer``).
* Hand-worked values (working in the comments), properties, and the errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given
from hypothesis import strategies as st

import losskit
import losskit.functional as LF
from losskit.functional.regression import robust_log_partition
from tests import reference_regression as ref

REDUCTIONS = ("none", "mean", "sum")
F64 = torch.float64
INF = math.inf
# K_1(1), the modified Bessel function of the second kind (scipy.special.k1(1.0); DLMF 10.25).
BESSEL_K1_AT_1 = 0.6019072301972346


def _pair(gen: torch.Generator, shape=(4, 5), spread: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.randn(shape, generator=gen, dtype=F64) * spread,
            torch.randn(shape, generator=gen, dtype=F64))


def _close(actual, expected, rtol=1e-10, atol=1e-12):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=F64), torch.as_tensor(expected, dtype=F64),
                               rtol=rtol, atol=atol)


# --- PyTorch parity ---------------------------------------------------------------------------

TORCH_PAIRS = {
    "mse": (LF.mse_loss, TF.mse_loss, {}),
    "l1": (LF.l1_loss, TF.l1_loss, {}),
    "huber-0.5": (LF.huber_loss, TF.huber_loss, {"delta": 0.5}),
    "huber-1": (LF.huber_loss, TF.huber_loss, {}),
    "huber-2.5": (LF.huber_loss, TF.huber_loss, {"delta": 2.5}),
    "smooth_l1-1": (LF.smooth_l1_loss, TF.smooth_l1_loss, {}),
    "smooth_l1-0.3": (LF.smooth_l1_loss, TF.smooth_l1_loss, {"beta": 0.3}),
    "smooth_l1-0": (LF.smooth_l1_loss, TF.smooth_l1_loss, {"beta": 0.0}),
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("key", TORCH_PAIRS)
def test_matches_torch(key, reduction, gen):
    ours, theirs, kwargs = TORCH_PAIRS[key]
    x, y = _pair(gen)
    _close(ours(x, y, **kwargs, reduction=reduction), theirs(x, y, **kwargs, reduction=reduction))


@pytest.mark.parametrize("key", TORCH_PAIRS)
def test_weighted_reductions_are_the_explicit_formula(key, gen):
    ours, theirs, kwargs = TORCH_PAIRS[key]
    x, y = _pair(gen)
    w = torch.rand(5, generator=gen, dtype=F64) * 3  # broadcast over rows
    elementwise = theirs(x, y, **kwargs, reduction="none")
    total = (w * elementwise).sum()
    _close(ours(x, y, **kwargs, weight=w, reduction="none"), w * elementwise)
    _close(ours(x, y, **kwargs, weight=w, reduction="sum"), total)
    # sum(w * l) / sum(w) over the broadcast weights: 4 rows of w.
    _close(ours(x, y, **kwargs, weight=w), total / (4 * w.sum()))
    _close(ours(x, y, **kwargs, weight=w, normalizer=7.0), total / 7.0)


def test_weighted_huber_is_not_torchs_element_mean(gen):
    # torch's huber_loss(weight=) divides by the element count; ours by sum(w) (DESIGN.md, reduction).
    x, y = _pair(gen)
    w = torch.zeros_like(x)
    w[0, 0] = 1.0
    expected = TF.huber_loss(x[0, 0], y[0, 0])  # only one element counts
    _close(LF.huber_loss(x, y, weight=w), expected)
    assert not torch.allclose(TF.huber_loss(x, y, weight=w), expected)


def _gaussian_vars(gen):
    # (input shape, var): same shape, one fewer dim (PyTorch's homoscedastic rule), last dim 1, float.
    shape = (4, 3)
    return {
        "same": torch.rand(shape, generator=gen, dtype=F64) + 0.1,
        "fewer-dim": torch.rand(4, generator=gen, dtype=F64) + 0.1,
        "last-dim-1": torch.rand(4, 1, generator=gen, dtype=F64) + 0.1,
        "below-eps": torch.tensor([1e-9, 0.0, 0.5], dtype=F64).expand(4, 3).contiguous(),
        "float": 0.7,
    }


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("var_kind", ["same", "fewer-dim", "last-dim-1", "below-eps", "float"])
def test_gaussian_nll_matches_torch(var_kind, full, reduction, gen):
    x, y = _pair(gen, (4, 3))
    var = _gaussian_vars(gen)[var_kind]
    x.requires_grad_()
    if isinstance(var, torch.Tensor):
        var.requires_grad_()
    ours = LF.gaussian_nll_loss(x, y, var=var, full=full, reduction=reduction)
    theirs = TF.gaussian_nll_loss(x, y, var, full=full, reduction=reduction)
    _close(ours, theirs)
    inputs = [x, var] if isinstance(var, torch.Tensor) else [x]
    # Same gradients too, including PyTorch's pass-through clamp of var below eps.
    grads = zip(torch.autograd.grad(ours.sum(), inputs), torch.autograd.grad(theirs.sum(), inputs), strict=True)
    for g_ours, g_theirs in grads:
        _close(g_ours, g_theirs)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("log_input", [True, False])
def test_poisson_nll_matches_torch(log_input, full, reduction, gen):
    counts = torch.tensor([0.0, 1.0, 2.0, 3.0, 7.0, 20.0], dtype=F64).repeat(3, 1)
    raw = torch.randn(counts.shape, generator=gen, dtype=F64)
    x = raw if log_input else raw.exp()
    ours = LF.poisson_nll_loss(x, counts, log_input=log_input, full=full, reduction=reduction)
    _close(ours, TF.poisson_nll_loss(x, counts, log_input=log_input, full=full, reduction=reduction))


# --- float64 references from the papers --------------------------------------------------------

REFERENCES = {
    "log_cosh": (LF.log_cosh_loss, {}, ref.log_cosh),
    "quantile-0.2": (LF.quantile_loss, {"quantiles": 0.2}, lambda x, y: ref.quantile(x, y, 0.2)),
    "quantile-0.9": (LF.quantile_loss, {"quantiles": 0.9}, lambda x, y: ref.quantile(x, y, 0.9)),
    "charbonnier-1e-3": (LF.charbonnier_loss, {}, lambda x, y: ref.charbonnier(x, y, 1e-3)),
    "charbonnier-0.5": (LF.charbonnier_loss, {"eps": 0.5}, lambda x, y: ref.charbonnier(x, y, 0.5)),
    "wing-default": (LF.wing_loss, {}, lambda x, y: ref.wing(x, y, 5.0, 0.5)),
    "wing-1-2": (LF.wing_loss, {"width": 1.0, "curvature": 2.0}, lambda x, y: ref.wing(x, y, 1.0, 2.0)),
    "balanced_l1-default": (LF.balanced_l1_loss, {}, lambda x, y: ref.balanced_l1(x, y, 0.5, 1.5, 1.0)),
    "balanced_l1-other": (LF.balanced_l1_loss, {"alpha": 0.3, "gamma": 1.0, "beta": 2.0},
                          lambda x, y: ref.balanced_l1(x, y, 0.3, 1.0, 2.0)),
}
ROBUST_ALPHAS = [-INF, -8.0, -2.0, -0.5, 0.0, 1e-3, 0.5, 1.0, 1.5, 1.999, 2.0, 2.5, 4.0]


@pytest.mark.parametrize("key", REFERENCES)
def test_matches_paper_reference(key, gen):
    fn, kwargs, reference = REFERENCES[key]
    # Residuals from -12 to 12: both sides of every threshold (delta, beta, width), and wing's log part.
    x, y = _pair(gen, (6, 7), spread=6.0)
    _close(fn(x, y, **kwargs, reduction="none"), reference(x, y))


def test_log_cosh_large_residuals_do_not_overflow():
    x = torch.tensor([-1e4, 88.0, 100.0, 1e4])
    out = LF.log_cosh_loss(x, torch.zeros(4), reduction="none")  # float32: cosh(89) overflows
    _close(out, ref.log_cosh(x, torch.zeros(4)), rtol=1e-6)


def test_log_cosh_small_residuals_keep_relative_precision():
    # log cosh e = e^2/2 - e^4/12 + ...: at e = 1e-4 that is 5e-9 (1 - 3e-9). logaddexp(e, -e) - log 2
    # would be off by about 1e-8 in float32, more than the value.
    e = torch.tensor([1e-4, 3e-3, 0.5])
    _close(LF.log_cosh_loss(e, torch.zeros(3), reduction="none"), ref.log_cosh(e, torch.zeros(3)), rtol=1e-6)


@pytest.mark.parametrize("quantiles", [[0.1, 0.5, 0.9], (0.25,), torch.tensor([0.05, 0.3, 0.7, 0.95])])
def test_multi_quantile_matches_reference(quantiles, gen):
    q = len(quantiles)
    x = torch.randn(3, 4, q, generator=gen, dtype=F64)
    y = torch.randn(3, 4, generator=gen, dtype=F64)
    out = LF.quantile_loss(x, y, quantiles=quantiles, reduction="none")
    assert out.shape == (3, 4, q)
    _close(out, ref.quantile(x, y, [float(v) for v in quantiles]))
    # Each slice is the single-quantile loss against the same target.
    for k in range(q):
        _close(out[..., k], LF.quantile_loss(x[..., k], y, quantiles=float(quantiles[k]), reduction="none"))


def test_median_quantile_is_half_l1(gen):
    x, y = _pair(gen)
    _close(LF.quantile_loss(x, y, quantiles=0.5), 0.5 * LF.l1_loss(x, y))


@pytest.mark.parametrize("alpha", ROBUST_ALPHAS)
@pytest.mark.parametrize("scale", [0.3, 1.0, 2.0])
def test_general_robust_matches_paper_reference(alpha, scale, gen):
    x, y = _pair(gen, (3, 4), spread=1.5)
    _close(LF.general_robust_loss(x, y, alpha=alpha, scale=scale, reduction="none"),
           ref.general_robust(x, y, alpha, scale), rtol=1e-9)


# --- kornia, live ------------------------------------------------------------------------------


@pytest.mark.peer
def test_charbonnier_matches_kornia_with_eps_1(gen):
    kornia_losses = pytest.importorskip("kornia.losses")
    x, y = _pair(gen, (2, 3, 4, 4))
    x32, y32 = x.float(), y.float()
    expected = kornia_losses.charbonnier_loss(x32, y32, reduction="none")
    torch.testing.assert_close(LF.charbonnier_loss(x32, y32, eps=1.0, reduction="none"), expected)
    torch.testing.assert_close(LF.charbonnier_loss(x32, y32, eps=1.0, reduction="sum"),
                               kornia_losses.charbonnier_loss(x32, y32, reduction="sum"))


# --- hand-worked values ------------------------------------------------------------------------


def test_hand_worked_values():
    e = torch.tensor([0.5, 3.0], dtype=F64)
    z = torch.zeros(2, dtype=F64)
    # huber(1): 0.5 * 0.25 = 0.125; 1 * (3 - 0.5) = 2.5
    _close(LF.huber_loss(e, z, reduction="none"), [0.125, 2.5])
    # smooth_l1(beta=2): 0.5 * 0.25 / 2 = 0.0625; 3 - 1 = 2
    _close(LF.smooth_l1_loss(e, z, beta=2.0, reduction="none"), [0.0625, 2.0])
    # log cosh 0.5 = log((e^0.5 + e^-0.5) / 2) = log(1.1276259652) = 0.1201145069
    _close(LF.log_cosh_loss(e[:1], z[:1]), 0.1201145069, rtol=1e-9)
    # quantile 0.9, e = target - input = -0.5, -3: max(0.9 e, -0.1 e) = 0.05, 0.3
    _close(LF.quantile_loss(e, z, quantiles=0.9, reduction="none"), [0.05, 0.3])
    # charbonnier eps=1: sqrt(1.25) - 1 = 0.1180339887; sqrt(10) - 1 = 2.1622776602
    _close(LF.charbonnier_loss(e, z, eps=1.0, reduction="none"), [0.1180339887, 2.1622776602], rtol=1e-9)
    # wing(w=2, eps=1): 2 ln 1.5 = 0.8109302162; C = 2 - 2 ln 3 = -0.1972245773, 3 - C = 3.1972245773
    _close(LF.wing_loss(e, z, width=2.0, curvature=1.0, reduction="none"), [0.8109302162, 3.1972245773],
           rtol=1e-9)
    # balanced_l1 defaults: b = e^3 - 1 = 19.0855369232
    #   0.5: 0.5/b * (0.5 b + 1) * ln(0.5 b + 1) - 0.25 = 0.02619782 * 10.54276846 * 2.35542 - 0.25 = 0.40056751
    #   3.0: 1.5 * 3 + 1.5 / b - 0.5 = 4.0 + 0.07859354 = 4.07859354
    _close(LF.balanced_l1_loss(e, z, reduction="none"), [0.40056751, 4.07859354], rtol=1e-7)
    # Geman-McClure (alpha = -2) at x = 2: |a-2|/a = -2, ((4/4 + 1)^-1 - 1) = -1/2, so 1; = 2z/(z+4)
    _close(LF.general_robust_loss(torch.tensor(2.0, dtype=F64), torch.tensor(0.0, dtype=F64), alpha=-2.0), 1.0)
    # gaussian nll, var 4, e = 2: 0.5 (ln 4 + 4/4) = 0.5 * 2.3862943611 = 1.1931471806
    _close(LF.gaussian_nll_loss(e[1:] - 1, z[1:], var=4.0), 1.1931471806, rtol=1e-9)
    # poisson, log-rate 0, count 3, full: e^0 - 0 + (3 ln 3 - 3 + 0.5 ln(6 pi)) = 1 + 0.29583687 + 1.46824468
    _close(LF.poisson_nll_loss(z[:1], torch.tensor([3.0], dtype=F64), full=True), 2.76408154, rtol=1e-8)


# --- properties --------------------------------------------------------------------------------

ELEMENTWISE_DEFAULTS = {
    "mse": (LF.mse_loss, {}),
    "l1": (LF.l1_loss, {}),
    "huber": (LF.huber_loss, {"delta": 0.7}),
    "smooth_l1": (LF.smooth_l1_loss, {"beta": 0.7}),
    "log_cosh": (LF.log_cosh_loss, {}),
    "quantile": (LF.quantile_loss, {"quantiles": 0.3}),
    "charbonnier": (LF.charbonnier_loss, {}),
    "wing": (LF.wing_loss, {}),
    "balanced_l1": (LF.balanced_l1_loss, {}),
    "general_robust": (LF.general_robust_loss, {"alpha": -1.0, "scale": 0.5}),
}
finite_floats = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@given(st.lists(finite_floats, min_size=1, max_size=8), st.floats(0.01, 10.0))
def test_huber_is_delta_times_smooth_l1(values, delta):
    x = torch.tensor(values, dtype=F64)
    z = torch.zeros_like(x)
    _close(LF.huber_loss(x, z, delta=delta, reduction="none"),
           delta * LF.smooth_l1_loss(x, z, beta=delta, reduction="none"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ELEMENTWISE_DEFAULTS)
@given(values=st.lists(finite_floats, min_size=1, max_size=8))
def test_nonnegative_and_zero_at_perfect_prediction(name, values):
    fn, kwargs = ELEMENTWISE_DEFAULTS[name]
    x = torch.tensor(values)
    target = torch.flip(x, (0,))
    assert bool((fn(x, target, **kwargs, reduction="none") >= 0).all())
    assert bool((fn(x, x, **kwargs, reduction="none") == 0).all())


@pytest.mark.parametrize("name", ELEMENTWISE_DEFAULTS)
def test_finite_gradients_at_extreme_residuals(name):
    fn, kwargs = ELEMENTWISE_DEFAULTS[name]
    if name == "general_robust":
        kwargs = {"alpha": 1.0}  # alpha < 0 flattens to exactly zero gradient, which is fine but trivial
    x = torch.tensor([-1e4, -1e-6, 0.0, 1e-6, 1e4], requires_grad=True)
    fn(x, torch.zeros(5), **kwargs, reduction="sum").backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[0] < 0 < x.grad[-1]


def test_charbonnier_is_scaled_general_robust_with_alpha_1(gen):
    # rho(x, 1, c) = sqrt((x/c)^2 + 1) - 1, so c * rho(x, 1, c) = sqrt(x^2 + c^2) - c.
    x, y = _pair(gen)
    _close(LF.charbonnier_loss(x, y, eps=0.2, reduction="none"),
           0.2 * LF.general_robust_loss(x, y, alpha=1.0, scale=0.2, reduction="none"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_computes_in_float32(dtype):
    x = torch.tensor([-300.0, 0.5, 200.0], dtype=dtype)
    for fn in (LF.log_cosh_loss, LF.charbonnier_loss, LF.huber_loss):
        out = fn(x, torch.zeros_like(x), reduction="none")
        assert out.dtype == dtype
        _close(out.double(), fn(x.double(), torch.zeros(3, dtype=F64), reduction="none"), rtol=1e-2, atol=0)


# --- Barron's general robust loss ----------------------------------------------------------------


def test_general_robust_special_cases(gen):
    x, y = _pair(gen)
    c = 0.8
    z = ((x - y) / c) ** 2
    cases = {
        2.0: 0.5 * z,
        0.0: torch.log(0.5 * z + 1),
        -INF: 1 - torch.exp(-0.5 * z),
        INF: torch.exp(0.5 * z) - 1,
        1.0: torch.sqrt(z + 1) - 1,
        -2.0: 2 * z / (z + 4),
    }
    for alpha, expected in cases.items():
        _close(LF.general_robust_loss(x, y, alpha=alpha, scale=c, reduction="none"), expected)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("special", [0.0, 2.0])
def test_general_robust_is_continuous_at_zero_and_two(special, dtype, gen):
    # Approaching 0 or 2 from either side, the loss converges to the closed form about linearly in
    # the offset (the slope measured at offset 1e-3), down to rounding: no jump and no blow-up from
    # the division by |alpha| or |alpha - 2|. Near 2 the convergence is b log(1/b) with b = |alpha - 2|
    # (rho = z/2 - (z b / 4) log(z / b) + ...), so the slope grows by up to log(1e12)/log(1e3) = 4.
    x, y = (t.to(dtype) for t in _pair(gen))
    exact = LF.general_robust_loss(x, y, alpha=special, reduction="none")
    floor = (1e-5 if dtype == torch.float32 else 1e-12) * (1 + exact.abs())
    for side in (-1.0, 1.0):
        slope = (LF.general_robust_loss(x, y, alpha=special + side * 1e-3, reduction="none") - exact).abs() / 1e-3
        assert bool((slope < 1e3).all())
        for offset in (1e-12, 1e-9, 1e-7, 1e-5):
            near = LF.general_robust_loss(x, y, alpha=special + side * offset, reduction="none")
            assert bool(((near - exact).abs() <= 6 * slope * offset + floor).all()), (side, offset)


@pytest.mark.parametrize("alpha", [-INF, -3.0, 0.0, 1e-9, 1e-4, 0.5, 1.0, 1.9999, 2.0, 2.0 + 1e-9, 5.0, INF])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_general_robust_gradients_are_finite(alpha, dtype):
    x = torch.tensor([-30.0, -1.0, 0.0, 0.3, 4.0], dtype=dtype, requires_grad=True)
    a = torch.tensor(alpha, dtype=dtype, requires_grad=True)
    c = torch.tensor(1.5, dtype=dtype, requires_grad=True)
    if alpha == INF:
        x = (x / 10).detach().requires_grad_()  # exp(x^2/2) - 1 overflows at 30 by design
    LF.general_robust_loss(x, torch.zeros_like(x), alpha=a, scale=c, reduction="sum").backward()
    for grad in (x.grad, a.grad, c.grad):
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize("alpha", [-4.0, -1.0, 1e-4, 0.3, 1.0, 1.7, 2.0 - 1e-4, 3.0])
def test_general_robust_alpha_and_scale_gradients_match_finite_differences(alpha):
    # Central differences of the loop reference, so the clamped closed form near 0 and 2 is checked too.
    x = torch.tensor([-2.0, 0.4, 1.3, 6.0], dtype=F64)
    a = torch.tensor(alpha, dtype=F64, requires_grad=True)
    c = torch.tensor(0.7, dtype=F64, requires_grad=True)
    LF.general_robust_loss(x, torch.zeros_like(x), alpha=a, scale=c, reduction="sum").backward()
    # Near 2 the alpha-derivative has a log singularity (third derivative ~ z / |alpha - 2|^2): smaller step.
    h = 1e-6 if abs(alpha - 2) > 1e-2 else 1e-8

    def total(alpha_, scale_):
        return sum(ref.barron_rho(v, alpha_, scale_) for v in x.tolist())

    _close(a.grad, (total(alpha + h, 0.7) - total(alpha - h, 0.7)) / (2 * h), rtol=1e-6, atol=1e-8)
    _close(c.grad, (total(alpha, 0.7 + h) - total(alpha, 0.7 - h)) / (2 * h), rtol=1e-6, atol=1e-8)


def test_general_robust_tensor_alpha_and_scale_broadcast(gen):
    x, y = _pair(gen, (4, 3))
    alpha = torch.tensor([-1.0, 0.0, 1.5], dtype=F64)
    scale = torch.tensor([[0.5], [1.0], [2.0], [3.0]], dtype=F64)
    out = LF.general_robust_loss(x, y, alpha=alpha, scale=scale, reduction="none")
    for i in range(4):
        for j in range(3):
            _close(out[i, j], ref.barron_rho(float(x[i, j] - y[i, j]), float(alpha[j]), float(scale[i, 0])))


def test_robust_log_partition_known_values():
    alpha = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    expected = [
        math.log(math.sqrt(2) * math.pi),  # alpha = 0: integral of 1/(1 + x^2/2) = sqrt(2) pi
        math.log(2 * math.e * BESSEL_K1_AT_1),  # alpha = 1: e * integral of exp(-sqrt(1 + x^2)) = 2e K1(1)
        math.log(math.sqrt(2 * math.pi)),  # alpha = 2: Gaussian
    ]
    _close(robust_log_partition(alpha), expected, rtol=1e-10, atol=1e-10)


def test_bessel_constant_is_right():
    # K1(1) = integral_0^inf exp(-cosh t) cosh t dt (DLMF 10.32.9); trapezoid on a decaying analytic integrand.
    t = np.arange(0.0, 10.0, 1e-3)
    integrand = np.exp(-np.cosh(t)) * np.cosh(t)
    value = (integrand.sum() - 0.5 * integrand[0]) * 1e-3
    assert abs(value - BESSEL_K1_AT_1) < 1e-12


def test_robust_log_partition_matches_reference_and_its_gradient():
    alphas = [0.0, 1e-4, 0.05, 0.3, 0.8, 1.2, 1.6, 1.99]
    a = torch.tensor(alphas, dtype=F64, requires_grad=True)
    log_z = robust_log_partition(a)
    _close(log_z, [ref.barron_log_partition(v) for v in alphas], rtol=1e-10, atol=1e-10)
    (grad,) = torch.autograd.grad(log_z.sum(), a)
    h = 1e-5
    for v, g in zip(alphas[1:], grad[1:].tolist(), strict=True):  # one-sided at 0, so skipped there
        fd = (ref.barron_log_partition(v + h) - ref.barron_log_partition(v - h)) / (2 * h)
        assert abs(g - fd) < 1e-6, (v, g, fd)
    assert robust_log_partition(1.0).dtype == torch.get_default_dtype()
    assert robust_log_partition(torch.tensor(1.0, dtype=torch.float32)).dtype == torch.float32


def test_general_robust_nll_adds_log_scale_and_partition(gen):
    x, y = _pair(gen)
    for alpha in (0.0, 0.6, 2.0):
        nll = LF.general_robust_loss(x, y, alpha=alpha, scale=0.4, nll=True, reduction="none")
        expected = ref.general_robust(x, y, alpha, 0.4) + math.log(0.4) + ref.barron_log_partition(alpha)
        _close(nll, expected, rtol=1e-9)


# --- the learnable module ------------------------------------------------------------------------


def test_general_robust_module_without_learning_is_the_function(gen):
    x, y = _pair(gen)
    module = losskit.get("barron", alpha=0.3, scale=2.0)
    assert list(module.parameters()) == []
    _close(module(x, y), LF.general_robust_loss(x, y, alpha=0.3, scale=2.0))
    assert losskit.get(module.get_config()).get_config() == module.get_config()


def test_general_robust_module_learns_alpha_through_the_nll(gen):
    x, y = _pair(gen)
    module = losskit.nn.GeneralRobustLoss(learn_alpha=True, alpha=0.7, scale=1.5).double()
    (name, param), = module.named_parameters()
    assert name == "alpha_latent"
    loss = module(x, y)
    expected = LF.general_robust_loss(x, y, alpha=0.7, scale=1.5, nll=True)
    _close(loss, expected, rtol=1e-6)
    loss.backward()
    assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs() > 0

    before = {k: v.clone() for k, v in module.state_dict().items()}
    module(x, y)  # forward changes no state
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())

    config = module.get_config()
    assert config == {"name": "general_robust", "alpha": 0.7, "scale": 1.5, "learn_alpha": True,
                      "alpha_range": [0.001, 1.999]}
    rebuilt = losskit.get(config).double()
    rebuilt.load_state_dict(module.state_dict())
    _close(rebuilt(x, y), module(x, y))


@pytest.mark.parametrize("heavy_tailed", [False, True])
def test_learned_alpha_follows_the_data(heavy_tailed):
    gen = torch.Generator().manual_seed(1)
    if heavy_tailed:  # standard Cauchy: alpha = 0 is Cauchy-shaped
        residual = torch.tan(math.pi * (torch.rand(4000, generator=gen) - 0.5))
    else:  # standard normal with scale 1: alpha = 2 is the exact model
        residual = torch.randn(4000, generator=gen)
    module = losskit.nn.GeneralRobustLoss(learn_alpha=True, alpha=1.0, alpha_range=(0.01, 1.99))
    optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
    for _ in range(40):
        optimizer.zero_grad()
        module(residual, torch.zeros_like(residual)).backward()
        optimizer.step()
    alpha = 0.01 + 1.98 * torch.sigmoid(module.alpha_latent).item()
    assert 0.01 < alpha < 1.99
    if heavy_tailed:
        assert alpha < 0.4
    else:
        assert alpha > 1.6


def test_learned_alpha_stays_in_range():
    module = losskit.nn.GeneralRobustLoss(learn_alpha=True, alpha=1.0, alpha_range=(0.5, 1.5))
    optimizer = torch.optim.SGD(module.parameters(), lr=1e4)
    residual = torch.tensor([0.1, 50.0, -80.0])
    for _ in range(5):
        optimizer.zero_grad()
        module(residual, torch.zeros(3)).backward()
        optimizer.step()
    alpha = 0.5 + torch.sigmoid(module.alpha_latent).item()
    assert 0.5 <= alpha <= 1.5


def test_learnable_module_rejects_bad_ranges():
    with pytest.raises(ValueError, match="alpha_range"):
        losskit.nn.GeneralRobustLoss(learn_alpha=True, alpha_range=(0.0, 2.5))
    with pytest.raises(ValueError, match="alpha"):
        losskit.nn.GeneralRobustLoss(learn_alpha=True, alpha=1.9995)
    with pytest.raises(TypeError, match="scael"):
        losskit.nn.GeneralRobustLoss(learn_alpha=True, scael=1.0)


# --- errors --------------------------------------------------------------------------------------

ALL_LOSSES = {
    **{name: fn for name, (fn, _) in ELEMENTWISE_DEFAULTS.items()},
    "gaussian_nll": lambda x, y, **kw: LF.gaussian_nll_loss(x, y, var=1.0, **kw),
    "poisson_nll": LF.poisson_nll_loss,
}


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_common_errors_name_the_argument(name):
    fn = ALL_LOSSES[name]
    x = torch.rand(2, 3)
    with pytest.raises(ValueError, match="target"):
        fn(x, torch.rand(3, 2))
    with pytest.raises(TypeError, match="input"):
        fn(torch.ones(2, 3, dtype=torch.long), x)
    with pytest.raises(TypeError, match="target"):
        fn(x, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        fn(x, x, reduction="avg")
    with pytest.raises(ValueError, match="normalizer"):
        fn(x, x, reduction="sum", normalizer=3)
    with pytest.raises(ValueError, match="input"):
        fn(torch.tensor([math.nan, 1.0]), torch.ones(2))
    with losskit.set_checks(False):  # value checks are switchable: the NaN goes through
        assert torch.isnan(fn(torch.tensor([math.nan, 1.0]), torch.ones(2)))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x: LF.huber_loss(x, x, delta=0.0), "delta"),
        (lambda x: LF.huber_loss(x, x, delta=-1.0), "delta"),
        (lambda x: LF.huber_loss(x, x, delta="1"), "delta"),
        (lambda x: LF.smooth_l1_loss(x, x, beta=-0.1), "beta"),
        (lambda x: LF.quantile_loss(x, x, quantiles=0.0), "quantiles"),
        (lambda x: LF.quantile_loss(x, x, quantiles=1.0), "quantiles"),
        (lambda x: LF.quantile_loss(x, x[:, 0], quantiles=[0.5, 1.2, 0.1]), "quantiles"),
        (lambda x: LF.quantile_loss(x, x[:, 0], quantiles=torch.tensor([0.2, -0.1, 0.5])), "quantiles"),
        (lambda x: LF.quantile_loss(x, x[:, 0], quantiles=[]), "quantiles"),
        (lambda x: LF.quantile_loss(x, x[:, 0], quantiles=[0.1, 0.9]), "input"),
        (lambda x: LF.quantile_loss(x, x, quantiles=[0.1, 0.5, 0.9]), "target"),
        (lambda x: LF.charbonnier_loss(x, x, eps=0.0), "eps"),
        (lambda x: LF.wing_loss(x, x, width=0.0), "width"),
        (lambda x: LF.wing_loss(x, x, curvature=-1.0), "curvature"),
        (lambda x: LF.balanced_l1_loss(x, x, alpha=0.0), "alpha"),
        (lambda x: LF.balanced_l1_loss(x, x, gamma=-1.0), "gamma"),
        (lambda x: LF.balanced_l1_loss(x, x, beta=0.0), "beta"),
        (lambda x: LF.general_robust_loss(x, x, scale=0.0), "scale"),
        (lambda x: LF.general_robust_loss(x, x, scale=torch.tensor([1.0, 0.0, 2.0])), "scale"),
        (lambda x: LF.general_robust_loss(x, x, alpha=torch.ones(4, 3)), "alpha"),
        (lambda x: LF.general_robust_loss(x, x, alpha=math.nan), "alpha"),
        (lambda x: LF.general_robust_loss(x, x, alpha=-1.0, nll=True), "alpha"),
        (lambda x: LF.general_robust_loss(x, x, alpha=torch.tensor([0.5, 2.5, 1.0]), nll=True), "alpha"),
        (lambda x: LF.gaussian_nll_loss(x, x, var=torch.tensor([1.0, -0.5, 1.0])), "var"),
        (lambda x: LF.gaussian_nll_loss(x, x, var=-1.0), "var"),
        (lambda x: LF.gaussian_nll_loss(x, x, var=torch.ones(2, 2)), "var"),
        (lambda x: LF.gaussian_nll_loss(x, x, var=torch.ones(2, 3, dtype=torch.long)), "var"),
        (lambda x: LF.gaussian_nll_loss(x, x, var=torch.ones(2, 3), eps=0.0), "eps"),
        (lambda x: LF.poisson_nll_loss(x, -x), "target"),
        (lambda x: LF.poisson_nll_loss(-x, x, log_input=False), "input"),
        (lambda x: LF.poisson_nll_loss(x, x, eps=-1.0), "eps"),
    ],
)
def test_option_errors_name_the_argument(call, match):
    x = torch.rand(2, 3) + 0.1
    with pytest.raises((ValueError, TypeError), match=match):
        call(x)


def test_gaussian_nll_requires_var():
    with pytest.raises(TypeError, match="var"):
        LF.gaussian_nll_loss(torch.zeros(2), torch.zeros(2))


def test_general_robust_nan_alpha_and_infinite_residuals_are_rejected():
    # A NaN alpha was replaced by 1 (Charbonnier) through an isfinite guard, silently; an infinite
    # residual gave the Welsch-like limit (finite) with a NaN gradient.
    x, t = torch.tensor([0.5, 1.0]), torch.zeros(2)
    with pytest.raises(ValueError, match=r"alpha contains non-finite values \(1 NaN\)"):
        losskit.general_robust_loss(x, t, alpha=torch.tensor([float("nan"), 1.0]))
    with losskit.set_checks(False):
        out = losskit.general_robust_loss(x, t, alpha=torch.tensor([float("nan"), 1.0]), reduction="none")
    assert out[0].isnan() and out[1].isfinite()
    for alpha in (-2.0, -math.inf, 1.0):
        with pytest.raises(ValueError, match="input contains NaN or infinite values"):
            losskit.general_robust_loss(torch.tensor([math.inf, 1.0]), t, alpha=alpha)
        with pytest.raises(ValueError, match="target contains NaN or infinite values"):
            losskit.general_robust_loss(x, torch.tensor([0.0, -math.inf]), alpha=alpha)

"""Mathematical properties, checked with Hypothesis (derandomized ``ci`` profile in conftest).

* non-negativity of every loss that is a distance or a negative log-likelihood of a discrete label
* zero at a perfect prediction (regression losses, divergences, cross-entropy at a saturated logit)
* limits and identities: focal with gamma=0 is BCE; softmax focal with gamma=0 is CE;
  CE is invariant to a constant shift of the logits (Huber(delta) = delta * SmoothL1(beta=delta)
  is in ``test_regression.py``)
* finite values and gradients at logits of +/-1e4 in float16, bfloat16 and float32
"""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings

import losskit
from losskit import examples as specs
from losskit._core.registry import entry

SPECS = specs.registry()
# Gaussian and Poisson NLL are densities' negative logs, and the policy-gradient surrogates are
# -(advantage x ratio): all of these can be negative.
NON_NEGATIVE = sorted(set(SPECS) - {"gaussian_nll", "poisson_nll", "reinforce", "ppo_clip", "grpo"})
REGRESSION = sorted(set(losskit.available("regression")) - {"gaussian_nll", "poisson_nll"})

seeds = st.integers(0, 2**31 - 1)
finite = st.floats(-30, 30, allow_nan=False, width=64)


def call(name, case, **options):
    return entry(name).cls.function(case.input, case.target, **{**case.kwargs, **options})


@pytest.mark.parametrize("name", NON_NEGATIVE)
@given(seed=seeds)
def test_non_negative(name, seed):
    case = SPECS[name].make(3, torch.Generator().manual_seed(seed))
    assert (call(name, case, reduction="none") >= -1e-12).all()


@pytest.mark.parametrize("name", REGRESSION)
@given(seed=seeds)
def test_regression_is_zero_at_a_perfect_prediction(name, seed):
    case = SPECS[name].make(3, torch.Generator().manual_seed(seed))
    perfect = specs.Case(case.target.clone() if case.target.shape == case.input.shape else case.input,
                         case.target, case.kwargs)
    if perfect.input is case.input:  # e.g. several quantiles: predict the target for each of them
        perfect = specs.Case(case.target.unsqueeze(-1).expand_as(case.input).clone(), case.target, case.kwargs)
    unit = SPECS[name].unit_shape(perfect)  # the element, or the sample for ssim
    torch.testing.assert_close(call(name, perfect, reduction="none"), torch.zeros(unit, dtype=perfect.input.dtype))


@pytest.mark.parametrize("name", ["kl_div", "js_div"])
@given(seed=seeds)
def test_divergence_of_a_distribution_from_itself_is_zero(name, seed):
    logits = torch.randn(3, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
    out = entry(name).cls.function(logits, torch.softmax(logits, 1), reduction="none")
    torch.testing.assert_close(out, torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)


@given(margin=st.floats(10, 1e4), num_classes=st.integers(2, 8))
def test_cross_entropy_of_a_dominant_target_logit_is_log1p_of_the_rest(margin, num_classes):
    # -log q_y = log(1 + (C - 1) e^-margin): tiny, not 0, until e^-margin underflows (margin > 745).
    logits = torch.zeros(1, num_classes, dtype=torch.float64)
    logits[0, 1] = margin
    expected = math.log1p((num_classes - 1) * math.exp(-margin))
    assert losskit.cross_entropy(logits, torch.tensor([1])).item() == pytest.approx(expected, rel=1e-12, abs=0)
    float32 = losskit.cross_entropy(logits.float(), torch.tensor([1])).item()
    # float32 keeps relative precision down to its smallest normal number, absolute below it.
    assert float32 == pytest.approx(expected, rel=1e-6, abs=torch.finfo(torch.float32).tiny)


@given(x=st.lists(finite, min_size=1, max_size=8), shift=st.floats(-1e3, 1e3))
def test_cross_entropy_is_invariant_to_a_constant_logit_shift(x, shift):
    logits = torch.tensor([x], dtype=torch.float64)
    target = torch.tensor([len(x) - 1])
    torch.testing.assert_close(losskit.cross_entropy(logits + shift, target), losskit.cross_entropy(logits, target))


@given(x=st.lists(finite, min_size=1, max_size=8), t=st.lists(st.floats(0, 1), min_size=8, max_size=8))
def test_sigmoid_focal_with_gamma_zero_is_bce(x, t):
    logits = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    target = torch.tensor(t[: len(x)], dtype=torch.float64)
    focal = losskit.sigmoid_focal_loss(logits, target, gamma=0.0, alpha=None, reduction="none")
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    torch.testing.assert_close(focal, bce)
    grad_out = torch.linspace(0.5, 1.5, len(x), dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(focal, logits, grad_out)[0],
                               torch.autograd.grad(bce, logits, grad_out)[0])


@given(seed=seeds, gamma=st.floats(0.1, 5))
def test_sigmoid_focal_is_at_most_bce(seed, gamma):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(16, generator=gen, dtype=torch.float64) * 5
    target = torch.rand(16, generator=gen, dtype=torch.float64)
    focal = losskit.sigmoid_focal_loss(logits, target, gamma=gamma, alpha=None, reduction="none")
    assert (focal <= F.binary_cross_entropy_with_logits(logits, target, reduction="none") + 1e-12).all()


@given(seed=seeds)
def test_softmax_focal_with_gamma_zero_is_cross_entropy(seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(5, 4, generator=gen, dtype=torch.float64) * 3
    target = torch.randint(4, (5,), generator=gen)
    torch.testing.assert_close(losskit.softmax_focal_loss(logits, target, gamma=0.0),
                               losskit.cross_entropy(logits, target))


EXTREME_LOSSES = {
    "cross_entropy": lambda x, t: losskit.cross_entropy(x, t.argmax(1), label_smoothing=0.1, z_loss=1e-4),
    "cross_entropy[soft]": lambda x, t: losskit.cross_entropy(x, t),
    "softmax_focal": lambda x, t: losskit.softmax_focal_loss(x, t.argmax(1), gamma=0.5),
    "poly1_cross_entropy": lambda x, t: losskit.poly1_cross_entropy(x, t.argmax(1)),
    "multi_margin": lambda x, t: losskit.multi_margin_loss(x, t.argmax(1)),
    "logit_adjusted": lambda x, t: losskit.logit_adjusted_cross_entropy(x, t.argmax(1), class_prior=[3, 2, 1, 1]),
    # LDAM expects cosine logits in [-1, 1]; scale 30 at 1e4 would overflow float16's range honestly.
    "ldam": lambda x, t: losskit.ldam_loss(x, t.argmax(1), class_counts=[30, 20, 5, 1], scale=1.0),
    "binary_cross_entropy": lambda x, t: losskit.binary_cross_entropy(x, t, pos_weight=torch.tensor(2.0)),
    "sigmoid_focal": lambda x, t: losskit.sigmoid_focal_loss(x, t, gamma=0.5),
    "asymmetric": lambda x, t: losskit.asymmetric_loss(x, t),
    "kl_div": lambda x, t: losskit.kl_div(x, t),
    "js_div": lambda x, t: losskit.js_div(x, t),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("name", sorted(EXTREME_LOSSES))
@settings(max_examples=12)
@given(signs=st.lists(st.sampled_from([-1.0, 1.0]), min_size=8, max_size=8), hot=st.integers(0, 3))
def test_finite_value_and_gradient_at_extreme_logits(name, dtype, signs, hot):
    logits = (torch.tensor(signs).reshape(2, 4) * 1e4).to(dtype).requires_grad_()
    target = F.one_hot(torch.tensor([hot, (hot + 1) % 4]), 4).to(dtype)
    loss = EXTREME_LOSSES[name](logits, target)
    assert loss.dtype == dtype and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()

"""The accuracy contract: float32 and half precision against float64, in every input regime.

Users train in float32, bfloat16 and float16; float64 agreement proves a formula, not what they
get. For every registered loss and the fused large-vocabulary losses, each regime of the loss's
spec (``losskit/examples/``: typical, saturated, near-converged, large reductions, extreme imbalance,
sub-pixel and huge boxes) is rounded to float32, bfloat16 and float16. The loss and its input
gradient are computed there (half precision computes through float32) and compared with float64
on the same rounded inputs, so only the computation is judged, never the rounding of the inputs.
The error may not exceed the spec's :class:`~losskit.examples.base.Budget`, plus, in every dtype, the
rounding of the exact result once to that dtype.
"""

from __future__ import annotations

import math

import pytest
import torch

import losskit
from losskit import examples as specs
from losskit._core.registry import entry

SPECS = specs.accuracy_specs()

def _cases() -> list:
    cases = []
    for name, spec in sorted(SPECS.items()):
        for regime_name, regime in spec.regimes.items():
            for dtype in regime.dtypes:
                marks = [pytest.mark.slow] if regime_name == "large" else []
                cases.append(pytest.param(name, regime_name, dtype, marks=marks,
                                          id=f"{name}-{regime_name}-{str(dtype).removeprefix('torch.')}"))
    return cases


def _function(name: str, spec: specs.Spec):
    return spec.function if spec.function is not None else entry(name).cls.function


def _evaluate(fn, case: specs.Case, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss and the gradient of its sum with respect to the input."""
    x = case.input.detach().clone().requires_grad_(True)
    out = fn(x, case.target, **{**case.kwargs, "reduction": reduction})
    (grad,) = torch.autograd.grad(out.sum(), x)
    return out.detach(), grad


# The computation runs in float32 (half precision too), which holds relative precision down to
# its smallest normal number, 1.2e-38; below it, values that underflow are allowed that much error.
_FLOAT32_UNDERFLOW = torch.finfo(torch.float32).smallest_normal


def _rounding(reference: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An elementwise bound on the error of rounding ``reference`` once to ``dtype``: half an
    ulp (``eps / 2`` relative) for normal numbers, half the smallest subnormal below them (and
    float32's underflow threshold, see above)."""
    finfo = torch.finfo(dtype)
    floor = max(finfo.smallest_normal * finfo.eps / 2, _FLOAT32_UNDERFLOW)
    return torch.clamp_min(reference.abs() * (finfo.eps / 2), floor)


def value_error(actual: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype) -> float:
    """``max_i (|a_i - r_i| - rounding_i) / |r_i|``: the worst unit's relative error beyond the
    rounding of its exact value to ``dtype``. A value that overflows ``dtype`` must be that
    dtype's infinity; a non-finite result where the exact one is finite is an infinite error."""
    actual, reference = actual.double(), reference.double()
    rounded = reference.to(dtype).double()
    overflow = torch.isinf(rounded)
    if not torch.equal(actual[overflow], rounded[overflow]):
        return math.inf
    actual, reference = actual[~overflow], reference[~overflow]
    excess = (actual - reference).abs() - _rounding(reference, dtype)
    if not torch.isfinite(excess).all():
        return math.inf
    relative = torch.where(excess > 0, excess / reference.abs(), torch.zeros_like(excess))
    return relative.max().item() if relative.numel() else 0.0


def grad_error(actual: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype) -> float:
    """``(||g - g64|| - ||rounding||) / ||g64||``: the gradient's norm-wise relative error beyond
    the rounding of each exact component to ``dtype`` (components that overflow it must be its
    infinity)."""
    actual, reference = actual.double(), reference.double()
    rounded = reference.to(dtype).double()
    overflow = torch.isinf(rounded)
    if not torch.equal(actual[overflow], rounded[overflow]):
        return math.inf
    actual, reference = actual[~overflow], reference[~overflow]
    if not torch.isfinite(actual).all():
        return math.inf
    excess = (actual - reference).norm() - _rounding(reference, dtype).norm()
    if excess <= 0:
        return 0.0
    return (excess / reference.norm()).item()


def measure(name: str, regime_name: str, dtype: torch.dtype, seed: int = 0) -> list[tuple[str, float, float]]:
    """``(reduction, value error, gradient error)`` of one loss in one regime and dtype."""
    spec = SPECS[name]
    fn = _function(name, spec)
    regime = spec.regimes[regime_name]
    case = regime.make(torch.Generator().manual_seed(seed)).cast(dtype)
    same_inputs = case.cast(torch.float64)  # float64 on the rounded inputs: only the computation is judged
    errors = []
    # The computation is judged here, so value checks are off: a result that overflows the dtype
    # must then be its infinity (with checks on it raises; tests/test_bad_input_properties.py).
    with losskit.set_checks(False):
        for reduction in regime.reductions:
            value, grad = _evaluate(fn, case, reduction)
            assert value.dtype == dtype and grad.dtype == dtype
            value64, grad64 = _evaluate(fn, same_inputs, reduction)
            errors.append((reduction, value_error(value, value64, dtype), grad_error(grad, grad64, dtype)))
    return errors


def budget(spec: specs.Spec, regime_name: str, dtype: torch.dtype) -> tuple[float, float]:
    stated = spec.budget_for(regime_name)
    if dtype != torch.float32 and stated.half is not None:
        return stated.half
    return stated.value, stated.grad


@pytest.mark.parametrize(("name", "regime_name", "dtype"), _cases())
def test_float32_and_half_precision_keep_the_budget(name, regime_name, dtype):
    value_budget, grad_budget = budget(SPECS[name], regime_name, dtype)
    for reduction, value_err, grad_err in measure(name, regime_name, dtype):
        where = f"{name} in the {regime_name} regime, {dtype}, reduction={reduction!r}"
        assert value_err <= value_budget, f"{where}: value error {value_err:.2e} over budget {value_budget:.0e}"
        assert grad_err <= grad_budget, f"{where}: gradient error {grad_err:.2e} over budget {grad_budget:.0e}"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_loss_states_every_regime_and_justifies_its_budget(name):
    spec = SPECS[name]
    assert "typical" in spec.regimes, f"{name}: no typical regime"
    assert not spec.regimes.keys() & spec.not_applicable.keys(), f"{name}: a regime both made and excused"
    missing = set(specs.REGIMES) - spec.regimes.keys() - spec.not_applicable.keys()
    assert not missing, f"{name}: no maker and no reason for the regimes {sorted(missing)}"
    unknown = (spec.regimes.keys() | spec.not_applicable.keys()) - set(specs.REGIMES)
    assert not unknown, f"{name}: unknown regimes {sorted(unknown)}"
    assert all(reason.strip() for reason in spec.not_applicable.values())
    default = specs.Budget()
    for regime_name, stated in [("every", spec.budget), *spec.budgets.items()]:
        if stated != default:
            assert stated.why.strip(), f"{name}: the budget for {regime_name} regimes needs its justification"
    assert spec.budgets.keys() <= spec.regimes.keys()


def _claim(name: str, regime_name: str, case: specs.Case) -> None:
    """Each regime is what it says it is, checked on its float64 inputs."""
    spec = SPECS[name]
    logits = spec.regimes[regime_name].logits
    subject = case.input if logits is None else logits(case)
    if regime_name == "saturated":
        assert subject.abs().max() >= 20, f"{name}: saturated logits reach only {subject.abs().max():.3g}"
    elif regime_name == "near_converged":
        value = _function(name, spec)(case.input, case.target, **{**case.kwargs, "reduction": "mean"})
        assert 0 < value < 1e-3, f"{name}: the near-converged loss is {value.item():.3g}"
    elif regime_name == "large":
        assert max(subject.numel(), case.target.numel()) >= 10**6
    elif regime_name == "imbalance":
        assert max(subject.numel(), case.target.numel()) >= 10**5


@pytest.mark.parametrize(("name", "regime_name"), [
    (name, regime_name) for name, spec in sorted(SPECS.items()) for regime_name in spec.regimes
    if regime_name in ("saturated", "near_converged", "large", "imbalance")
])
def test_regimes_are_what_they_claim(name, regime_name):
    _claim(name, regime_name, SPECS[name].regimes[regime_name].make(torch.Generator().manual_seed(0)))
